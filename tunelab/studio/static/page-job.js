// One tuning job: state, progress and ETA, live loss and eval curves, pipeline steps with their
// artifacts, usage and cost, the error on failure, evaluation results, cancel / pause / resume.
import { api } from "./api.js";
import { h, clear, badge, duration, when, fmt, progressBar, errorBox, toast, copyText } from "./dom.js";
import { drawChart } from "./chart.js";
import { kvTable, evaluationTable, usageRows, pageHeader } from "./widgets.js";
import { jobCurl, jobSdk, jobCli } from "./job-code.js";
import { renderCheckpoints } from "./checkpoints.js";

const ACTIVE = ["QUEUED", "PENDING", "RUNNING", "CANCELLING"];
const DATA_LABEL = { train: "Training data", validation: "Validation data", preference: "Preference pairs", prompts: "Prompts", eval: "Evaluation prompts" };

function artifactLine(name, a) {
  return h("div", { class: "artifact" }, h("strong", {}, name), " ", h("code", { class: "path" }, a.uri),
    a.sha256 ? h("div", { class: "muted small" }, `sha256 ${a.sha256}`, a.size_bytes != null ? ` · ${fmt(a.size_bytes)} bytes` : "") : null);
}

function outputsCell(outputs) {
  const parts = [];
  for (const [key, value] of Object.entries(outputs || {})) {
    if (["usage", "evaluation"].includes(key)) continue; // shown in their own sections
    if (value && typeof value === "object" && value.uri) parts.push(artifactLine(key, value));
    else if (key === "reports") {
      for (const [role, r] of Object.entries(value)) parts.push(h("div", {}, h("strong", {}, `${role} data`),
        ` ${fmt(r.usable_examples)} examples · ${fmt(r.total_tokens)} tokens · sha256 ${String(r.sha256).slice(0, 16)}…`));
    } else if (value === null || typeof value !== "object") parts.push(h("div", {}, h("strong", {}, key), ` ${fmt(value)}`));
    else parts.push(h("details", {}, h("summary", {}, key), h("pre", {}, JSON.stringify(value, null, 2))));
  }
  return parts.length ? parts : h("span", { class: "muted" }, "—");
}

/** RLHF's evaluation: base and tuned answers to the evaluation prompts, scored by the reward model. */
function rewardTable(o) {
  const pct = (x) => (x == null ? "—" : `${fmt(100 * x, 3)}%`);
  return h("div", { dataset: { testid: "evaluation" } }, kvTable([
    ["Evaluation prompts", fmt(o.prompts)],
    ["Mean reward (base → tuned)", `${fmt(o.mean_reward_base)} → ${fmt(o.mean_reward_tuned)}`],
    ["Tuned wins · ties", `${pct(o.win_rate)} · ${pct(o.tie_rate)}`],
    ["Mean answer length (base → tuned)", `${fmt(o.mean_length_base, 3)} → ${fmt(o.mean_length_tuned, 3)} tokens`],
  ]), h("p", { class: "muted small" }, "Scored by the reward model this job trained."));
}

/** RFT's evaluation: base and tuned answers to the held-out prompts, scored by the grader, with
 * bootstrap 95% intervals ({value, low, high}). */
function graderTable(o) {
  const pct = (x) => `${fmt(100 * x, 3)}%`;
  const span = (i, f) => (i ? `${f(i.value)} [${f(i.low)}, ${f(i.high)}]` : "—");
  const num = (x) => fmt(x, 3);
  return h("div", { dataset: { testid: "evaluation" } }, kvTable([
    ["Held-out prompts", fmt(o.prompts)],
    [`Pass rate (reward ≥ ${fmt(o.pass_threshold)}), base`, span(o.pass_rate_base, pct)],
    ["Pass rate, tuned", span(o.pass_rate_tuned, pct)],
    ["Pass rate, tuned − base", span(o.pass_rate_difference, pct)],
    ["Mean reward, base", span(o.mean_reward_base, num)],
    ["Mean reward, tuned", span(o.mean_reward_tuned, num)],
  ]), h("p", { class: "muted small" }, "Greedy answers scored by the job's grader; 95% bootstrap intervals in brackets."));
}

function errorSection(error) {
  const details = error.details || {};
  const lines = Array.isArray(details.errors) ? details.errors : [];
  return h("div", { class: "card error-card", id: "job-error" },
    h("h2", {}, "Error"),
    h("p", {}, h("span", { class: "badge bad" }, error.code), " ", error.message),
    lines.length ? h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, h("th", {}, "Line"), h("th", {}, "Field"), h("th", {}, "Problem"))),
      h("tbody", {}, lines.map((e) => h("tr", {}, h("td", {}, fmt(e.line ?? (e.loc || []).join(".") ?? "—")), h("td", {}, e.field ?? "—"), h("td", {}, e.message ?? e.msg ?? JSON.stringify(e)))))) : null,
    Object.keys(details).length ? h("details", {}, h("summary", {}, "Details"), h("pre", {}, JSON.stringify(details, null, 2))) : null);
}

// Charts beyond loss, each drawn only when its metrics exist (never an empty chart):
// [id, title, y label, [[metrics.jsonl key, series name, color], ...]]
const MORE_CHARTS = [
  ["lr-chart", "Learning rate", "learning rate", [["learning_rate", "learning rate", "#7c3aed"]]],
  ["grad-chart", "Gradient norm (before clipping)", "grad norm", [["grad_norm", "grad norm", "#0891b2"]]],
  ["speed-chart", "Throughput", "per second", [["tokens_per_second", "tokens/s", "#059669"], ["pairs_per_second", "pairs/s", "#d97706"]]],
  ["reward-accuracy-chart", "Reward accuracy (DPO, reward model)", "accuracy", [["reward_accuracy", "train", "#2563eb"], ["eval_reward_accuracy", "validation", "#dc2626"], ["in_batch_accuracy", "reward model", "#059669"]]],
  ["margin-chart", "Reward margins (DPO)", "reward", [["reward_margin", "margin", "#2563eb"], ["eval_reward_margin", "validation margin", "#dc2626"], ["chosen_reward", "chosen", "#059669"], ["rejected_reward", "rejected", "#d97706"]]],
  ["rlhf-reward-chart", "Reward (RLHF policy)", "reward", [["reward", "reward", "#2563eb"], ["penalized_reward", "reward − KL penalty", "#d97706"]]],
  ["kl-chart", "KL to the base model (RLHF)", "KL", [["kl", "KL", "#dc2626"]]],
  ["pass-rate-chart", "Pass rate of the sampled answers (RFT)", "share", [["pass_rate", "pass rate", "#059669"]]],
];
// Embedding jobs log retrieval metrics under names like eval_recall@10, eval_ndcg@10.
const RETRIEVAL = /^(eval_)?(recall|ndcg|mrr|map)(@\d+)?/;

export function renderJob(main, jobId) {
  const canvas = h("canvas", { class: "chart", id: "loss-chart", "aria-label": "Training and evaluation loss" });
  const accCanvas = h("canvas", { class: "chart small-chart", id: "accuracy-chart", "aria-label": "Accuracy" });
  const head = h("div", {}), summary = h("div", { class: "card" }), pipeline = h("div", { class: "card" });
  const usage = h("div", { class: "card" }), errorSlot = h("div", {}), evalSlot = h("div", { class: "card" });
  const events = h("div", { class: "card" });
  const checkpointsSlot = h("div", { class: "card", id: "job-checkpoints", hidden: true });
  let checkpointsShown = false;
  // The live log: events and metric rows as they arrive, as `tunelab jobs logs -f` prints them.
  const logPre = h("pre", { class: "live-log", id: "job-log", tabindex: "0", "aria-label": "Job log" });
  const logCard = h("div", { class: "card" }, h("h2", {}, "Log (live)"), logPre);
  let metricRows = 0;
  const logLine = (text) => {
    const atEnd = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
    logPre.append(text + "\n");
    if (atEnd) logPre.scrollTop = logPre.scrollHeight;
  };
  const metricText = (r) => Object.entries(r).map(([k, v]) => `${k}=${typeof v === "number" && !Number.isInteger(v) ? +v.toPrecision(4) : v}`).join("  ");
  const codePanel = h("section", { class: "card code-panel", id: "job-code", hidden: true });
  const accTitle = h("h3", {}, "Accuracy (next token)");
  const moreCharts = h("div", { class: "card", id: "more-charts", hidden: true });
  const moreCanvases = {};
  clear(main, head, errorSlot,
    h("div", { class: "columns" },
      h("div", { class: "col-wide" },
        h("div", { class: "card" }, h("h2", {}, "Loss"), canvas, accTitle, accCanvas),
        moreCharts,
        codePanel, pipeline, checkpointsSlot, evalSlot),
      h("div", { class: "col-narrow" }, summary, usage, logCard, events)));
  let timer = null, stopped = false, lastEvent = 0;
  const log = [];

  /** The job as curl, SDK and CLI code (each where it can express the job). */
  async function toggleCode(job) {
    codePanel.hidden = !codePanel.hidden;
    const button = document.getElementById("job-view-code");
    if (button) button.textContent = codePanel.hidden ? "View code" : "Hide code";
    if (codePanel.hidden) return;
    const filenames = {};
    for (const [role, id] of Object.entries(job.datasets)) {
      try { filenames[role] = (await api(`/v1/datasets/${encodeURIComponent(id)}`)).filename; } catch (_) { /* named by role */ }
    }
    const snippets = [["curl", "REST (curl)", jobCurl(job, location.origin)], ["python", "Python SDK", jobSdk(job, location.origin)], ["cli", "CLI", jobCli(job, filenames)]];
    const tabs = h("div", { class: "tabs" }), bodies = h("div", {});
    const show = (key) => {
      for (const b of tabs.children) b.classList.toggle("active", b.dataset.tab === key);
      for (const b of bodies.children) b.hidden = b.dataset.snippet !== key;
    };
    for (const [key, label, text] of snippets) {
      tabs.append(h("button", { type: "button", class: "tab", dataset: { tab: key }, onclick: () => show(key) }, label));
      bodies.append(h("div", { class: "snippet", dataset: { snippet: key } }, text
        ? [h("button", { type: "button", class: "copy", onclick: async () => toast((await copyText(text)) ? `${label} code copied` : "Copy failed", "info") }, "Copy"), h("pre", { id: `job-snippet-${key}` }, text)]
        : h("p", { class: "muted" }, `The ${label} cannot express a ${job.method} job with these datasets yet: use REST.`)));
    }
    clear(codePanel, h("h2", {}, "Code for this job"), h("p", { class: "muted small" }, "Creates the same job again; set ", h("code", {}, "TUNELAB_API_KEY"), " first."), tabs, bodies);
    show("curl");
  }

  async function act(action) {
    try {
      await api(`/v1/tuningJobs/${jobId}:${action}`, { method: "POST" });
      toast(`${action} requested`);
    } catch (err) {
      toast(err.message, "bad");
    }
    refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    let job;
    try {
      job = await api(`/v1/tuningJobs/${jobId}`);
    } catch (err) {
      clear(head, pageHeader("Tuning job"), errorBox(err));
      return;
    }
    const running = ACTIVE.includes(job.state);
    const pausable = ["QUEUED", "PENDING", "RUNNING"].includes(job.state) && !job.requested_action;
    clear(head,
      pageHeader(job.display_name,
        h("button", { id: "job-pause", disabled: !pausable, onclick: () => act("pause") }, "Pause"),
        h("button", { id: "job-resume", disabled: job.state !== "PAUSED", onclick: () => act("resume") }, "Resume"),
        h("a", { class: "button ghost", id: "job-clone", href: `#/create?from=${encodeURIComponent(job.id)}` }, "Tune again with these settings"),
        h("button", { id: "job-view-code", class: "ghost", onclick: () => toggleCode(job) }, codePanel.hidden ? "View code" : "Hide code"),
        h("button", { id: "job-cancel", class: "danger", disabled: !["QUEUED", "PENDING", "RUNNING", "PAUSED"].includes(job.state) || job.requested_action === "cancel", onclick: () => act("cancel") }, "Cancel")),
      h("div", { class: "status-line" }, badge(job.state), h("span", { id: "job-step" }, job.step || ""),
        h("div", { class: "grow" }, progressBar(job.progress)),
        h("span", { id: "job-eta" }, running && job.eta_seconds != null ? `ETA ${duration(job.eta_seconds)}` : "")));
    document.getElementById("main").dataset.jobState = job.state;
    clear(summary, h("h2", {}, "Job"), kvTable([
      ["ID", h("code", {}, job.id)],
      ["Method", job.method],
      ["Base model", h("span", { class: "path" }, job.base_model)],
      ["Accelerator", h("span", { id: "job-accelerator" }, acceleratorText(job))],
      ...Object.entries(job.datasets).map(([role, id]) => [DATA_LABEL[role] || `${role[0].toUpperCase()}${role.slice(1)} data`, id]),
      ["Created", when(job.create_time)],
      ["Started", when(job.start_time)],
      ["Ended", when(job.end_time)],
      // attempts counts the runs that failed and were retried; a clean run has none to show
      job.attempts ? ["Failed attempts (retried)", fmt(job.attempts)] : null,
      ["Tuned model", job.tuned_model ? h("span", {}, h("a", { href: "#/models" }, job.tuned_model), " · ",
        h("a", { href: `#/playground?model=${encodeURIComponent(job.tuned_model)}`, id: "try-in-playground" }, "try it")) : "—"],
      // the deploy step says why a version was registered only (the job's deploy setting)
      ["Endpoint", job.endpoint || ((job.pipeline.find((st) => st.name === "deploy") || {}).outputs || {}).reason || "—"],
    ]), h("details", {}, h("summary", {}, "Hyperparameters"), kvTable(Object.entries(job.config).map(([k, v]) => [k, fmt(v)]))));
    clear(usage, h("h2", {}, "Usage"), job.usage ? kvTable(usageRows(job.usage), { id: "job-usage" }) : h("p", { class: "muted" }, "Reported when training ends."));
    clear(errorSlot, job.error ? errorSection(job.error) : null);
    clear(pipeline, h("h2", {}, "Pipeline"), h("table", { class: "grid", id: "pipeline" },
      h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "State"), h("th", {}, "Time"), h("th", {}, "Outputs and artifacts"))),
      h("tbody", {}, job.pipeline.map((s) => h("tr", { dataset: { step: s.name } },
        h("td", {}, s.name), h("td", {}, badge(s.state)),
        h("td", { class: "small" }, s.start_time && s.end_time ? duration((new Date(s.end_time) - new Date(s.start_time)) / 1000) : s.start_time ? "running" : "—"),
        h("td", { class: "outputs" }, outputsCell(s.outputs)))))));

    try {
      const { metrics } = await api(`/v1/tuningJobs/${jobId}/metrics`);
      for (const r of metrics.slice(metricRows)) logLine(`  ${metricText(r)}`);
      metricRows = metrics.length;
      const pts = (key) => metrics.filter((r) => r[key] != null).map((r) => [r.step, r[key]]);
      drawChart(canvas, [
        { name: "train loss", color: "#2563eb", points: pts("train_loss") },
        { name: "eval loss", color: "#dc2626", points: pts("eval_loss"), style: pts("eval_loss").length > 1 ? "line" : "points" },
      // no legend for a series without data
      ].filter((x) => x.points.length || x.name === "train loss"), { xLabel: "step", yLabel: "loss", empty: running ? "Waiting for the first training step…" : "No metrics recorded" });
      const hasAcc = pts("train_accuracy").length + pts("eval_accuracy").length > 0;
      accTitle.hidden = accCanvas.hidden = !hasAcc;
      if (hasAcc) drawChart(accCanvas, [
        { name: "train accuracy", color: "#059669", points: pts("train_accuracy") },
        { name: "eval accuracy", color: "#d97706", points: pts("eval_accuracy") },
      ].filter((x) => x.points.length), { xLabel: "step", yLabel: "accuracy", empty: "—" });
      const keys = new Set(metrics.flatMap((r) => Object.keys(r)));
      const retrieval = [...keys].filter((k) => RETRIEVAL.test(k)).sort()
        .map((k, i) => [k, k, ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"][i % 6]]);
      const specs = [...MORE_CHARTS, ["retrieval-chart", "Retrieval (embedding)", "score", retrieval]];
      const shown = specs.map(([id, title, yLabel, series]) => [id, title, yLabel, series.filter(([k]) => pts(k).length)])
        .filter(([, , , series]) => series.length);
      moreCharts.hidden = !shown.length;
      if (shown.map(([id]) => id).join() !== moreCharts.dataset.ids) {
        moreCharts.dataset.ids = shown.map(([id]) => id).join();
        clear(moreCharts, shown.map(([id, title]) => {
          moreCanvases[id] = h("canvas", { class: "chart small-chart", id, "aria-label": title });
          return h("div", { class: "more-chart" }, h("h3", {}, title), moreCanvases[id]);
        }));
      }
      for (const [id, , yLabel, series] of shown) {
        drawChart(moreCanvases[id], series.map(([k, name, color]) => ({ name, color, points: pts(k) })), { xLabel: "step", yLabel });
      }
    } catch (err) { /* the job view above already shows what went wrong */ }

    const evalStep = job.pipeline.find((s) => s.name === "evaluate");
    const outputs = (evalStep && evalStep.outputs) || {};
    clear(evalSlot, h("h2", {}, "Evaluation: base against tuned"),
      outputs.evaluation ? evaluationTable(outputs.evaluation)
        : outputs.pass_rate_tuned != null ? graderTable(outputs)
        : outputs.mean_reward_tuned != null ? rewardTable(outputs)
        : h("p", { class: "muted" }, outputs.skipped ? `Skipped: ${outputs.skipped}.`
          : `Runs after training when ${job.method === "rlhf" ? "evaluation prompts are" : job.method === "rft" ? "held-out prompts are" : "a validation set is"} given.`));

    // Kept checkpoints exist once training has ended; listed once (deploying one updates its row).
    const trainStep = job.pipeline.find((s) => s.name === "train");
    if (!checkpointsShown && trainStep && trainStep.state === "SUCCEEDED" && !running) {
      checkpointsShown = true;
      checkpointsSlot.hidden = false;
      renderCheckpoints(checkpointsSlot, jobId, job.tuned_model_version, job.config.keep_checkpoints);
    }

    try {
      const { events: fresh } = await api(`/v1/tuningJobs/${jobId}/events?after=${lastEvent}`);
      for (const e of fresh) {
        log.push(e); lastEvent = Math.max(lastEvent, e.id);
        logLine(`${new Date(typeof e.time === "number" ? e.time * 1000 : e.time).toLocaleTimeString()} [${e.kind}] ${e.message || ""}`);
      }
      clear(events, h("h2", {}, "Events"), h("ol", { class: "events" },
        log.slice(-40).reverse().map((e) => h("li", {}, h("span", { class: "muted small" }, when(e.time)), " ", h("strong", {}, e.kind), " ", e.message || ""))));
    } catch (err) { /* shown on next refresh */ }

    if (!stopped && (running || job.state === "PAUSED")) timer = setTimeout(refresh, 2000);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

/** What the job asked for (accelerator, devices) and, once it trained, where it ran. */
function acceleratorText(job) {
  const config = job.config || {};
  const asked = `${config.accelerator || "auto"}${config.devices ? ` (devices ${config.devices})` : ""}`;
  const ran = job.usage && job.usage.accelerator;
  return ran ? `${asked}: ran on ${ran}` : asked;
}
