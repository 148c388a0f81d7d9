// Create a tuned model: method, name, base model, datasets with their validation report shown
// before anything is submitted, hyperparameters with Vertex's defaults and guidance.
import { api } from "./api.js";
import { h, clear, fmt, errorBox, toast } from "./dom.js";
import { pageHeader } from "./widgets.js";

const DEFAULT_BASE = "smollm2-135m-instruct";
const METHODS = [
  ["sft", "Supervised tuning", "Input/output examples (Vertex text, Gemini or OpenAI chat JSONL). The model learns to answer like the outputs."],
  ["rlhf", "RLHF", "Preference pairs (prompt, chosen, rejected): a reward model, then reinforcement learning with a KL penalty."],
  ["dpo", "DPO", "Preference pairs (prompt, chosen, rejected), optimised directly without a reward model."],
];

// [name, label, kind, default (SFTConfig's; "" = the server's default), hint]
const COMMON_STEPS = [
  ["epochs", "Epochs", "int", "", "Passes over the training data (server default 3). Give epochs or steps, not both."],
  ["train_steps", "Train steps", "int", "", "Optimizer steps; an alternative to epochs."],
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
  ],
  dpo: [
    ...COMMON_STEPS,
    ["beta", "Beta", "float", "", "How far the tuned model may move from the base (server default)."],
    ["learning_rate_multiplier", "Learning rate multiplier", "float", "", ""],
    ["adapter_size", "Adapter size (LoRA rank)", "select:,1,2,4,8,16", "", ""],
    ["batch_size", "Batch size", "int", "", "Preference pairs per step."],
    ["prompt_sequence_length", "Prompt sequence length", "int", "", ""],
    ["target_sequence_length", "Target sequence length", "int", "", ""],
    ["seed", "Seed", "int", "", ""],
  ],
  rlhf: [
    ["reward_model_train_steps", "Reward model train steps", "int", "", ""],
    ["reinforcement_learning_train_steps", "Reinforcement learning train steps", "int", "", ""],
    ["kl_coeff", "KL coefficient", "float", "", "Penalty for moving away from the base model."],
    ["prompt_sequence_length", "Prompt sequence length", "int", "", ""],
    ["target_sequence_length", "Target sequence length", "int", "", ""],
  ],
};

const TASKS = {
  classification: ["Classification", "100+ examples", 100, 500],
  summarization: ["Summarization", "100-500+ examples", 200, 1000],
  extractive_qa: ["Extractive question answering", "100+ examples", 100, 500],
};

/**
 * Preference pairs (DPO) checked in the browser, line by line, as tunelab.data.preference does:
 * the server's validation report reads supervised data only. Token counts come from the job's
 * validate step, which checks the file again with the base model's tokenizer.
 */
export function checkPreferenceText(text) {
  const errors = [];
  let lines = 0, examples = 0;
  text.split("\n").forEach((raw, i) => {
    if (!raw.trim()) return;
    lines += 1;
    const line = i + 1;
    let obj;
    try { obj = JSON.parse(raw); } catch (e) { errors.push({ line, code: "invalid_json", field: null, message: `invalid JSON: ${e.message}` }); return; }
    if (!obj || typeof obj !== "object" || Array.isArray(obj)) { errors.push({ line, code: "not_an_object", field: null, message: "each line must be a JSON object" }); return; }
    const before = errors.length;
    const hasPrompt = typeof obj.input_text === "string" || Array.isArray(obj.messages);
    if (!hasPrompt) errors.push({ line, code: "missing_field", field: "input_text", message: "give input_text or messages (the prompt)" });
    for (const f of ["candidate_0", "candidate_1"]) {
      if (!(f in obj)) errors.push({ line, code: "missing_field", field: f, message: "missing required field" });
      else if (typeof obj[f] !== "string" || !obj[f].trim()) errors.push({ line, code: "wrong_type", field: f, message: "must be a non-empty string" });
    }
    if (!("choice" in obj)) errors.push({ line, code: "missing_field", field: "choice", message: "missing required field" });
    else if (obj.choice !== 0 && obj.choice !== 1) errors.push({ line, code: "invalid_choice", field: "choice", message: `must be 0 or 1 (the preferred candidate), got ${JSON.stringify(obj.choice)}` });
    if (typeof obj.candidate_0 === "string" && obj.candidate_0.trim() === String(obj.candidate_1 ?? "").trim())
      errors.push({ line, code: "identical_candidates", field: "candidate_1", message: "the two candidates are the same text" });
    if (errors.length === before) examples += 1;
  });
  return {
    lines, examples, usable_examples: examples, error_count: errors.length, errors: errors.slice(0, 1000), ok: errors.length === 0 && examples > 0,
    formats: { preference: examples }, warnings: ["Checked in the browser: token statistics are computed by the job's validate step."],
    dropped: {}, truncated: 0, total_tokens: null, trained_tokens: null, billable_tokens: null, min_tokens: null,
  };
}

function reportView(report) {
  const bad = report.error_count > 0;
  return h("div", { class: `report ${bad ? "has-errors" : "ok"}`, dataset: { errors: String(report.error_count) } },
    bad
      ? h("div", { class: "alert bad" }, h("strong", {}, `${report.error_count} error${report.error_count === 1 ? "" : "s"}`),
          ": fix these lines and upload the file again. Nothing is submitted while the data has errors.")
      : h("div", { class: "alert ok" }, h("strong", {}, "Valid"), `: ${fmt(report.usable_examples)} usable examples.`),
    bad ? h("table", { class: "grid errors" },
      h("thead", {}, h("tr", {}, h("th", {}, "Line"), h("th", {}, "Field"), h("th", {}, "Problem"))),
      h("tbody", {}, report.errors.map((e) => h("tr", { dataset: { line: String(e.line) } },
        h("td", {}, `line ${e.line}`), h("td", {}, e.field || "—"), h("td", {}, `${e.message} (${e.code})`))))) : null,
    (report.warnings || []).map((w) => h("div", { class: "alert warn" }, w)),
    h("table", { class: "kv stats" }, h("tbody", {}, [
      ["Lines", report.lines], ["Examples", report.examples], ["Usable examples", report.usable_examples],
      ["Formats", Object.entries(report.formats || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "—"],
      ["Total tokens", report.total_tokens], ["Trained tokens (model turns)", report.trained_tokens],
      ["Billable tokens", report.billable_tokens],
      ["Tokens per example", report.min_tokens == null ? "—" : `min ${report.min_tokens} · mean ${fmt(report.mean_tokens, 3)} · max ${report.max_tokens}`],
      ["Truncated", report.truncated], ["Dropped", Object.entries(report.dropped || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "0"],
    ].map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "number" ? fmt(v) : v))))));
}

export function renderCreate(main) {
  const state = { method: "sft", supported: { sft: true }, data: { train: null, validation: null }, busy: 0 };
  const submitBtn = h("button", { id: "submit-job", type: "submit", disabled: true }, "Start tuning");
  const reason = h("span", { class: "muted small", id: "submit-reason" });
  const formError = h("div", { id: "form-error" });
  const name = h("input", { id: "display-name", required: true, maxlength: "128", placeholder: "e.g. ticket-router" });
  const base = h("input", { id: "base-model", required: true, value: DEFAULT_BASE, list: "base-models", maxlength: "512" });
  const datalist = h("datalist", { id: "base-models" });
  const methodSelect = h("select", { id: "method" }, METHODS.map(([id, label]) => h("option", { value: id }, label)));
  const methodNote = h("p", { class: "muted small", id: "method-note" });
  const params = h("div", { class: "params", id: "hyperparameters" });
  const guidance = h("div", { class: "guidance", id: "guidance" });
  const task = h("select", { id: "task" }, Object.entries(TASKS).map(([k, [label]]) => h("option", { value: k }, label)));
  const extra = h("textarea", { id: "extra-config", rows: "2", placeholder: '{"kl_coeff": 0.1}' });

  function datasetBlock(role, title, optional) {
    const file = h("input", { type: "file", id: `${role}-file`, accept: ".jsonl,.json,application/jsonl,text/plain" });
    const idInput = h("input", { id: `${role}-dataset-id`, placeholder: "ds-…", maxlength: "40" });
    const report = h("div", { id: `${role}-report` });
    const info = h("div", { class: "muted small", id: `${role}-dataset` });
    file.addEventListener("change", async () => {
      if (!file.files.length) return;
      const form = new FormData();
      form.append("file", file.files[0]);
      await withBusy(report, async () => {
        const ds = await api("/v1/datasets", { method: "POST", body: form });
        state.data[role] = { id: ds.id, filename: ds.filename, report: null, file: file.files[0] };
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
    const block = h("fieldset", { class: "card" }, h("legend", {}, title),
      h("label", { for: `${role}-file` }, "Upload a JSONL file"), file,
      h("div", { class: "or" }, h("label", { for: `${role}-dataset-id` }, "or a dataset already uploaded"), h("div", { class: "param-row" }, idInput, useId, clearBtn)),
      h("p", { class: "hint" }, "The server reads only uploaded files: it cannot open a path on your machine, and reading paths on the server would expose its files. ",
        "Upload the file here, or with ", h("code", {}, "curl -F file=@train.jsonl …/v1/datasets"), " and paste its id."),
      info, report);
    block.report = report;
    block.refresh = () => {
      const d = state.data[role];
      clear(info, d ? [`Dataset `, h("code", {}, d.id), d.filename ? ` (${d.filename})` : ""] : "");
      if (d && d.report) clear(report, reportView(d.report));
    };
    return block;
  }

  async function withBusy(slot, fn) {
    state.busy += 1; update();
    clear(slot, h("p", { class: "muted" }, "Checking the data…"));
    try { await fn(); } catch (err) { clear(slot, errorBox(err)); } finally { state.busy -= 1; update(); }
  }

  async function validate(role) {
    const d = state.data[role];
    if (!d) return;
    if (state.method !== "sft") {
      d.report = d.file ? checkPreferenceText(await d.file.text()) : null;
      if (!d.file) clear(blocks[role].report, h("p", { class: "muted" }, "Checked by the job's validate step when it starts (upload the file here to see its errors now)."));
      blocks[role].refresh();
      return;
    }
    const q = new URLSearchParams({ base_model: base.value.trim() || DEFAULT_BASE });
    const seq = document.getElementById("param-max_seq_length");
    if (seq && seq.value) q.set("max_seq_length", seq.value);
    const epochs = document.getElementById("param-epochs");
    if (epochs && epochs.value) q.set("epochs", epochs.value);
    d.report = await api(`/v1/datasets/${d.id}/validation?${q}`);
    blocks[role].refresh();
  }

  const blocks = { train: datasetBlock("train", "2 · Training data", false), validation: datasetBlock("validation", "3 · Validation data (optional)", true) };

  function renderParams() {
    clear(params, FIELDS[state.method].map(([field, label, kind, value, hint]) => {
      const input = kind.startsWith("select:")
        ? h("select", { id: `param-${field}` }, kind.slice(7).split(",").map((o) => h("option", { value: o, selected: o === value }, o || "server default")))
        : h("input", { id: `param-${field}`, type: "number", step: kind === "float" ? "any" : "1", value, placeholder: value ? "" : "server default" });
      input.addEventListener("input", update);
      if (["max_seq_length", "epochs"].includes(field)) input.addEventListener("change", revalidate);
      return h("div", { class: "param" }, h("label", { for: `param-${field}` }, label), input, hint ? h("small", { class: "muted" }, hint) : null);
    }));
  }

  function config() {
    const out = { base_model: base.value.trim() };
    for (const [field, , kind] of FIELDS[state.method]) {
      const raw = document.getElementById(`param-${field}`).value.trim();
      if (raw === "") { if (field === "early_stopping_patience") out[field] = null; continue; }
      out[field] = kind === "float" ? Number(raw) : Number.parseInt(raw, 10);
    }
    if (extra.value.trim()) Object.assign(out, JSON.parse(extra.value));
    return out;
  }

  function renderGuidance() {
    const [label, examples, lo, hi] = TASKS[task.value];
    const r = state.data.train && state.data.train.report;
    const lines = [h("p", {}, h("strong", {}, label), `: Vertex recommends ${examples} and ${lo}-${hi} training steps. `,
      "Every task needs at least 16 examples; 100 to 500 are recommended. More, varied examples beat more epochs.")];
    if (r && r.ok) {
      const bs = Number(document.getElementById("param-batch_size")?.value) || 8;
      const stepsInput = document.getElementById("param-train_steps")?.value;
      const epochs = Number(document.getElementById("param-epochs")?.value) || 3;
      const perEpoch = Math.ceil(r.usable_examples / bs);
      const steps = stepsInput ? Number(stepsInput) : perEpoch * epochs;
      lines.push(h("p", { id: "steps-estimate" }, `Your data: ${r.usable_examples} usable examples → ${perEpoch} steps per epoch at batch size ${bs}; `,
        h("strong", {}, `${steps} steps`), stepsInput ? " (train steps)." : ` over ${epochs} epochs.`));
      if (r.usable_examples < 16) lines.push(h("p", { class: "alert warn" }, "Fewer than 16 examples: Vertex would refuse this dataset."));
      if (steps < lo || steps > hi) lines.push(h("p", { class: "alert warn" }, `${steps} steps is outside the recommended ${lo}-${hi} for this task.`));
    }
    clear(guidance, lines);
  }

  function update() {
    const problems = [];
    if (!state.supported[state.method]) problems.push("this server does not offer this method");
    if (!name.value.trim()) problems.push("give the tuned model a name");
    if (!base.value.trim()) problems.push("choose a base model");
    const train = state.data.train, val = state.data.validation;
    if (state.busy) problems.push("checking the data");
    else if (!train) problems.push("upload training data");
    else if (!train.report && (state.method === "sft" || train.file)) problems.push("training data not checked yet");
    else if (train.report && !train.report.ok) problems.push("the training data has errors");
    if (val && !state.busy && val.report && !val.report.ok) problems.push("the validation data has errors");
    if (val && !val.report && !state.busy && (state.method === "sft" || val.file)) problems.push("validation data not checked yet");
    if (extra.value.trim()) { try { JSON.parse(extra.value); } catch (_) { problems.push("extra config is not valid JSON"); } }
    submitBtn.disabled = problems.length > 0;
    reason.textContent = problems.length ? `Cannot start yet: ${problems.join("; ")}.` : "Ready.";
    renderGuidance();
  }

  let revalidateTimer = null;
  function revalidate() {
    clearTimeout(revalidateTimer);
    revalidateTimer = setTimeout(() => {
      for (const role of ["train", "validation"]) if (state.data[role] && !state.closed) withBusy(blocks[role].report, () => validate(role));
    }, 400);
  }

  function setMethod() {
    state.method = methodSelect.value;
    const [, label, about] = METHODS.find(([id]) => id === state.method);
    const why = state.method === "rlhf" && state.unsupportedWhy ? ` ${state.unsupportedWhy}` : ` ${label} is not available on this server yet.`;
    clear(methodNote, about, state.supported[state.method] ? "" : h("strong", {}, why));
    renderParams();
    for (const role of ["train", "validation"]) if (state.data[role]) { state.data[role].report = null; clear(blocks[role].report); }
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
        train_dataset: state.data.train.id,
        config: config(),
        idempotency_key: `studio-${crypto.getRandomValues(new Uint32Array(4)).join("-")}`,
      };
      if (state.data.validation) body.validation_dataset = state.data.validation.id;
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
          h("label", { for: "base-model" }, "Base model"), base, datalist,
          h("small", { class: "muted" }, "A catalog name, a model folder on the server, or a Hugging Face hub id.")),
        blocks.train, blocks.validation,
        h("fieldset", { class: "card" }, h("legend", {}, "4 · Hyperparameters"), params,
          h("details", {}, h("summary", {}, "Extra config (JSON)"), extra,
            h("small", { class: "muted" }, "Merged into the config as given; for parameters this form does not show.")))),
      h("div", { class: "col-narrow" },
        h("div", { class: "card sticky" }, h("h2", {}, "Guidance"), h("label", { for: "task" }, "Task"), task, guidance,
          h("p", { class: "muted small" }, "With a validation set, TuneLab evaluates every few steps, keeps the best checkpoint, stops early when eval loss stops improving, and compares the tuned model with its base."),
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
  // Which methods does this server take? Ask with a dataset id that cannot exist: an unknown
  // method is refused with 422 on "method", a known one with 404 on the dataset (or 422 on its
  // config): either way no job is created.
  for (const [method] of METHODS.slice(1)) {
    api("/v1/tuningJobs", { method: "POST", json: { method, tuned_model_display_name: "studio-probe", train_dataset: "ds-studio-probe-none" } })
      .catch((err) => err)
      .then((err) => {
        state.supported[method] = !(err && err.status === 422 && err.details && err.details.field === "method");
        if (method === "rlhf" && state.supported.rlhf) {
          state.supported.rlhf = false; // its preference + prompts datasets have no field in POST /v1/tuningJobs yet
          state.unsupportedWhy = "RLHF needs a preference dataset and a prompts dataset, which POST /v1/tuningJobs does not take yet: use `tunelab tune rlhf`.";
        }
        const option = [...methodSelect.options].find((o) => o.value === method);
        option.textContent = METHODS.find(([id]) => id === method)[1] + (state.supported[method] ? "" : " (not available on this server)");
        option.disabled = !state.supported[method];
        option.dataset.supported = String(state.supported[method]);
        if (!state.supported[method]) option.title = state.unsupportedWhy || "not available on this server";
        if (state.method === method) setMethod();
      });
  }
  return () => { state.closed = true; clearTimeout(revalidateTimer); };
}
