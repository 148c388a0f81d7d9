// A job's kept checkpoints on its page: each with its step, epoch, training metrics (train and
// validation loss and accuracy) and its in-job evaluation (tunelab eval's headline metric and
// loss on the validation set), the reference that serves it (name@checkpoint-STEP), and
// "Deploy this checkpoint": promote it to a version of the model (lineage: the job and the
// version it was a checkpoint of), then deploy that version on the model's endpoint.
import { api } from "./api.js";
import { h, clear, fmt, toast } from "./dom.js";

const LABEL = { exact_match: "exact match", macro_f1: "macro F1", rouge_l: "ROUGE-L", token_f1: "token F1", mean_reward: "mean reward" };

async function deploy(name, version, step, button, status) {
  button.disabled = true;
  status.textContent = "promoting…";
  try {
    const query = version ? `?version=${version}` : "";
    const v = await api(`/v1/tunedModels/${encodeURIComponent(name)}/checkpoints/${step}:promote${query}`, { method: "POST" });
    const ref = `${v.name}@${v.version}`;
    status.textContent = `promoted to ${ref}; deploying…`;
    const endpoint = await api("/v1/endpoints", { method: "POST", json: { model: ref } });
    status.textContent = `deployed as ${ref} on ${endpoint.id}`;
    toast(`checkpoint ${step} deployed as ${ref} on ${endpoint.id}`);
  } catch (err) {
    status.textContent = "";
    toast(err.message, "bad");
  }
  button.disabled = false;
}

/** Fill ``slot`` with the job's checkpoints (``version``: the model version the job made;
 * ``keep``: its keep_checkpoints). */
export async function renderCheckpoints(slot, jobId, version, keep) {
  const title = h("h2", {}, "Checkpoints");
  let data;
  try {
    data = await api(`/v1/tuningJobs/${encodeURIComponent(jobId)}/checkpoints`);
  } catch (err) {
    clear(slot, title, h("p", { class: "muted" }, err.message));
    return;
  }
  const list = data.checkpoints;
  if (!list.length) {
    clear(slot, title, h("p", { class: "muted" }, "This job kept no checkpoints."));
    return;
  }
  const key = (list.find((c) => c.headline_metric) || {}).headline_metric;
  const label = LABEL[key] || key;
  const evaluated = list.some((c) => c.evaluation);
  const value = (c, k) => (c.evaluation && c.evaluation[k] ? c.evaluation[k].value : null);
  const best = Math.min(...list.map((c) => c.metrics.eval_loss ?? Infinity));
  const header = ["Step", "Epoch", "Train loss", "Train accuracy", "Valid loss", "Valid accuracy",
    ...(evaluated ? [key ? `Eval ${label}` : null, "Eval loss"].filter(Boolean) : []), ""];
  const rows = list.map((c) => {
    const status = h("div", { class: "muted small checkpoint-status" },
      c.promoted_to.length ? `promoted to ${c.promoted_to.join(", ")}` : "");
    const button = h("button", { class: "deploy-checkpoint", dataset: { needs: "admin" } }, "Deploy this checkpoint");
    button.onclick = () => deploy(data.tuned_model_name, version, c.step, button, status);
    const notes = [c.is_final ? h("span", { class: "badge ok" }, "final") : null,
      c.metrics.eval_loss === best && Number.isFinite(best) ? h("span", { class: "badge" }, "best valid loss") : null];
    return h("tr", { dataset: { step: String(c.step) } },
      h("td", {}, fmt(c.step), " ", ...notes.filter(Boolean)),
      h("td", {}, fmt(c.epoch, 3)),
      h("td", {}, fmt(c.metrics.train_loss)),
      h("td", {}, fmt(c.metrics.train_accuracy)),
      h("td", { class: "valid-loss" }, fmt(c.metrics.eval_loss)),
      h("td", {}, fmt(c.metrics.eval_accuracy)),
      ...(evaluated ? [key ? h("td", { class: "eval-headline" }, fmt(value(c, key))) : null, h("td", {}, fmt(value(c, "loss")))].filter(Boolean) : []),
      h("td", {},
        c.model ? h("div", {}, h("code", { class: "checkpoint-model" }, c.model)) : null,
        button, status));
  });
  clear(slot, title,
    h("p", { class: "muted small" }, `Kept: the last ${keep ?? 3} and the best by validation loss (`,
      h("code", {}, "keep_checkpoints"), "), each evaluated on the validation set in the job. Serve one as ", h("code", {}, `${data.tuned_model_name}@checkpoint-STEP`), "; deploying promotes it to a version first."),
    h("table", { class: "grid", id: "checkpoints" },
      h("thead", {}, h("tr", {}, header.map((x) => h("th", {}, x)))),
      h("tbody", {}, rows)));
}
