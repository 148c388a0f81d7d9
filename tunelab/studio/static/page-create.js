// Create a tuned model: method, name, base model, datasets with their validation report shown
// before anything is submitted, hyperparameters with Vertex's defaults and guidance.
import { api } from "./api.js";
import { h, clear, fmt, errorBox, toast } from "./dom.js";
import { pageHeader } from "./widgets.js";

const DEFAULT_BASE = "smollm2-135m-instruct";
const METHODS = [
  ["sft", "Supervised tuning", "Input/output examples (Vertex text, Gemini or OpenAI chat JSONL). The model learns to answer like the outputs."],
  ["rlhf", "RLHF", "Preference pairs (prompt, two candidates, choice) train a reward model; then reinforcement learning on prompts earns its reward, with a KL penalty to the base model."],
  ["dpo", "DPO", "Preference pairs (prompt, chosen, rejected), optimised directly without a reward model."],
  ["rft", "Reinforcement fine-tuning", "Prompts with the fields a grader checks (an exact label, a number, JSON with given keys, a Python function): the model samples answers and learns from the grader's rewards (GRPO), with a KL penalty to the base model."],
  ["embedding", "Embedding tuning", "A corpus, queries and labels (which passages answer which query), as Vertex takes them: the encoder learns to rank the labelled passages first."],
];

// The datasets each method takes, by the role POST /v1/tuningJobs names them with:
// [role, title, noun, optional, kind (the `kind` of GET /v1/datasets/{id}/validation)]
const DATASETS = {
  sft: [
    ["train", "Training data", "training data", false, "supervised"],
    ["validation", "Validation data (optional)", "validation data", true, "supervised"],
  ],
  dpo: [
    ["train", "Preference pairs", "training data", false, "preference"],
    ["validation", "Validation pairs (optional)", "validation data", true, "preference"],
  ],
  embedding: [
    ["corpus", "Corpus", "corpus", false, "corpus"],
    ["queries", "Queries", "queries", false, "queries"],
    ["train_labels", "Training labels", "training labels", false, "labels"],
    ["test_labels", "Test labels (optional)", "test labels", true, "labels"],
    ["validation_labels", "Validation labels (optional)", "validation labels", true, "labels"],
  ],
  rft: [
    ["train", "Prompts", "prompts", false, "prompts"],
    ["validation", "Held-out prompts (optional)", "held-out prompts", true, "prompts"],
  ],
  rlhf: [
    ["preference", "Preference pairs", "preference pairs", false, "preference"],
    ["prompts", "Prompts", "prompts", false, "prompts"],
    ["eval", "Evaluation prompts (optional)", "evaluation prompts", true, "prompts"],
  ],
};
const KIND = {
  supervised: { noun: "examples", format: '{"input_text", "output_text"}, or chat {"messages": [...]} / {"contents": [...]}', checks: ["max_seq_length", "epochs"] },
  preference: { noun: "pairs", format: '{"input_text" or "messages", "candidate_0", "candidate_1", "choice": 0 | 1}', checks: ["prompt_sequence_length", "target_sequence_length", "instruction"] },
  prompts: { noun: "prompts", format: '{"input_text"}, or chat {"messages": [...]} / {"contents": [...]} with a user turn last', checks: ["prompt_sequence_length", "instruction"] },
  // Embedding files are checked together (labels name ids of the corpus and the queries).
  corpus: { noun: "passages", format: '{"_id", "text", "title" (optional)}', checks: [], joint: true },
  queries: { noun: "queries", format: '{"_id", "text"}', checks: [], joint: true },
  labels: { noun: "labels", format: "TSV: query-id<TAB>corpus-id<TAB>score, after a header line", checks: [], joint: true },
};

// [name, label, kind, default, hint]. The default and (where the hint is empty) the hint are
// replaced by the config's own, from its JSON schema (GET /v1/tuningMethods): written once, on
// the config class. The defaults here only show until that answer arrives.
const COMMON_STEPS = [
  ["epochs", "Epochs", "int", "", ""],  // the hint is the config's: its default differs by method
  ["train_steps", "Train steps", "int", "", ""],
];
// Every method's config has them (tunelab/configs/compute.py); hints from the schema.
const COMPUTE = [
  ["accelerator", "Accelerator", "choice:auto,cpu,cuda", "auto", ""],
  ["devices", "Devices", "text", "", ""],
];
const FIELDS = {
  sft: [
    ...COMMON_STEPS,
    ["learning_rate_multiplier", "Learning rate multiplier", "float", "1.0", "× the recommended rate 1e-3 for LoRA."],
    ["adapter_size", "Adapter size (LoRA rank)", "select:1,2,4,8,16", "8", "Larger adapters learn more and take longer."],
    ["batch_size", "Batch size", "int", "8", "Examples per optimizer step."],
    ["max_seq_length", "Max sequence length", "int", "1024", "Longer examples are truncated (or dropped if no model turn is left)."],
    ["warmup_ratio", "Warm-up ratio", "float", "0.05", "Fraction of steps with linear warm-up."],
    ["eval_every_steps", "Evaluate every N steps", "int", "20", "Needs a validation set."],
    ["checkpoint_every_steps", "Checkpoint every N steps", "int", "20", "A crash or pause resumes from the last one."],
    ["early_stopping_patience", "Early stopping patience", "int", "3", "Stop after this many evaluations without a better eval loss; empty disables. Needs a validation set."],
    ["seed", "Seed", "int", "42", "Seeds data order and adapter initialisation."],
    ["precision", "Precision", "choice:auto,fp32,bf16", "auto", "auto trains in bf16 mixed precision where this machine's bf16 matmuls measure clearly faster, else fp32."],
    ...COMPUTE,
    ["processes", "Processes", "int", "", "Data-parallel training processes on this machine; the result equals one process."],
  ],
  dpo: [
    ...COMMON_STEPS,
    ["beta", "Beta", "float", "", ""],
    ["learning_rate_multiplier", "Learning rate multiplier", "float", "", ""],
    ["adapter_size", "Adapter size (LoRA rank)", "select:1,2,4,8,16", "", ""],
    ["batch_size", "Batch size", "int", "", ""],
    ["prompt_sequence_length", "Prompt sequence length", "int", "", ""],
    ["target_sequence_length", "Target sequence length", "int", "", ""],
    ["eval_every_steps", "Evaluate every N steps", "int", "", "Needs validation pairs."],
    ["seed", "Seed", "int", "", "Seeds data order and adapter initialisation."],
    ...COMPUTE,
    ["processes", "Processes", "int", "", "Data-parallel training processes on this machine; the result equals one process."],
  ],
  embedding: [
    ["train_steps", "Train steps", "int", "", ""],
    ["batch_size", "Batch size", "int", "", ""],
    ["learning_rate_multiplier", "Learning rate multiplier", "float", "", ""],
    ["adapter_size", "Adapter size (LoRA rank)", "select:1,2,4,8,16,32", "", ""],
    ["output_dimensionality", "Output dimensionality", "int", "", ""],
    ["temperature", "Temperature", "float", "", ""],
    ["max_seq_length", "Max sequence length", "int", "", ""],
    ["seed", "Seed", "int", "", ""],
    ...COMPUTE,
    ["processes", "Processes", "int", "", "Data-parallel training processes on this machine; the result equals one process."],
  ],
  // RFTConfig (tunelab/configs/rft.py); the grader is JSON, checked by the server on submit.
  rft: [
    ["grader", "Grader (JSON)", "json", "", 'How an answer is scored, e.g. {"type": "string_check", "operation": "eq", "reference": "{{item.label}}"}; {{item.FIELD}} reads a field of the prompt\'s line. Try it first with `tunelab graders test`.'],
    ["train_steps", "Train steps", "int", "", ""],
    ["learning_rate_multiplier", "Learning rate multiplier", "float", "", ""],
    ["kl_coeff", "KL coefficient", "float", "", ""],
    ["samples_per_prompt", "Samples per prompt", "int", "", ""],
    ["prompts_per_step", "Prompts per step", "int", "", ""],
    ["pass_threshold", "Pass threshold", "float", "", ""],
    ["target_sequence_length", "Target sequence length", "int", "", ""],
    ["instruction", "Instruction", "text", "", ""],
    ["adapter_size", "Adapter size (LoRA rank)", "select:1,2,4,8,16", "", ""],
    ["seed", "Seed", "int", "", ""],
    ...COMPUTE,
  ],
  // RLHFConfig's defaults (tunelab/configs/rlhf.py).
  rlhf: [
    ["reward_model_train_steps", "Reward model train steps", "int", "50", "Steps of 8 pairs. Vertex recommends 100-500; a small model learns a clear preference in 10-20."],
    ["reward_model_learning_rate_multiplier", "Reward model learning rate multiplier", "float", "1.0", "× the reward model's recommended rate 1e-3."],
    ["reinforcement_learning_train_steps", "Reinforcement learning train steps", "int", "40", "Policy steps, each scoring 4 sampled answers to each of 4 prompts. Vertex recommends 100-500."],
    ["reinforcement_learning_rate_multiplier", "Reinforcement learning rate multiplier", "float", "1.0", "× the policy's recommended rate 5e-4."],
    ["kl_coeff", "KL coefficient", "float", "0.1", "Penalty for moving away from the base model: higher stays closer, 0 turns it off."],
    ["prompt_sequence_length", "Prompt sequence length", "int", "512", "Prompts are cut to their last N tokens."],
    ["target_sequence_length", "Target sequence length", "int", "64", "Most tokens of an answer: samples stop there, candidates are cut to it."],
    ["instruction", "Instruction", "text", "", "Optional: put before the first user turn of every prompt, e.g. “Answer in one sentence.”"],
    ["adapter_size", "Adapter size (LoRA rank)", "select:1,2,4,8,16", "8", "Of both the reward model and the policy."],
    ["seed", "Seed", "int", "42", "Seeds data order, initialisation and sampling."],
    ...COMPUTE,
    ["processes", "Processes", "int", "", "Data-parallel training processes on this machine; the result equals one process."],
  ],
};
// Knobs of RLHFConfig the form leaves to the extra config, for the guidance's arithmetic.
const RLHF_DEFAULTS = { reward_model_batch_size: 8, prompts_per_step: 4 };

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

/** A hyperparameter's current value in the form ("" when absent or empty). */
const paramValue = (field) => (document.getElementById(`param-${field}`)?.value || "").trim();

export function renderCreate(main, fromJob) {
  const state = { method: "sft", supported: { sft: true }, schemas: {}, data: {}, busy: 0, baseError: null };
  const submitBtn = h("button", { id: "submit-job", type: "submit", disabled: true }, "Start tuning");
  const reason = h("span", { class: "muted small", id: "submit-reason" });
  const formError = h("div", { id: "form-error" });
  const name = h("input", { id: "display-name", required: true, maxlength: "128", placeholder: "e.g. ticket-router" });
  const base = h("input", { id: "base-model", required: true, value: DEFAULT_BASE, list: "base-models", maxlength: "512" });
  const datalist = h("datalist", { id: "base-models" });
  const methodSelect = h("select", { id: "method" }, METHODS.map(([id, label]) => h("option", { value: id }, label)));
  const methodNote = h("p", { class: "muted small", id: "method-note" });
  const dataCards = h("div", { id: "datasets" });
  const paramsLegend = h("legend", {});
  const params = h("div", { class: "params", id: "hyperparameters" });
  const guidance = h("div", { class: "guidance", id: "guidance" });
  const taskLabel = h("label", { for: "task" }, "Task");
  const task = h("select", { id: "task" }, Object.entries(TASKS).map(([k, [label]]) => h("option", { value: k }, label)));
  const evalNote = h("p", { class: "muted small", id: "eval-note" });
  const extra = h("textarea", { id: "extra-config", rows: "2", placeholder: '{"kl_coeff": 0.1}', "aria-label": "Extra config (JSON)" });
  const baseError = h("div", { id: "base-model-error", role: "alert" });

  const roles = () => DATASETS[state.method];
  const kindOf = (role) => (roles().find(([r]) => r === role) || [])[4];

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
    block.show = (number, title, kind) => {
      clear(legend, `${number} · ${title}`);
      clear(format, "One JSON object a line: ", h("code", {}, KIND[kind].format));
    };
    block.refresh = () => {
      const d = state.data[role];
      clear(info, d ? [`Dataset `, h("code", {}, d.id), d.filename ? ` (${d.filename})` : ""] : "");
      if (d && d.report) clear(report, KIND[kindOf(role)].joint ? jointReportView(d.report, role, kindOf(role)) : reportView(d.report, kindOf(role)));
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
    if (!d || !kind) return;
    if (KIND[kind].joint) return validateJoint(role);
    const optional = (roles().find(([r]) => r === role) || [])[3];
    // A held-out set gets no advice on its size (that is for training sets).
    const q = new URLSearchParams({ kind, base_model: base.value.trim() || DEFAULT_BASE, purpose: optional ? "validation" : "train" });
    for (const field of KIND[kind].checks) if (paramValue(field)) q.set(field, paramValue(field));
    const ticket = (d.ticket = (d.ticket || 0) + 1);
    const report = await api(`/v1/datasets/${d.id}/validation?${q}`);
    if (state.baseError) { state.baseError = null; clear(baseError); }
    if (state.data[role] !== d || d.ticket !== ticket || kindOf(role) !== kind) return; // a newer check is on its way
    d.report = report;
    blocks[role].refresh();
  }

  /** The config's default and description for a field, from its JSON schema. */
  function fromSchema(field, value, hint) {
    const prop = ((state.schemas[state.method] || {}).properties || {})[field];
    if (!prop) return [value, hint];
    const d = prop.default;
    // A float shows as one ("1.0", not "1"), as the config writes it.
    const shown = d === null || d === undefined ? "" : prop.type === "number" && Number.isInteger(d) ? d.toFixed(1) : String(d);
    return [shown, hint || prop.description || ""];
  }

  /** Corpus, queries and labels are checked together, once the three required ones are there. */
  async function validateJoint(role) {
    const present = roles().filter(([r]) => state.data[r]).map(([r]) => r);
    const missing = roles().filter(([r, , , optional]) => !optional && !state.data[r]).map(([, , noun]) => noun);
    if (missing.length) {
      state.data[role].report = null;
      clear(blocks[role].report, h("p", { class: "muted" }, `Checked together with the ${missing.join(" and ")}, once uploaded.`));
      return;
    }
    const q = new URLSearchParams(present.map((r) => [r, state.data[r].id]));
    const ticket = (state.jointTicket = (state.jointTicket || 0) + 1);
    const report = await api(`/v1/embeddingData/validation?${q}`);
    if (ticket !== state.jointTicket || state.method !== "embedding") return;
    for (const r of present) { state.data[r].report = report; blocks[r].refresh(); }
  }

  function renderParams() {
    // What the user typed survives a redraw (the schemas may arrive after they started).
    const typed = Object.fromEntries([...params.querySelectorAll("[data-touched]")].map((el) => [el.id, el.value]));
    clear(params, FIELDS[state.method].map(([field, label, kind, jsValue, jsHint]) => {
      const [schemaValue, hint] = fromSchema(field, jsValue, jsHint);
      const value = typed[`param-${field}`] ?? schemaValue;
      // select: numeric options; choice: named ones, sent as text
      const input = kind.startsWith("select:") || kind.startsWith("choice:")
        ? h("select", { id: `param-${field}` }, kind.slice(7).split(",").map((o) => h("option", { value: o, selected: o === value }, o)))
        : kind === "json"
          ? h("textarea", { id: `param-${field}`, rows: "6", spellcheck: "false", class: "code", placeholder: '{"type": "numeric", "reference": "{{item.answer}}"}' }, value)
        : kind === "text"
          ? h("input", { id: `param-${field}`, type: "text", maxlength: "10000", value, placeholder: "none" })
          : h("input", { id: `param-${field}`, type: "number", step: kind === "float" ? "any" : "1", value, placeholder: value ? "" : "optional" });
      input.addEventListener("input", () => { input.dataset.touched = "1"; update(); });
      if (typed[`param-${field}`] !== undefined) input.dataset.touched = "1";
      if (Object.values(KIND).some((k) => k.checks.includes(field))) input.addEventListener("change", revalidate);
      return h("div", { class: "param" }, h("label", { for: `param-${field}` }, label), input, hint ? h("small", { class: "muted" }, hint) : null);
    }));
  }

  function config() {
    const out = { base_model: base.value.trim() };
    for (const [field, , kind] of FIELDS[state.method]) {
      const raw = paramValue(field);
      if (raw === "") { if (field === "early_stopping_patience") out[field] = null; continue; }
      const named = kind === "text" || kind.startsWith("choice:");
      out[field] = kind === "json" ? JSON.parse(raw) : named ? raw : kind === "float" ? Number(raw) : Number.parseInt(raw, 10);
    }
    if (extra.value.trim()) Object.assign(out, JSON.parse(extra.value));
    return out;
  }

  function stepsGuidance() {
    const [label, examples, lo, hi] = TASKS[task.value];
    const r = state.data.train && state.data.train.report;
    const lines = [h("p", {}, h("strong", {}, label), `: Vertex recommends ${examples} and ${lo}-${hi} training steps. `,
      "Every task needs at least 16 examples; 100 to 500 are recommended. More, varied examples beat more epochs.")];
    if (r && r.ok) {
      const bs = Number(paramValue("batch_size")) || 8;
      const stepsInput = paramValue("train_steps");
      const epochs = Number(paramValue("epochs")) || 3;
      const perEpoch = Math.ceil(r.usable_examples / bs);
      const steps = stepsInput ? Number(stepsInput) : perEpoch * epochs;
      lines.push(h("p", { id: "steps-estimate" }, `Your data: ${r.usable_examples} usable examples → ${perEpoch} steps per epoch at batch size ${bs}; `,
        h("strong", {}, `${steps} steps`), stepsInput ? " (train steps)." : ` over ${epochs} epochs.`));
      if (r.usable_examples < 16) lines.push(h("p", { class: "alert warn" }, "Fewer than 16 examples: Vertex would refuse this dataset."));
      if (steps < lo || steps > hi) lines.push(h("p", { class: "alert warn" }, `${steps} steps is outside the recommended ${lo}-${hi} for this task.`));
    }
    return lines;
  }

  /** How many times each stage of RLHF reads its data, from the reports and the step counts. */
  function rlhfGuidance() {
    let c = {};
    try { c = { ...RLHF_DEFAULTS, ...config() }; } catch (_) { c = { ...RLHF_DEFAULTS }; }
    const lines = [h("p", {}, h("strong", {}, "RLHF"), ": stage 1 trains a reward model to score the preferred candidate higher; ",
      "stage 2 samples answers to the prompts and tunes the model to earn more reward, held near the base model by the KL coefficient.")];
    const passes = (role, perStep, steps, noun) => {
      const r = state.data[role] && state.data[role].report;
      if (!r || !r.ok || !r.usable_examples || !steps) return;
      const seen = perStep * steps;
      lines.push(h("p", { id: `${role}-estimate` }, `${r.usable_examples} usable ${noun} → ${steps} steps of ${perStep} read `,
        h("strong", {}, `${fmt(seen)} ${noun}`), `, about ${fmt(seen / r.usable_examples, 2)} passes.`));
    };
    passes("preference", c.reward_model_batch_size, c.reward_model_train_steps, "pairs");
    passes("prompts", c.prompts_per_step, c.reinforcement_learning_train_steps, "prompts");
    return lines;
  }

  /** DPO: how often the pairs are read, at the form's batch size and epochs or steps. */
  function dpoGuidance() {
    const lines = [h("p", {}, h("strong", {}, "DPO"), ": each step compares the chosen and the rejected answer of ",
      "a batch of pairs and moves the model toward the chosen one, held near its starting point by beta. ",
      "Vertex advises at least 16 pairs; a few hundred varied ones work better than more epochs.")];
    const r = state.data.train && state.data.train.report;
    if (r && r.ok) {
      const [bsDefault] = fromSchema("batch_size", "8", "");
      const [epochsDefault] = fromSchema("epochs", "", "");
      const bs = Number(paramValue("batch_size") || bsDefault) || 8;
      const epochs = Number(paramValue("epochs") || epochsDefault) || 1;
      const perEpoch = Math.ceil(r.usable_examples / bs);
      const stepsInput = paramValue("train_steps");
      const steps = stepsInput ? Number(stepsInput) : perEpoch * epochs;
      lines.push(h("p", { id: "steps-estimate" }, `Your data: ${r.usable_examples} usable pairs → ${perEpoch} steps per epoch at batch size ${bs}; `,
        h("strong", {}, `${steps} steps`), stepsInput ? " (train steps)." : ` over ${epochs} epoch${epochs === 1 ? "" : "s"}.`));
    }
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

  function renderGuidance() {
    const rlhf = state.method === "rlhf", dpo = state.method === "dpo", emb = state.method === "embedding";
    taskLabel.hidden = task.hidden = rlhf || dpo || emb;
    clear(guidance, rlhf ? rlhfGuidance() : dpo ? dpoGuidance() : emb ? embeddingGuidance() : stepsGuidance());
    clear(evalNote, rlhf
      ? "With evaluation prompts, TuneLab compares the tuned model with its base on them under the reward model (mean reward, win rate)."
      : emb ? "Without test labels, 20% of the training queries are held out to compare the tuned encoder with its base."
      : dpo ? "With validation pairs, TuneLab measures reward accuracy and margins on them every few steps and stores the last evaluation on the model version."
      : "With a validation set, TuneLab evaluates every few steps, keeps the best checkpoint, stops early when eval loss stops improving, and compares the tuned model with its base.");
  }

  function update() {
    const problems = [];
    if (!state.supported[state.method]) problems.push("this server does not offer this method");
    if (!name.value.trim()) problems.push("give the tuned model a name");
    if (!base.value.trim()) problems.push("choose a base model");
    else if (state.baseError) problems.push("the base model was not found");
    if (state.busy) problems.push("checking the data");
    for (const [role, , noun, optional] of roles()) {
      const d = state.data[role];
      if (!d) { if (!optional) problems.push(`upload the ${noun}`); continue; }
      const joint = KIND[kindOf(role)].joint; // one report for all the embedding files: this file's errors
      if (d.report && !d.report.ok && (!joint || d.report.errors.some((e) => e.role === role))) problems.push(`errors in the ${noun}`);
      else if (!d.report && !state.busy) problems.push(`the ${noun} not checked yet`);
    }
    if (extra.value.trim()) { try { JSON.parse(extra.value); } catch (_) { problems.push("extra config is not valid JSON"); } }
    for (const [field, label, kind] of FIELDS[state.method]) {
      if (kind !== "json") continue;
      const raw = paramValue(field);
      if (!raw) { problems.push(`write the ${label.toLowerCase().replace(" (json)", "")}`); continue; }
      try { JSON.parse(raw); } catch (_) { problems.push(`the ${label.toLowerCase().replace(" (json)", "")} is not valid JSON`); }
    }
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
    state.method = methodSelect.value;
    // Each method's own default base model (an encoder for embeddings), unless one was typed.
    const defaultOf = (m) => (((state.schemas[m] || {}).properties || {}).base_model || {}).default;
    if (defaultOf(state.method) && (!base.value.trim() || base.value.trim() === (defaultOf(previous) || DEFAULT_BASE))) base.value = defaultOf(state.method);
    const [, label, about] = METHODS.find(([id]) => id === state.method);
    clear(methodNote, about, state.supported[state.method] ? "" : h("strong", {}, ` ${label} is not available on this server yet.`));
    clear(dataCards, roles().map(([role, title, , optional, kind], i) => {
      const block = blockOf(role, optional);
      block.show(i + 2, title, kind);
      if (state.data[role]) { state.data[role].report = null; clear(block.report); }
      return block;
    }));
    clear(paramsLegend, `${roles().length + 2} · Hyperparameters`);
    renderParams();
    revalidate();
    update();
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
        h("fieldset", { class: "card" }, paramsLegend, params,
          h("details", { id: "extra-config-details" }, h("summary", {}, "Extra config (JSON)"), extra,
            h("small", { class: "muted" }, "Merged into the config as given; for parameters this form does not show.")))),
      h("div", { class: "col-narrow" },
        h("div", { class: "card sticky" }, h("h2", {}, "Guidance"), taskLabel, task, guidance, evalNote,
          formError, h("div", { class: "actions" }, submitBtn), reason))));
  clear(main, pageHeader("Create tuned model"), form);

  name.addEventListener("input", update);
  base.addEventListener("change", () => { update(); revalidate(); });
  base.addEventListener("input", update);
  task.addEventListener("change", update);
  extra.addEventListener("input", update);
  methodSelect.addEventListener("change", setMethod);
  setMethod();

  api("/v1/models").then(({ data }) => clear(datalist, data.filter((m) => m.owned_by !== "user").map((m) => h("option", { value: m.id })))).catch(() => {});
  // Which methods this server takes, each with its config's JSON schema (defaults, hints).
  api("/v1/tuningMethods").then(({ tuning_methods: methods }) => {
    for (const m of methods) state.schemas[m.method] = m.config_schema;
    for (const option of methodSelect.options) {
      const method = option.value;
      state.supported[method] = method in state.schemas;
      option.textContent = METHODS.find(([id]) => id === method)[1] + (state.supported[method] ? "" : " (not available on this server)");
      option.disabled = !state.supported[method];
      option.dataset.supported = String(state.supported[method]);
    }
    if (!state.closed) setMethod();
    if (fromJob && !state.closed) return cloneJob(fromJob);
  }).catch((err) => clear(formError, errorBox(err)));

  /** "Tune again with these settings": the job's method, base, datasets (by id) and config. */
  async function cloneJob(jobId) {
    const job = await api(`/v1/tuningJobs/${encodeURIComponent(jobId)}`);
    if (state.closed) return;
    methodSelect.value = job.method;
    setMethod();
    name.value = job.display_name;
    base.value = job.config.base_model || job.base_model;
    const shown = new Set(FIELDS[state.method].map(([f]) => f));
    const leftover = {};
    for (const [field, value] of Object.entries(job.config)) {
      if (field === "method" || field === "base_model") continue;
      const input = document.getElementById(`param-${field}`);
      if (shown.has(field) && input) {
        input.value = value === null ? "" : typeof value === "object" ? JSON.stringify(value, null, 2) : String(value);
        input.dataset.touched = "1";
      } else {
        const prop = ((state.schemas[state.method] || {}).properties || {})[field];
        if (!prop || JSON.stringify(prop.default) !== JSON.stringify(value)) leftover[field] = value;
      }
    }
    extra.value = Object.keys(leftover).length ? JSON.stringify(leftover) : "";
    if (extra.value) extra.closest("details").open = true;
    clear(methodNote, methodNote.textContent, " ", h("strong", { id: "cloned-from" }, `Settings of job ${job.id}.`));
    for (const [jobRole, id] of Object.entries(job.datasets)) {
      // DPO takes its pairs as "preference" or "train"; the form names them "train".
      const role = state.method === "dpo" && jobRole === "preference" ? "train" : jobRole;
      const block = blocks[role];
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
