// Tiny DOM helpers. Server data always goes in as text nodes, never as HTML.

/** h("div", {class: "x", onclick: fn, dataset: {a: 1}}, "text", child, [children]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.className = `show ${kind}`;
  box.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.className = ""), 4000);
}

export const STATE_CLASS = {
  QUEUED: "queued", PENDING: "queued", RUNNING: "running", PAUSED: "paused",
  SUCCEEDED: "ok", FAILED: "bad", CANCELLING: "paused", CANCELLED: "muted",
};

export const badge = (state) =>
  h("span", { class: `badge ${STATE_CLASS[state] || "muted"}`, dataset: { state } }, state);

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  const m = Math.floor(seconds / 60), s = seconds % 60;
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function when(time) {
  if (!time) return "—";
  const d = new Date(typeof time === "number" ? time * 1000 : time);
  return isNaN(d) ? String(time) : d.toLocaleString();
}

export const fmt = (x, digits = 4) =>
  x === null || x === undefined ? "—" : typeof x === "number" ? (Number.isInteger(x) ? x.toLocaleString() : x.toPrecision(digits)) : String(x);

export function progressBar(fraction) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  return h("div", { class: "progress", role: "progressbar", "aria-valuenow": String(pct) },
    h("div", { class: "bar", style: `width:${pct}%` }), h("span", {}, `${pct}%`));
}

export function errorBox(err) {
  return h("div", { class: "alert bad" }, h("strong", {}, err.code || "error"), ": ", err.message || String(err));
}

/** Copy text: the async clipboard when allowed (https, localhost), else a hidden textarea. */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (_) { /* fall through */ }
  const area = h("textarea", { style: "position:fixed;top:-1000px;opacity:0" });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
  area.remove();
  return ok;
}
