// Prompt playground for comparing: one or two sides, each with its own model (a base, or a tuned
// model at a version or alias), its own system instruction, sampling parameters and
// conversation. One prompt box feeds both sides; every answer shows its token counts and
// latency, and each side's View code is that side's exact request.
import { api, can, streamChat } from "./api.js";
import { h, clear, errorBox, toast, copyText } from "./dom.js";
import { pageHeader } from "./widgets.js";
import { SNIPPETS, requestBody } from "./snippets.js";

const PARAMS = [
  // id, label, min, max, step, default, hint
  ["temperature", "Temperature", 0, 2, 0.05, 0.2, "0 is greedy: the same prompt gives the same answer."],
  ["top_p", "Top-p", 0.05, 1, 0.05, 0.95, "Sample from the smallest set of tokens whose probability reaches p."],
  ["top_k", "Top-k", 0, 100, 1, 40, "Sample from the k most likely tokens; 0 disables."],
  ["max_tokens", "Max output tokens", 1, 2048, 1, 256, "The answer stops after this many tokens."],
];

const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

function paramControl(side, [id, label, min, max, step, value, hint], onChange) {
  const inputId = `param-${side}-${id}`;
  const range = h("input", { type: "range", min, max, step, value: String(value), "aria-label": `${label} (side ${side.toUpperCase()})` });
  const number = h("input", { type: "number", id: inputId, min, max, step, value: String(value), dataset: { param: id } });
  range.addEventListener("input", () => { number.value = range.value; onChange(); });
  number.addEventListener("input", () => { range.value = number.value; onChange(); });
  return h("div", { class: "param" }, h("label", { for: inputId }, label), h("div", { class: "param-row" }, range, number),
    h("small", { class: "muted" }, hint));
}

/** The version picker's options: the default (what the bare name serves), the user's aliases,
 * then every version. Only deployed versions are served, so the others are shown, disabled,
 * with the reason. */
function versionOptions(versions) {
  const served = (v) => (v.deployment ? `${v.deployment.traffic_percentage}% traffic` : "not deployed");
  const byAlias = [];
  for (const v of versions) for (const alias of v.aliases || []) byAlias.push([alias, v]);
  const fallback = versions[versions.length - 1];
  const [, def] = byAlias.find(([alias]) => alias === "default") || ["default", fallback];
  const option = (value, label, v) => h("option", { value, disabled: !v.deployment, dataset: { version: String(v.version) } },
    `${label} · ${served(v)}`);
  const aliases = byAlias.filter(([alias]) => alias !== "default").sort(([x], [y]) => x.localeCompare(y));
  const head = h("option", { value: "", dataset: { version: String(def.version) } }, `default (v${def.version}) · ${served(def)}`);
  return [
    head,
    aliases.length ? h("optgroup", { label: "Aliases" }, aliases.map(([alias, v]) => option(alias, `${alias} (v${v.version})`, v))) : null,
    h("optgroup", { label: "Versions" }, [...versions].reverse().map((v) => option(String(v.version), `v${v.version}`, v))),
  ].filter(Boolean);
}

/** One side of the comparison: its pickers, system instruction, parameters, conversation and
 * code panel. */
function makeSide(id, env) {
  const model = h("select", { id: `model-${id}`, "aria-label": `Model, side ${id.toUpperCase()}` });
  const version = h("select", { id: `version-${id}`, "aria-label": `Version, side ${id.toUpperCase()}` });
  const system = h("textarea", { id: `system-${id}`, rows: "2", placeholder: "Optional: how this side's model should behave (a system turn, as in training)." });
  const chat = h("div", { class: "chat", id: `chat-${id}`, "aria-live": "polite" });
  const code = h("section", { class: "code-panel", id: `code-${id}`, hidden: true });
  const viewCode = h("button", { id: `view-code-${id}`, type: "button", class: "ghost" }, "View code");
  const params = h("details", { class: "side-params", open: true },
    h("summary", {}, "Parameters"), PARAMS.map((p) => paramControl(id, p, () => side.renderCode())));
  const card = h("section", { class: "card side", id: `side-${id}`, dataset: { side: id } },
    h("div", { class: "output-head" }, h("h3", {}, `Side ${id.toUpperCase()}`), viewCode),
    h("div", { class: "pickers" },
      h("label", { for: `model-${id}` }, "Model", model),
      h("label", { for: `version-${id}` }, "Version", version)),
    h("label", { for: `system-${id}` }, "System instruction"), system,
    params, chat, code);

  const side = {
    id, card, model, version, chat, system,
    history: [], // [{role, content}]: the turns answered so far, sent again with every prompt
    lastRequest: null, // the body of the request that made the last answer
    modelRef() { return model.value && version.value ? `${model.value}@${version.value}` : model.value; },
    param(name) { return Number(document.getElementById(`param-${id}-${name}`).value); },
    /** The request this side sends for `prompt`: the system turn, its history, the prompt. */
    request(prompt) {
      const instruction = system.value.trim();
      return {
        model: side.modelRef(),
        messages: [...(instruction ? [{ role: "system", content: instruction }] : []), ...side.history, { role: "user", content: prompt }],
        temperature: side.param("temperature"), top_p: side.param("top_p"), top_k: side.param("top_k"), max_tokens: side.param("max_tokens"),
      };
    },
    async loadVersions() {
      const name = model.value;
      const tuned = name in env.tunedBase;
      version.disabled = !tuned;
      if (!tuned) return clear(version, h("option", { value: "" }, "—"));
      clear(version, h("option", { value: "" }, "default"));
      // The registry's versions need the tune scope; an inference key serves the default only.
      if (!can("tune")) return;
      try {
        const { versions } = await api(`/v1/tunedModels/${encodeURIComponent(name)}`);
        if (model.value !== name) return; // picked another model meanwhile
        clear(version, ...versionOptions(versions));
      } catch (err) {
        env.showError(err);
      }
    },
    renderCode() {
      if (code.hidden) return;
      // The code for the last answer, unless a new prompt is being typed: then for that one.
      const typed = env.prompt();
      const body = typed.trim() || !side.lastRequest ? side.request(typed) : side.lastRequest;
      const name = body.model.split("@")[0];
      const p = {
        server: location.origin, model: body.model, isTuned: name in env.tunedBase, baseModel: env.tunedBase[name] || body.model,
        messages: body.messages, temperature: body.temperature, topP: body.top_p, topK: body.top_k, maxTokens: body.max_tokens,
      };
      const tabs = h("div", { class: "tabs" });
      const bodies = h("div", {});
      const show = (key) => {
        for (const b of tabs.children) b.classList.toggle("active", b.dataset.tab === key);
        for (const s of bodies.children) s.hidden = s.dataset.snippet !== key;
        code.dataset.tab = key;
      };
      for (const [key, label, make] of SNIPPETS) {
        const text = make(p);
        tabs.append(h("button", { type: "button", class: "tab", dataset: { tab: key }, onclick: () => show(key) }, label));
        bodies.append(h("div", { class: "snippet", dataset: { snippet: key } },
          h("button", { type: "button", class: "copy", id: `copy-${id}-${key}`, onclick: async () => {
            const ok = await copyText(text);
            toast(ok ? `${label} code copied` : "Copy failed: select the text and copy it by hand", ok ? "info" : "bad");
          } }, "Copy"),
          h("pre", { id: `snippet-${id}-${key}` }, text)));
      }
      code.dataset.request = JSON.stringify(requestBody(p));
      clear(code, h("div", { class: "output-head" },
        h("h4", {}, body === side.lastRequest ? "Code for the last answer" : "Code for the next prompt"),
        h("span", { class: "muted small" }, "Set ", h("code", {}, "TUNELAB_API_KEY"), " first.")), tabs, bodies);
      show(code.dataset.tab || "python");
    },
    reset() { side.history = []; side.lastRequest = null; clear(chat); side.renderCode(); },
    /** Send `prompt` with this side's settings and stream the answer into a new turn. */
    async send(prompt, signal) {
      const body = side.request(prompt);
      const text = h("pre", { class: "output-text" });
      const stats = h("div", { class: "stats muted small" }, "streaming…");
      const turn = h("div", { class: "turn assistant", dataset: { done: "false" } }, h("div", { class: "who muted small" }, body.model), text, stats);
      chat.append(h("div", { class: "turn user" }, h("pre", { class: "output-text" }, prompt)), turn);
      const started = performance.now();
      let first = null;
      try {
        const { finish, usage } = await streamChat(body, (piece) => {
          if (first === null) first = performance.now() - started;
          text.textContent += piece;
        }, signal);
        const total = performance.now() - started;
        side.history = [...side.history, { role: "user", content: prompt }, { role: "assistant", content: text.textContent }];
        side.lastRequest = body;
        Object.assign(turn.dataset, {
          promptTokens: usage ? usage.prompt_tokens : "", completionTokens: usage ? usage.completion_tokens : "",
          firstTokenMs: first === null ? "" : Math.round(first), totalMs: Math.round(total),
        });
        clear(stats,
          usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens · ` : "",
          `first token ${first === null ? "—" : seconds(first)} · total ${seconds(total)} · ${finish || "done"}`);
      } catch (err) {
        // A stopped or failed answer stays on screen but out of the history: the next prompt
        // is sent as if this turn had not happened.
        turn.classList.add("dropped");
        clear(stats, err.name === "AbortError" ? "stopped · not kept in the conversation" : errorBox(err));
      } finally {
        turn.dataset.done = "true";
        side.renderCode();
      }
    },
  };
  viewCode.addEventListener("click", () => {
    code.hidden = !code.hidden;
    viewCode.textContent = code.hidden ? "View code" : "Hide code";
    side.renderCode();
  });
  model.addEventListener("change", async () => { await side.loadVersions(); side.renderCode(); });
  system.addEventListener("input", () => side.renderCode());
  version.addEventListener("change", () => side.renderCode());
  return side;
}

export function renderPlayground(main, preselect) {
  const prompt = h("textarea", { id: "prompt", rows: "4", placeholder: "Type a prompt… (Ctrl+Enter sends)" });
  const compare = h("input", { type: "checkbox", id: "compare" });
  const send = h("button", { id: "send", type: "submit" }, "Send");
  const stop = h("button", { id: "stop", type: "button", class: "ghost", disabled: true }, "Stop");
  const newChat = h("button", { id: "new-chat", type: "button", class: "ghost" }, "New chat");
  const sides = h("div", { class: "sides", id: "sides" });
  const status = h("div", { id: "playground-status" });
  let controller = null;

  const env = {
    tunedBase: {}, // tuned model name -> its base model (null when the key may not read it)
    prompt: () => prompt.value,
    showError: (err) => clear(status, errorBox(err)),
  };
  const [a, b] = [makeSide("a", env), makeSide("b", env)];
  const active = () => (compare.checked ? [a, b] : [a]);
  const renderAll = () => { for (const s of [a, b]) s.renderCode(); };
  const layout = () => {
    b.card.hidden = !compare.checked;
    sides.classList.toggle("side-by-side", compare.checked);
    renderAll();
  };

  const form = h("form", { class: "playground", onsubmit: (e) => { e.preventDefault(); run(); } },
    h("div", { class: "card composer" },
      h("label", { for: "prompt" }, "Prompt"), prompt,
      h("div", { class: "actions" }, send, stop, newChat,
        h("label", { class: "inline", for: "compare" }, compare, " Compare two sides"))),
    sides);
  sides.append(a.card, b.card);
  clear(main, pageHeader("Prompt playground"), status, form);
  layout();

  prompt.addEventListener("input", renderAll);
  compare.addEventListener("change", layout);
  newChat.addEventListener("click", () => { for (const s of [a, b]) s.reset(); });
  stop.addEventListener("click", () => controller && controller.abort());
  prompt.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); } });

  // The registry (which base each tuned model has) needs the tune scope; an inference key only
  // knows the served names, so its tuned models come from /v1/models, without their bases.
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
      env.tunedBase = Object.fromEntries(tuned.filter((m) => m.method !== "embedding").map((m) => [m.name, m.base_model]));
      const bases = data.filter((m) => !(m.id in env.tunedBase) && !embedding.has(m.id)).map((m) => m.id);
      for (const base of Object.values(env.tunedBase)) if (base && !bases.includes(base)) bases.push(base);
      for (const s of [a, b]) {
        clear(s.model,
          h("optgroup", { label: "Tuned models" }, Object.keys(env.tunedBase).map((n) => h("option", { value: n }, n))),
          h("optgroup", { label: "Base models" }, bases.map((n) => h("option", { value: n }, n))));
      }
      const has = (select, value) => value && [...select.options].some((o) => o.value === value);
      // ?model=name, name@version (a job page links to the version it made) or name@alias
      const [, preName, preVersion] = /^(.*?)(?:@([a-z0-9][a-z0-9_-]*))?$/.exec(preselect || "");
      if (has(a.model, preName)) a.model.value = preName;
      // Side B starts on side A's base model: the comparison people make first.
      const base = env.tunedBase[a.model.value];
      if (has(b.model, base)) b.model.value = base;
      await Promise.all([a.loadVersions(), b.loadVersions()]);
      if (has(a.version, preVersion)) a.version.value = preVersion;
      renderAll();
      main.dataset.playgroundReady = "true";
    } catch (err) {
      env.showError(err);
    }
  }

  async function run() {
    const text = prompt.value;
    const empty = active().find((s) => !s.model.value);
    if (empty) return toast(`Pick a model for side ${empty.id.toUpperCase()} first`, "bad");
    if (!text.trim()) return toast("Type a prompt first", "bad");
    controller = new AbortController();
    send.disabled = true; stop.disabled = false;
    prompt.value = "";
    await Promise.all(active().map((s) => s.send(text, controller.signal)));
    send.disabled = false; stop.disabled = true; controller = null;
  }

  load();
  return () => controller && controller.abort();
}
