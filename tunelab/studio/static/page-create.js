// Create a tuned model: method, name, base model, datasets with their validation report shown
// before anything is submitted, hyperparameters and guidance. The methods, their dataset roles
// and their parameters (labels, inputs, defaults, help, which come first) are the server's
// method table and config schemas (GET /v1/tuningMethods; config-form.js): none is named here
// but for the guidance some methods get.
import { api } from "./api.js";
import { h, clear, fmt, errorBox, toast } from "./dom.js";
import { pageHeader } from "./widgets.js";
import { configFields, fieldInput, inputText, readField, valueText } from "./config-form.js";

const DEFAULT_BASE = "smollm2-135m-instruct";

// The data kinds a dataset role's `kind` names: how its file is described and checked, and the
// parameters the server's check takes from the form.
const KIND = {
  supervised: { noun: "examples", format: '{"input_text", "output_text"}, or chat {"messages": [...]} / {"contents": [...]}', checks: ["max_seq_length", "epochs"] },
  preference: { noun: "pairs", format: '{"input_text" or "messages", "candidate_0", "candidate_1", "choice": 0 | 1}', checks: ["prompt_sequence_length", "target_sequence_length", "instruction"] },
  prompts: { noun: "prompts", format: '{"input_text"}, or chat {"messages": [...]} / {"contents": [...]} with a user turn last', checks: ["prompt_sequence_length", "instruction"] },
  // Embedding files are checked together (labels name ids of the corpus and the queries).
  corpus: { noun: "passages", format: '{"_id", "text", "title" (optional)}', checks: [], joint: true },
  queries: { noun: "queries", format: '{"_id", "text"}', checks: [], joint: true },
  labels: { noun: "labels", format: "TSV: query-id<TAB>corpus-id<TAB>score, after a header line", checks: [], joint: true },
};

const TASKS = {
  classification: ["Classification", "100+ examples", 100, 500],
  summarization: ["Summarization", "100-500+ examples", 200, 1000],
  extractive_qa: ["Extractive question answering", "100+ examples", 100, 500],
};

/** The joint check of an embedding data set, as it concerns one of its files. */
function jointReportView(report, role, kind) {
  const errors = report.errors.filter((e) => e.role === role);
  const s = report.stats || {};
  const count = kind === "corpus" ? s.corpus : kind === "queries" ? s.queries : (s[role.replace("_labels", "")] || {}).labels;
  return h("div", { class: `report ${errors.length ? "has-errors" : "ok"}`, dataset: { errors: String(errors.length), kind } },
    errors.length
      ? [h("div", { class: "alert bad" }, h("strong", {}, `${errors.length} error${errors.length === 1 ? "" : "s"}`), ": fix these lines and upload the file again."),
         h("table", { class: "grid errors" },
           h("thead", {}, h("tr", {}, h("th", {}, "Line"), h("th", {}, "Field"), h("th", {}, "Problem"))),
           h("tbody", {}, errors.map((e) => h("tr", { dataset: { line: String(e.line) } },
             h("td", {}, e.line ? `line ${e.line}` : "file"), h("td", {}, e.field || "—"), h("td", {}, `${e.message} (${e.code})`)))))]
      : report.ok ? h("div", { class: "alert ok" }, h("strong", {}, "Valid"), `: ${fmt(count)} ${KIND[kind].noun}.`)
      : h("div", { class: "alert warn" }, "Fine, but the other files have errors."));
}

function reportView(report, kind) {
  const bad = report.error_count > 0;
  const noun = KIND[kind].noun;
  const tokenRows = kind === "prompts" ? [["Total tokens", report.total_tokens]] : [
    ["Total tokens", report.total_tokens], ["Trained tokens (model turns, one epoch)", report.trained_tokens], [`Billable tokens (all tokens × ${fmt(report.epochs ?? 1)} epochs)`, report.billable_tokens]];
  return h("div", { class: `report ${bad ? "has-errors" : "ok"}`, dataset: { errors: String(report.error_count), kind } },
    bad
      ? h("div", { class: "alert bad" }, h("strong", {}, `${report.error_count} error${report.error_count === 1 ? "" : "s"}`),
          ": fix these lines and upload the file again. Nothing is submitted while the data has errors.")
      : h("div", { class: "alert ok" }, h("strong", {}, "Valid"), `: ${fmt(report.usable_examples)} usable ${noun}.`),
    bad ? h("table", { class: "grid errors" },
      h("thead", {}, h("tr", {}, h("th", {}, "Line"), h("th", {}, "Field"), h("th", {}, "Problem"))),
      h("tbody", {}, report.errors.map((e) => h("tr", { dataset: { line: String(e.line) } },
        h("td", {}, `line ${e.line}`), h("td", {}, e.field || "—"), h("td", {}, `${e.message} (${e.code})`))))) : null,
    (report.warnings || []).map((w) => h("div", { class: "alert warn" }, w)),
    h("table", { class: "kv stats" }, h("tbody", {}, [
      ["Lines", report.lines], ["Examples", report.examples], [`Usable ${noun}`, report.usable_examples],
      ["Formats", Object.entries(report.formats || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "—"],
      ...tokenRows,
      ["Tokens per example", report.min_tokens == null ? "—" : `min ${report.min_tokens} · mean ${fmt(report.mean_tokens, 3)} · max ${report.max_tokens}`],
      ["Truncated", report.truncated], ["Dropped", Object.entries(report.dropped || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "0"],
    ].map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "number" ? fmt(v) : v))))));
}

/** One previewed line: the rendered text with its trained spans in <mark>, or its problems. */
function previewRow(r) {
  if (!r.text) return h("div", { class: "preview-row bad", dataset: { line: String(r.line) } }, h("small", { class: "muted" }, `line ${r.line}: `), (r.problems || []).join("; "));
  const parts = [];
  let at = 0;
  for (const [start, end] of r.trained_spans) {
    parts.push(r.text.slice(at, start), h("mark", { class: "trained" }, r.text.slice(start, end)));
    at = end;
  }
  parts.push(r.text.slice(at));
  return h("div", { class: "preview-row", dataset: { line: String(r.line) } }, h("small", { class: "muted" }, `line ${r.line}`), h("pre", { class: "rendered" }, parts));
}

/** A hyperparameter's text in the form ("" when absent or empty). */
const paramValue = (field) => {
  const input = document.getElementById(`param-${field}`);
  return input ? inputText(input) : "";
};

/** What to ask for before the method is chosen and the server's methods arrive. */
const NOTHING = { title: "", description: "", roles: [], fields: [] };

export function renderCreate(main, fromJob) {
  const state = { method: null, methods: {}, data: {}, busy: 0, baseError: null, fieldErrors: {} };
  const submitBtn = h("button", { id: "submit-job", type: "submit", disabled: true }, "Start tuning");
  const reason = h("span", { class: "muted small", id: "submit-reason" });
  const formError = h("div", { id: "form-error" });
  const name = h("input", { id: "display-name", required: true, maxlength: "128", placeholder: "e.g. ticket-router" });
  const base = h("input", { id: "base-model", required: true, value: DEFAULT_BASE, list: "base-models", maxlength: "512" });
  const datalist = h("datalist", { id: "base-models" });
  const methodSelect = h("select", { id: "method" }, h("option", { value: "" }, "Loading the methods…"));
  const methodNote = h("p", { class: "muted small", id: "method-note" });
  const dataCards = h("div", { id: "datasets" });
  const paramsLegend = h("legend", {});
  const params = h("div", { id: "hyperparameters" });
  const guidance = h("div", { class: "guidance", id: "guidance" });
  const taskLabel = h("label", { for: "task" }, "Task");
  const task = h("select", { id: "task" }, Object.entries(TASKS).map(([k, [label]]) => h("option", { value: k }, label)));
  const evalNote = h("p", { class: "muted small", id: "eval-note" });
  const baseError = h("div", { id: "base-model-error", role: "alert" });

  const spec = () => state.methods[state.method] || NOTHING;
  // [role, title, noun, optional, kind, description] of each dataset the method takes
  const roles = () => spec().roles;
  const kindOf = (role) => (roles().find(([r]) => r === role) || [])[4];
  const fields = () => spec().fields;
  const fieldOf = (name) => fields().find((f) => f.name === name);

  function datasetBlock(role, optional) {
    const file = h("input", { type: "file", id: `${role}-file`, accept: ".jsonl,.json,application/jsonl,text/plain" });
    const idInput = h("input", { id: `${role}-dataset-id`, placeholder: "ds-…", maxlength: "40" });
    const report = h("div", { id: `${role}-report` });
    const info = h("div", { class: "muted small", id: `${role}-dataset` });
    // Supervised data only: the first examples as the model sees them (GET …/preview).
    const previewBody = h("div", { id: `${role}-preview-body` });
    const preview = h("details", { class: "preview", id: `${role}-preview`, hidden: true, ontoggle: () => preview.open && loadPreview() },
      h("summary", {}, "Preview: the first examples as the model sees them"), previewBody);
    async function loadPreview() {
      const d = state.data[role];
      if (!d) return;
      clear(previewBody, h("p", { class: "muted" }, "Rendering…"));
      try {
        const q = new URLSearchParams({ base_model: base.value.trim() || DEFAULT_BASE, rows: "5" });
        const { rows } = await api(`/v1/datasets/${d.id}/preview?${q}`);
        clear(previewBody, h("p", { class: "hint" }, "Rendered with the base model's chat template; ",
          h("mark", {}, "highlighted"), " text is trained (the model turns), the rest is context."),
          rows.map((r) => previewRow(r)));
      } catch (err) { clear(previewBody, errorBox(err)); }
    }
    const legend = h("legend", {});
    const format = h("p", { class: "hint" });
    file.addEventListener("change", async () => {
      if (!file.files.length) return;
      const form = new FormData();
      form.append("file", file.files[0]);
      await withBusy(report, async () => {
        const ds = await api("/v1/datasets", { method: "POST", body: form });
        state.data[role] = { id: ds.id, filename: ds.filename, report: null };
        idInput.value = ds.id;
        await validate(role);
      });
    });
    const useId = h("button", { type: "button", class: "ghost", onclick: () => withBusy(report, async () => {
      const ds = await api(`/v1/datasets/${encodeURIComponent(idInput.value.trim())}`);
      state.data[role] = { id: ds.id, filename: ds.filename, report: null };
      await validate(role);
    }) }, "Use this dataset");
    const clearBtn = optional ? h("button", { type: "button", class: "ghost", onclick: () => {
      state.data[role] = null; file.value = ""; idInput.value = ""; clear(report); clear(info); update();
    } }, "Remove") : null;
    const block = h("fieldset", { class: "card", dataset: { role } }, legend, format,
      h("label", { for: `${role}-file` }, "Upload a JSONL file"), file,
      h("div", { class: "or" }, h("label", { for: `${role}-dataset-id` }, "or a dataset already uploaded"), h("div", { class: "param-row" }, idInput, useId, clearBtn)),
      h("p", { class: "hint" }, "The server reads only uploaded files: it cannot open a path on your machine, and reading paths on the server would expose its files. ",
        "Upload the file here, or with ", h("code", {}, `curl -F file=@${role}.jsonl …/v1/datasets`), " and paste its id."),
      info, report, preview);
    block.report = report;
    block.show = (number, title, kind, description) => {
      clear(legend, `${number} · ${title}`);
      clear(format, KIND[kind] ? ["One JSON object a line: ", h("code", {}, KIND[kind].format)] : description);
    };
    block.refresh = () => {
      const d = state.data[role];
      clear(info, d ? [`Dataset `, h("code", {}, d.id), d.filename ? ` (${d.filename})` : ""] : "");
      if (d && d.report) clear(report, KIND[kindOf(role)]?.joint ? jointReportView(d.report, role, kindOf(role)) : reportView(d.report, kindOf(role)));
      preview.hidden = !(d && kindOf(role) === "supervised");
      if (preview.open) loadPreview();
    };
    return block;
  }

  const blocks = {};
  const blockOf = (role, optional) => (blocks[role] ||= datasetBlock(role, optional));

  async function withBusy(slot, fn) {
    state.busy += 1; update();
    // A re-check (the base model or a limit changed) keeps the report on screen, marked busy, until
    // the new one replaces it: wiping it would flash an empty card and lose the lines to fix.
    const shown = slot.querySelector(".report");
    if (shown) shown.setAttribute("aria-busy", "true");
    else clear(slot, h("p", { class: "muted" }, "Checking the data…"));
    try { await fn(); } catch (err) {
      if (err.code === "model_not_found") {
        // The base model is wrong, not the data: say so where the base model is typed.
        state.baseError = err.message;
        clear(baseError, errorBox(err));
        clear(slot, h("p", { class: "muted" }, "The data is checked once the base model is found."));
      } else clear(slot, errorBox(err));
    } finally { state.busy -= 1; update(); }
  }

  /** The server's report on a role's dataset, read as that role's kind with the form's limits. */
  async function validate(role) {
    const d = state.data[role];
    const kind = kindOf(role);
    if (!d || !KIND[kind]) return; // a kind the Studio cannot check: the job's validate step reads it
    if (KIND[kind].joint) return validateJoint(role);
    const optional = (roles().find(([r]) => r === role) || [])[3];
    // A held-out set gets no advice on its size (that is for training sets).
    const q = new URLSearchParams({ kind, base_model: base.value.trim() || DEFAULT_BASE, purpose: optional ? "validation" : "train" });
    for (const name of KIND[kind].checks) {
      const field = fieldOf(name);
      if (field && paramValue(name) && !readField(field, paramValue(name)).error) q.set(name, paramValue(name));
    }
    const ticket = (d.ticket = (d.ticket || 0) + 1);
    const report = await api(`/v1/datasets/${d.id}/validation?${q}`);
    if (state.baseError) { state.baseError = null; clear(baseError); }
    if (state.data[role] !== d || d.ticket !== ticket || kindOf(role) !== kind) return; // a newer check is on its way
    d.report = report;
    blocks[role].refresh();
  }

  /** Corpus, queries and labels are checked together, once the required ones are there. */
  async function validateJoint(role) {
    const method = state.method;
    const joint = roles().filter(([, , , , kind]) => KIND[kind]?.joint);
    const present = joint.filter(([r]) => state.data[r]).map(([r]) => r);
    const missing = joint.filter(([r, , , optional]) => !optional && !state.data[r]).map(([, , noun]) => noun);
    if (missing.length) {
      state.data[role].report = null;
      clear(blocks[role].report, h("p", { class: "muted" }, `Checked together with the ${missing.join(" and ")}, once uploaded.`));
      return;
    }
    const q = new URLSearchParams(present.map((r) => [r, state.data[r].id]));
    const ticket = (state.jointTicket = (state.jointTicket || 0) + 1);
    const report = await api(`/v1/embeddingData/validation?${q}`);
    if (ticket !== state.jointTicket || state.method !== method) return;
    for (const r of present) { state.data[r].report = report; blocks[r].refresh(); }
  }

  /** One parameter: its label, input and help, as its config's schema says. */
  function paramView(field, typed) {
    const id = `param-${field.name}`;
    const input = fieldInput(field, typed[id] ?? field.initial);
    const touch = () => { input.dataset.touched = "1"; delete state.fieldErrors[field.name]; update(); };
    input.addEventListener("input", touch);
    input.addEventListener("change", touch);
    if (typed[id] !== undefined) input.dataset.touched = "1";
    if (Object.values(KIND).some((k) => k.checks.includes(field.name))) input.addEventListener("change", revalidate);
    const label = h("label", { for: id }, field.label);
    const hint = h("small", { class: "muted" }, field.hint);
    // A checkbox sits beside its label; the help stays right after the input, as for the others.
    return h("div", { class: `param${field.kind === "json" ? " wide" : ""}${field.kind === "bool" ? " check" : ""}`, dataset: { field: field.name } },
      label, input, hint);
  }

  function renderParams() {
    // What the user typed survives a redraw (the method's schema may arrive after they started).
    const typed = Object.fromEntries([...params.querySelectorAll("[data-touched]")].map((el) => [el.id, inputText(el)]));
    const basic = fields().filter((f) => f.group === "basic");
    const advanced = fields().filter((f) => f.group === "advanced");
    const wasOpen = params.querySelector("#advanced-params")?.open;
    clear(params,
      h("div", { class: "params", id: "basic-params" }, basic.map((f) => paramView(f, typed))),
      advanced.length ? h("details", { id: "advanced-params", open: Boolean(wasOpen) },
        h("summary", {}, `Advanced: ${advanced.length} more parameter${advanced.length === 1 ? "" : "s"}`),
        h("div", { class: "params" }, advanced.map((f) => paramView(f, typed)))) : null);
  }

  /** Each parameter's value as the config takes it, or the problems that keep it from it. */
  function readParams() {
    const values = {}, problems = [];
    for (const field of fields()) {
      const input = document.getElementById(`param-${field.name}`);
      if (!input) continue;
      const { value, error } = readField(field, inputText(input));
      const serverError = state.fieldErrors[field.name];
      // An input not yet filled in is not marked wrong: the reason under the button says it.
      input.setAttribute("aria-invalid", String(Boolean((error && input.dataset.touched) || serverError)));
      if (error) problems.push(error);
      else values[field.name] = value;
    }
    return { values, problems };
  }

  /** The job's config: the base model and every parameter set to other than its default. */
  function config() {
    const out = { base_model: base.value.trim() };
    for (const [name, value] of Object.entries(readParams().values)) {
      const prop = fieldOf(name).prop;
      if (value !== undefined && JSON.stringify(value) !== JSON.stringify(prop.default ?? null)) out[name] = value;
    }
    return out;
  }

  /** A parameter's value for the guidance's arithmetic: the form's, else what the config takes. */
  function current(name) {
    const field = fieldOf(name);
    if (!field) return undefined;
    const { value } = readField(field, paramValue(name));
    return value ?? field.prop.default ?? field.whenEmpty;
  }

  /** "N usable <noun> -> S steps of P read ... about X passes", for a role's checked file. */
  function passes(lines, role, perStep, steps, noun) {
    const r = state.data[role] && state.data[role].report;
    if (!r || !r.ok || !r.usable_examples || !perStep || !steps) return;
    const seen = perStep * steps;
    lines.push(h("p", { id: `${role}-estimate` }, `${r.usable_examples} usable ${noun} → ${steps} steps of ${perStep} read `,
      h("strong", {}, `${fmt(seen)} ${noun}`), `, about ${fmt(seen / r.usable_examples, 2)} passes.`));
  }

  /** Steps per epoch and in all, at the form's batch size and epochs or steps. */
  function stepsEstimate(lines, r, noun) {
    const bs = current("batch_size");
    const epochs = current("epochs");
    const stepsInput = paramValue("train_steps");
    const perEpoch = Math.ceil(r.usable_examples / bs);
    const steps = stepsInput ? Number(stepsInput) : perEpoch * epochs;
    lines.push(h("p", { id: "steps-estimate" }, `Your data: ${r.usable_examples} usable ${noun} → ${perEpoch} steps per epoch at batch size ${bs}; `,
      h("strong", {}, `${steps} steps`), stepsInput ? " (train steps)." : ` over ${epochs} epoch${epochs === 1 ? "" : "s"}.`));
    return steps;
  }

  function sftGuidance() {
    const [label, examples, lo, hi] = TASKS[task.value];
    const r = state.data.train && state.data.train.report;
    const lines = [h("p", {}, h("strong", {}, label), `: Vertex recommends ${examples} and ${lo}-${hi} training steps. `,
      "Every task needs at least 16 examples; 100 to 500 are recommended. More, varied examples beat more epochs.")];
    if (r && r.ok) {
      const steps = stepsEstimate(lines, r, "examples");
      if (r.usable_examples < 16) lines.push(h("p", { class: "alert warn" }, "Fewer than 16 examples: Vertex would refuse this dataset."));
      if (steps < lo || steps > hi) lines.push(h("p", { class: "alert warn" }, `${steps} steps is outside the recommended ${lo}-${hi} for this task.`));
    }
    return lines;
  }

  /** How many times each stage of RLHF reads its data, from the reports and the step counts. */
  function rlhfGuidance() {
    const lines = [h("p", {}, h("strong", {}, "RLHF"), ": stage 1 trains a reward model to score the preferred candidate higher; ",
      "stage 2 samples answers to the prompts and tunes the model to earn more reward, held near the base model by the KL coefficient.")];
    passes(lines, "preference", current("reward_model_batch_size"), current("reward_model_train_steps"), "pairs");
    passes(lines, "prompts", current("prompts_per_step"), current("reinforcement_learning_train_steps"), "prompts");
    return lines;
  }

  /** DPO: how often the pairs are read, at the form's batch size and epochs or steps. */
  function dpoGuidance() {
    const lines = [h("p", {}, h("strong", {}, "DPO"), ": each step compares the chosen and the rejected answer of ",
      "a batch of pairs and moves the model toward the chosen one, held near its starting point by beta. ",
      "Vertex advises at least 16 pairs; a few hundred varied ones work better than more epochs.")];
    const r = state.data.preference && state.data.preference.report;
    if (r && r.ok) stepsEstimate(lines, r, "pairs");
    return lines;
  }

  function rftGuidance() {
    const lines = [h("p", {}, h("strong", {}, "Reinforcement fine-tuning"), ": each step samples answers to a few prompts, ",
      "scores them with the grader and moves the model toward the answers that scored above their group's mean. ",
      "Try the grader on the references first: ", h("code", {}, "tunelab graders test"), ".")];
    passes(lines, "train", current("prompts_per_step"), current("train_steps"), "prompts");
    return lines;
  }

  function embeddingGuidance() {
    const r = state.data.train_labels && state.data.train_labels.report;
    const lines = [h("p", {}, h("strong", {}, "Embedding tuning"), ": each step scores every query of a batch against every labelled passage ",
      "of the batch (the others are negatives); the test labels measure recall@k, NDCG@10 and MRR of the base and the tuned encoder.")];
    if (r && r.ok && r.stats) lines.push(h("p", { id: "steps-estimate" }, `${r.stats.train.queries} training queries with ${r.stats.train.positives} positive labels; `,
      r.stats.test_from_split ? "no test labels: 20% of the training queries are held out for the test." : `${r.stats.test.queries} test queries.`));
    return lines;
  }

  // Guidance for the methods that have some; another method shows its description.
  const GUIDANCE = { sft: sftGuidance, rlhf: rlhfGuidance, dpo: dpoGuidance, rft: rftGuidance, embedding: embeddingGuidance };
  const EVAL_NOTES = {
    sft: "With a validation set, TuneLab evaluates every few steps, keeps the best checkpoint, stops early when eval loss stops improving, and compares the tuned model with its base.",
    rlhf: "With evaluation prompts, TuneLab compares the tuned model with its base on them under the reward model (mean reward, win rate).",
    dpo: "With validation pairs, TuneLab measures reward accuracy and margins on them every few steps and stores the last evaluation on the model version.",
    rft: "With held-out prompts, TuneLab compares the tuned model with its base under the grader (pass rate and mean reward, with 95% intervals).",
    embedding: "Without test labels, 20% of the training queries are held out to compare the tuned encoder with its base.",
  };

  function renderGuidance() {
    taskLabel.hidden = task.hidden = state.method !== "sft";
    const own = GUIDANCE[state.method];
    clear(guidance, own ? own() : state.method ? h("p", {}, h("strong", {}, spec().title), `: ${spec().description}`) : null);
    clear(evalNote, EVAL_NOTES[state.method] ?? roles().filter(([, , , optional]) => optional).map(([, , , , , about]) => about).join(" "));
  }

  function update() {
    const problems = [];
    if (!state.method) problems.push("the server's tuning methods have not arrived");
    if (!name.value.trim()) problems.push("give the tuned model a name");
    if (!base.value.trim()) problems.push("choose a base model");
    else if (state.baseError) problems.push("the base model was not found");
    if (state.busy) problems.push("checking the data");
    for (const [role, , noun, optional, kind] of roles()) {
      const d = state.data[role];
      if (!d) { if (!optional) problems.push(`upload the ${noun}`); continue; }
      if (!KIND[kind]) continue; // not checked here: the job's validate step reads it
      const joint = KIND[kind].joint; // one report for all the embedding files: this file's errors
      if (d.report && !d.report.ok && (!joint || d.report.errors.some((e) => e.role === role))) problems.push(`errors in the ${noun}`);
      else if (!d.report && !state.busy) problems.push(`the ${noun} not checked yet`);
    }
    problems.push(...readParams().problems);
    for (const [field, message] of Object.entries(state.fieldErrors)) problems.push(`${fieldOf(field)?.label.toLowerCase() || field}: ${message}`);
    submitBtn.disabled = problems.length > 0;
    reason.textContent = problems.length ? `Cannot start yet: ${problems.join("; ")}.` : "Ready.";
    renderGuidance();
  }

  let revalidateTimer = null;
  function revalidate() {
    clearTimeout(revalidateTimer);
    revalidateTimer = setTimeout(() => {
      for (const [role] of roles()) if (state.data[role] && !state.closed) withBusy(blocks[role].report, () => validate(role));
    }, 400);
  }

  function setMethod() {
    const previous = state.method;
    state.method = methodSelect.value || null;
    state.fieldErrors = {};
    // Each method's own default base model (an encoder for embeddings), unless one was typed.
    const defaultOf = (m) => ((((state.methods[m] || {}).schema || {}).properties || {}).base_model || {}).default;
    if (defaultOf(state.method) && (!base.value.trim() || base.value.trim() === (defaultOf(previous) || DEFAULT_BASE))) base.value = defaultOf(state.method);
    clear(methodNote, spec().description);
    clear(dataCards, roles().map(([role, title, , optional, kind, about], i) => {
      const block = blockOf(role, optional);
      block.show(i + 2, title, kind, about);
      if (state.data[role]) { state.data[role].report = null; clear(block.report); }
      return block;
    }));
    clear(paramsLegend, `${roles().length + 2} · Hyperparameters`);
    if (previous !== state.method) clear(params); // another method's values are not this one's
    renderParams();
    revalidate();
    update();
  }

  /** The server refused the config: each field's message beside it (advanced ones unfolded). */
  function showFieldErrors(errors) {
    for (const { field, message } of errors) {
      const name = (field || "").replace(/^config\./, "").split(".")[0];
      if (!fieldOf(name)) continue;
      state.fieldErrors[name] = message;
      const input = document.getElementById(`param-${name}`);
      const details = input && input.closest("details");
      if (details) details.open = true;
    }
  }

  const form = h("form", { class: "wizard", id: "create-form", onsubmit: async (e) => {
    e.preventDefault();
    if (submitBtn.disabled) return;
    clear(formError);
    submitBtn.disabled = true;
    try {
      const body = {
        method: state.method,
        tuned_model_display_name: name.value.trim(),
        datasets: Object.fromEntries(roles().filter(([role]) => state.data[role]).map(([role]) => [role, state.data[role].id])),
        config: config(),
        idempotency_key: `studio-${crypto.getRandomValues(new Uint32Array(4)).join("-")}`,
      };
      const job = await api("/v1/tuningJobs", { method: "POST", json: body });
      toast(`Tuning job ${job.id} created`);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      const errors = (err.details && err.details.errors) || [];
      showFieldErrors(errors);
      clear(formError, errorBox(err), errors.length ? h("ul", { class: "alert bad" }, errors.map((x) => h("li", {}, `${x.field}: ${x.message}`))) : null);
      update();
    }
  } },
    h("div", { class: "columns" },
      h("div", { class: "col-wide" },
        h("fieldset", { class: "card" }, h("legend", {}, "1 · Method and model"),
          h("label", { for: "method" }, "Tuning method"), methodSelect, methodNote,
          h("label", { for: "display-name" }, "Tuned model name"), name,
          h("label", { for: "base-model" }, "Base model"), base, datalist, baseError,
          h("small", { class: "muted" }, "A catalog name, a model folder on the server, or a Hugging Face hub id.")),
        dataCards,
        h("fieldset", { class: "card" }, paramsLegend, params)),
      h("div", { class: "col-narrow" },
        h("div", { class: "card sticky" }, h("h2", {}, "Guidance"), taskLabel, task, guidance, evalNote,
          formError, h("div", { class: "actions" }, submitBtn), reason))));
  clear(main, pageHeader("Create tuned model"), form);

  name.addEventListener("input", update);
  base.addEventListener("change", () => { update(); revalidate(); });
  base.addEventListener("input", update);
  task.addEventListener("change", update);
  methodSelect.addEventListener("change", setMethod);
  update();

  api("/v1/models").then(({ data }) => clear(datalist, data.filter((m) => m.owned_by !== "user").map((m) => h("option", { value: m.id })))).catch(() => {});
  // The methods this server offers, each with its dataset roles and its config's JSON schema.
  api("/v1/tuningMethods").then(({ tuning_methods: methods }) => {
    for (const m of methods) {
      state.methods[m.method] = {
        title: m.title || m.method,
        description: m.description || "",
        schema: m.config_schema,
        fields: configFields(m.config_schema),
        roles: m.dataset_roles.map((r) => {
          const title = r.title || r.role;
          return [r.role, r.required ? title : `${title} (optional)`, title.toLowerCase(), !r.required, r.kind, r.description];
        }),
      };
    }
    clear(methodSelect, methods.map((m) => h("option", { value: m.method, dataset: { supported: "true" } }, state.methods[m.method].title)));
    if (state.closed) return;
    setMethod();
    if (fromJob) return cloneJob(fromJob);
  }).catch((err) => clear(formError, errorBox(err)));

  /** "Tune again with these settings": the job's method, base, datasets (by id) and config. */
  async function cloneJob(jobId) {
    const job = await api(`/v1/tuningJobs/${encodeURIComponent(jobId)}`);
    if (state.closed) return;
    if (!state.methods[job.method]) {
      clear(formError, h("div", { class: "alert bad" }, `Job ${job.id} used the method ${job.method}, which this server no longer offers.`));
      return;
    }
    methodSelect.value = job.method;
    setMethod();
    name.value = job.display_name;
    base.value = job.config.base_model || job.base_model;
    const unknown = [];
    for (const [field, value] of Object.entries(job.config)) {
      if (field === "method" || field === "base_model") continue;
      const spec = fieldOf(field);
      const input = document.getElementById(`param-${field}`);
      if (!spec || !input) { unknown.push(field); continue; }
      const text = valueText(spec, value);
      if (input.type === "checkbox") input.checked = text === "true";
      else input.value = text;
      input.dataset.touched = "1";
      // A setting other than the default, among the advanced ones: unfold them to show it.
      if (spec.group === "advanced" && text !== spec.initial) input.closest("details").open = true;
    }
    clear(methodNote, methodNote.textContent, " ", h("strong", { id: "cloned-from" }, `Settings of job ${job.id}.`),
      unknown.length ? ` Not in this method's config any more, so left out: ${unknown.join(", ")}.` : "");
    for (const [jobRole, id] of Object.entries(job.datasets)) {
      // DPO's pairs may have been sent as "train" (the API's train_dataset); the form says "preference".
      const takes = (r) => roles().some(([known]) => known === r);
      const role = takes(jobRole) ? jobRole : jobRole === "train" && takes("preference") ? "preference" : null;
      const block = role && blocks[role];
      if (!block) continue;
      await withBusy(block.report, async () => {
        const ds = await api(`/v1/datasets/${encodeURIComponent(id)}`);
        state.data[role] = { id: ds.id, filename: ds.filename, report: null };
        document.getElementById(`${role}-dataset-id`).value = ds.id;
        await validate(role);
      });
    }
    update();
  }
  return () => { state.closed = true; clearTimeout(revalidateTimer); };
}
