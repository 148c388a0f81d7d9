// The registry: tuned models with their versions, lineage (dataset -> job -> model), metrics and
// base-vs-tuned evaluation, deploy / undeploy, and export (export.js).
import { api } from "./api.js";
import { h, clear, when, fmt, errorBox, toast } from "./dom.js";
import { kvTable, evaluationTable, pageHeader } from "./widgets.js";
import { exportControl } from "./export.js";

function lineageView(lineage, version) {
  const datasets = Object.keys(lineage.datasets || {});
  const byRelation = {};
  for (const e of lineage.upstream || []) if (e.from.kind === "dataset") byRelation[e.from.id] = e.relation;
  // Continued tuning starts from another version (relation init_adapter); imports come from outside.
  const direct = (lineage.upstream || []).filter((e) => e.to.id === version.id);
  const parents = direct.filter((e) => e.from.kind === "model_version").map((e) => e.from.ref || e.from.id);
  const imported = direct.some((e) => e.relation === "imported");
  return h("div", { class: "lineage", dataset: { testid: "lineage" } },
    parents.length || imported
      ? [h("div", { class: "node", dataset: { testid: "lineage-parent" } }, h("small", {}, imported ? "imported" : "started from"),
          parents.length ? parents.map((p) => h("div", {}, h("code", {}, p))) : h("div", {}, "PEFT adapter")),
        h("span", { class: "arrow" }, "→")]
      : null,
    h("div", { class: "node" }, h("small", {}, "datasets"), datasets.length ? datasets.map((d) => h("div", {}, h("code", {}, d), byRelation[d] ? ` (${byRelation[d]})` : "")) : "—"),
    h("span", { class: "arrow" }, "→"),
    h("div", { class: "node" }, h("small", {}, "tuning job"), version.source_job ? h("a", { href: `#/jobs/${version.source_job}` }, version.source_job) : "—"),
    h("span", { class: "arrow" }, "→"),
    h("div", { class: "node" }, h("small", {}, "model version"), h("code", {}, `${version.name}@${version.version}`)));
}

const LABELS = {
  eval_loss: "DPO loss", eval_reward_accuracy: "Reward accuracy", eval_reward_margin: "Reward margin",
  eval_logp_margin: "Log-prob margin (chosen − rejected)", eval_reference_logp_margin: "Reference log-prob margin",
  pass_rate_base: "Pass rate, base", pass_rate_tuned: "Pass rate, tuned", pass_rate_difference: "Pass rate, tuned − base",
  mean_reward_base: "Mean reward, base", mean_reward_tuned: "Mean reward, tuned", mean_reward_difference: "Mean reward, tuned − base",
};

/** Results a method stores as an object on the version's metrics (DPO: `evaluation`, the last
 * evaluation on its validation pairs), shown as tables rather than "[object Object]". */
function nestedMetrics(metrics) {
  const nested = Object.entries(metrics || {}).filter(([, x]) => x && typeof x === "object" && Object.keys(x).length);
  if (!nested.length) return null;
  return nested.map(([name, values]) => h("div", { class: "nested-metrics", dataset: { testid: `metrics-${name}` } },
    h("h3", {}, name === "evaluation" ? "Evaluation on the held-out data" : name),
    kvTable(Object.entries(values).map(([k, x]) => [LABELS[k] || k, cell(x)]))));
}

/** A nested value: an interval {value, low, high} (RFT's pass rate and mean reward) as
 * "value [low, high]", other objects as JSON. */
function cell(x) {
  if (x === null || typeof x !== "object") return fmt(x);
  if (["value", "low", "high"].every((k) => typeof x[k] === "number")) return `${fmt(x.value, 3)} [${fmt(x.low, 3)}, ${fmt(x.high, 3)}]`;
  return JSON.stringify(x);
}

/** Whether `tunelab serve --engine vllm` can serve the version (checked when it was
 * registered; on a vLLM server, against its --max-lora-rank), and every reason why not. */
function vllmVerdict(verdict) {
  if (!verdict) return h("span", { class: "muted", dataset: { testid: "vllm-verdict" } }, "not checked");
  return verdict.servable
    ? h("span", { dataset: { testid: "vllm-verdict" } }, `servable (--max-lora-rank ≥ ${verdict.min_max_lora_rank})`)
    : h("span", { dataset: { testid: "vllm-verdict" } }, `not servable: ${verdict.reasons.join("; ")}`);
}

export function renderModels(main) {
  const list = h("div", { id: "models-list" });
  clear(main, pageHeader("Models", h("a", { class: "button", href: "#/create", dataset: { needs: "tune" } }, "Create tuned model")), list);
  let stopped = false;

  async function load() {
    try {
      const { tuned_models: models } = await api("/v1/tunedModels");
      if (stopped) return;
      if (!models.length) return clear(list, h("div", { class: "card muted" }, "No tuned models yet. ", h("a", { href: "#/create" }, "Create one.")));
      const cards = [];
      for (const m of models) {
        const detail = await api(`/v1/tunedModels/${encodeURIComponent(m.name)}`);
        const versions = await Promise.all(detail.versions.map(async (v) => ({
          v, lineage: await api(`/v1/tunedModels/${encodeURIComponent(m.name)}/lineage?version=${v.version}`).catch(() => null),
        })));
        cards.push(h("section", { class: "card model", dataset: { model: m.name } },
          h("div", { class: "model-head" }, h("h2", {}, m.name),
            h("span", { class: "muted" }, `${m.method} · base ${m.base_model} · ${m.versions} version${m.versions === 1 ? "" : "s"}`),
            h("a", { class: "button ghost", href: `#/playground?model=${encodeURIComponent(m.name)}` }, "Open in playground")),
          versions.reverse().map(({ v, lineage }) => {
            const ref = `${v.name}@${v.version}`;
            const endpoint = v.deployment;
            return h("div", { class: "version", dataset: { version: ref } },
              h("div", { class: "version-head" },
                h("h3", {}, `Version ${v.version}`),
                (v.aliases || []).map((alias) => h("span", { class: "badge alias", title: `${v.name}@${alias}` }, `@${alias}`)),
                endpoint
                  ? h("span", { class: "badge ok" }, `deployed on ${endpoint.endpoint} · ${endpoint.traffic_percentage}% of its traffic`)
                  : h("span", { class: "badge muted" }, "not deployed"),
                endpoint
                  ? h("button", { class: "undeploy", dataset: { needs: "admin" }, onclick: async () => {
                      try { await api(`/v1/endpoints/${endpoint.endpoint}:undeploy`, { method: "POST", json: { model_version_id: v.id } }); toast(`${ref} undeployed`); } catch (err) { toast(err.message, "bad"); }
                      load();
                    } }, "Undeploy")
                  : h("button", { class: "deploy", dataset: { needs: "admin" }, onclick: async () => {
                      try { const e = await api("/v1/endpoints", { method: "POST", json: { model: ref } }); toast(`${ref} deployed on ${e.id}`); } catch (err) { toast(err.message, "bad"); }
                      load();
                    } }, "Deploy")),
              // Why its job deployed it or registered it only (the job's deploy setting)
              v.deploy_note ? h("p", { class: "deploy-note muted small" }, `Job: ${v.deploy_note}`) : null,
              exportControl(v),
              h("div", { class: "version-body" },
                h("div", {}, kvTable([
                  ["Created", when(v.create_time)],
                  ["Base model", h("span", { class: "path" }, v.base_model)],
                  ["Adapter sha256", h("code", { class: "small" }, v.adapter_sha256)],
                  ["vLLM", vllmVerdict(v.vllm)],
                  // scalars here; a nested result (DPO's evaluation on its validation pairs) below
                  ...Object.entries(v.metrics || {}).filter(([, x]) => x === null || typeof x !== "object").map(([k, x]) => [k, fmt(x)]),
                ])),
                h("div", {}, lineage ? lineageView(lineage, v) : null,
                  // base against tuned (every method with held-out data), then what a method keeps
                  // nested in its metrics (DPO: reward accuracy and margins on its held-out pairs)
                  v.evaluation || !nestedMetrics(v.metrics) ? evaluationTable(v.evaluation) : null,
                  nestedMetrics(v.metrics))));
          })));
      }
      clear(list, cards);
    } catch (err) {
      clear(list, errorBox(err));
    }
  }
  load();
  return () => { stopped = true; };
}
