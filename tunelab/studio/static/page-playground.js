// Prompt playground: pick a base or tuned model, set the system instruction and sampling
// parameters, stream the answer, compare with the base model side by side, and view the code.
import { api, can, streamChat } from "./api.js";
import { h, clear, errorBox, toast, copyText } from "./dom.js";
import { pageHeader } from "./widgets.js";
import { SNIPPETS } from "./snippets.js";

const PARAMS = [
  // id, label, min, max, step, default, hint
  ["temperature", "Temperature", 0, 2, 0.05, 0.2, "0 is greedy: the same prompt gives the same answer."],
  ["top_p", "Top-p", 0.05, 1, 0.05, 0.95, "Sample from the smallest set of tokens whose probability reaches p."],
  ["top_k", "Top-k", 0, 100, 1, 40, "Sample from the k most likely tokens; 0 disables."],
  ["max_tokens", "Max output tokens", 1, 2048, 1, 256, "The answer stops after this many tokens."],
];

function paramControl([id, label, min, max, step, value, hint], onChange) {
  const range = h("input", { type: "range", min, max, step, value: String(value), "aria-label": label });
  const number = h("input", { type: "number", id: `param-${id}`, min, max, step, value: String(value) });
  range.addEventListener("input", () => { number.value = range.value; onChange(); });
  number.addEventListener("input", () => { range.value = number.value; onChange(); });
  return h("div", { class: "param" }, h("label", { for: `param-${id}` }, label), h("div", { class: "param-row" }, range, number),
    h("small", { class: "muted" }, hint));
}

function outputPane(id, title) {
  const text = h("pre", { class: "output-text", id: `${id}-text` });
  const status = h("span", { class: "muted small", id: `${id}-status` });
  const pane = h("div", { class: "card output", id }, h("div", { class: "output-head" }, h("h3", {}, title), status), text);
  return { pane, text, status };
}

export function renderPlayground(main, preselect) {
  const select = h("select", { id: "model-select" });
  const system = h("textarea", { id: "system", rows: "3", placeholder: "Optional: how the model should behave (a system turn, as in training)." });
  const prompt = h("textarea", { id: "prompt", rows: "6", placeholder: "Type a prompt…" });
  const compare = h("input", { type: "checkbox", id: "compare" });
  const compareLabel = h("label", { class: "inline", for: "compare" }, compare, " Compare with the base model, side by side");
  const send = h("button", { id: "send", type: "submit" }, "Send");
  const stop = h("button", { id: "stop", type: "button", class: "ghost", disabled: true }, "Stop");
  const outputs = h("div", { class: "outputs", id: "outputs" });
  const codePanel = h("section", { class: "card code-panel", id: "code-panel", hidden: true });
  const viewCode = h("button", { id: "view-code", type: "button", class: "ghost" }, "View code");
  const status = h("div", {});
  let tunedBase = {}; // tuned model name -> base model
  let controller = null;

  const values = () => ({
    server: location.origin,
    model: select.value,
    isTuned: select.value in tunedBase,
    baseModel: tunedBase[select.value] || select.value,
    system: system.value.trim(),
    prompt: prompt.value,
    temperature: Number(document.getElementById("param-temperature").value),
    topP: Number(document.getElementById("param-top_p").value),
    topK: Number(document.getElementById("param-top_k").value),
    maxTokens: Number(document.getElementById("param-max_tokens").value),
  });

  function renderCode() {
    if (codePanel.hidden) return;
    const p = values();
    const tabs = h("div", { class: "tabs" });
    const bodies = h("div", {});
    const show = (key) => {
      for (const b of tabs.children) b.classList.toggle("active", b.dataset.tab === key);
      for (const s of bodies.children) s.hidden = s.dataset.snippet !== key;
      codePanel.dataset.tab = key;
    };
    for (const [key, label, make] of SNIPPETS) {
      const text = make(p);
      tabs.append(h("button", { type: "button", class: "tab", dataset: { tab: key }, onclick: () => show(key) }, label));
      bodies.append(h("div", { class: "snippet", dataset: { snippet: key } },
        h("button", { type: "button", class: "copy", id: `copy-${key}`, onclick: async () => {
          const ok = await copyText(text);
          toast(ok ? `${label} code copied` : "Copy failed: select the text and copy it by hand", ok ? "info" : "bad");
        } }, "Copy"),
        h("pre", { id: `snippet-${key}` }, text)));
    }
    clear(codePanel, h("div", { class: "output-head" }, h("h2", {}, "Code for this prompt"),
      h("span", { class: "muted small" }, "Set ", h("code", {}, "TUNELAB_API_KEY"), " to your API key before running it.")), tabs, bodies);
    show(codePanel.dataset.tab || "python");
  }

  const form = h("form", { class: "playground", onsubmit: (e) => { e.preventDefault(); run(); } },
    h("div", { class: "card controls" },
      h("label", { for: "model-select" }, "Model"), select,
      h("div", { class: "compare-row" }, compareLabel),
      h("label", { for: "system" }, "System instruction"), system,
      PARAMS.map((p) => paramControl(p, renderCode))),
    h("div", { class: "work" },
      h("div", { class: "card" }, h("label", { for: "prompt" }, "Prompt"), prompt,
        h("div", { class: "actions" }, send, stop, viewCode)),
      outputs, codePanel));
  clear(main, pageHeader("Prompt playground"), status, form);

  for (const el of [system, prompt, select]) el.addEventListener("input", renderCode);
  select.addEventListener("change", () => { compare.disabled = !tunedBase[select.value]; renderCode(); });
  viewCode.addEventListener("click", () => { codePanel.hidden = !codePanel.hidden; viewCode.textContent = codePanel.hidden ? "View code" : "Hide code"; renderCode(); });
  stop.addEventListener("click", () => controller && controller.abort());
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); } });

  // The registry (which base each tuned model has) needs the tune scope; an inference key only
  // knows the served names, so its tuned models come from /v1/models, without base comparison.
  async function tunedModels() {
    if (can("tune")) return api("/v1/tunedModels");
    const { data } = await api("/v1/models");
    return { tuned_models: data.filter((m) => m.owned_by === "user").map((m) => ({ name: m.id, method: "", base_model: null })) };
  }

  async function load() {
    try {
      const [{ data }, { tuned_models: tuned }] = await Promise.all([api("/v1/models"), tunedModels()]);
      // Text models only: embedding models (and the bases they were tuned from) do not chat.
      const embedding = new Set(tuned.filter((m) => m.method === "embedding").flatMap((m) => [m.name, m.base_model]));
      tunedBase = Object.fromEntries(tuned.filter((m) => m.method !== "embedding").map((m) => [m.name, m.base_model]));
      const bases = data.filter((m) => !(m.id in tunedBase) && !embedding.has(m.id)).map((m) => m.id);
      for (const b of Object.values(tunedBase)) if (b && !bases.includes(b)) bases.push(b);
      clear(select,
        h("optgroup", { label: "Tuned models" }, Object.keys(tunedBase).map((n) => h("option", { value: n }, n))),
        h("optgroup", { label: "Base models" }, bases.map((b) => h("option", { value: b }, b))));
      if (preselect && [...select.options].some((o) => o.value === preselect)) select.value = preselect;
      compare.disabled = !tunedBase[select.value];
      renderCode();
    } catch (err) {
      clear(status, errorBox(err));
    }
  }

  async function streamInto(pane, model, p, signal) {
    const started = performance.now();
    let pieces = 0;
    pane.pane.dataset.done = "false";
    pane.status.textContent = "streaming…";
    try {
      const finish = await streamChat({
        model,
        messages: [...(p.system ? [{ role: "system", content: p.system }] : []), { role: "user", content: p.prompt }],
        temperature: p.temperature, top_p: p.topP, top_k: p.topK, max_tokens: p.maxTokens,
      }, (text) => { pane.text.textContent += text; pieces += 1; }, signal);
      pane.status.textContent = `${finish || "done"} · ${pieces} chunks · ${((performance.now() - started) / 1000).toFixed(1)} s`;
    } catch (err) {
      pane.status.textContent = err.name === "AbortError" ? "stopped" : "";
      if (err.name !== "AbortError") pane.pane.append(errorBox(err));
    } finally {
      pane.pane.dataset.done = "true";
    }
  }

  async function run() {
    const p = values();
    if (!p.model) return toast("Pick a model first", "bad");
    if (!p.prompt.trim()) return toast("Type a prompt first", "bad");
    controller = new AbortController();
    send.disabled = true; stop.disabled = false;
    const panes = [outputPane("output-main", p.model)];
    const both = compare.checked && p.isTuned;
    if (both) panes.push(outputPane("output-base", `${p.baseModel} (base)`));
    clear(outputs, panes.map((x) => x.pane));
    outputs.classList.toggle("side-by-side", both);
    await Promise.all([streamInto(panes[0], p.model, p, controller.signal), both ? streamInto(panes[1], p.baseModel, p, controller.signal) : null]);
    send.disabled = false; stop.disabled = true; controller = null;
  }

  load();
  return () => controller && controller.abort();
}
