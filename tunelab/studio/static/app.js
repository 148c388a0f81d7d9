// The Studio shell: login, hash routing, and the page modules.
import { getKey, setKey, clearKey, verifyKey, api, can, setScopes } from "./api.js";
import { h, clear, toast } from "./dom.js";
import { renderJobs } from "./page-jobs.js";
import { renderJob } from "./page-job.js";
import { renderModels } from "./page-models.js";
import { renderPlayground } from "./page-playground.js";
import { renderCreate } from "./page-create.js";

const main = document.getElementById("main");
let cleanup = null; // the current page's teardown (stops its polling)

// [hash pattern, render, nav page, the key scope the page needs]
const ROUTES = [
  [/^#\/jobs\/([\w.-]+)$/, (m) => renderJob(main, m[1]), "jobs", "tune"],
  [/^#\/jobs$/, () => renderJobs(main), "jobs", "tune"],
  [/^#\/models$/, () => renderModels(main), "models", "tune"],
  [/^#\/playground(?:\?model=(.*))?$/, (m) => renderPlayground(main, m[1] && decodeURIComponent(m[1])), "playground", "inference"],
  [/^#\/create(?:\?from=([\w.-]+))?$/, (m) => renderCreate(main, m[1]), "create", "tune"],
];
let scopesKnown = false;
const home = () => (can("tune") ? "#/jobs" : "#/playground");

function renderLogin(message) {
  document.getElementById("topbar").hidden = true;
  document.body.dataset.page = "login";
  const input = h("input", { type: "password", id: "api-key", name: "api-key", placeholder: "tl-…", autocomplete: "current-password", required: true });
  const error = h("p", { class: "alert bad", id: "login-error", hidden: !message }, message || "");
  const button = h("button", { type: "submit", id: "login-submit" }, "Log in");
  const form = h("form", { class: "card login", id: "login-form", onsubmit: async (e) => {
    e.preventDefault();
    button.disabled = true;
    error.hidden = true;
    try {
      const me = await verifyKey(input.value.trim());
      setKey(input.value.trim());
      setScopes(me.scopes);
      scopesKnown = true;
      if (!location.hash || location.hash === "#/login") location.hash = home();
      route();
    } catch (err) {
      error.textContent = err.status === 401 ? "That API key was refused." : `Could not check the key: ${err.message}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  } },
    h("h1", {}, "TuneLab Studio"),
    h("p", { class: "muted" }, "Log in with an API key. Create one on the server with ", h("code", {}, "tunelab keys create"), "."),
    h("label", { for: "api-key" }, "API key"), input, error, button);
  clear(main, form);
  input.focus();
}

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  if (!getKey()) return renderLogin();
  if (!scopesKnown) {
    try {
      setScopes((await api("/v1/keys/me")).scopes);
      scopesKnown = true;
    } catch (err) {
      if (err.status !== 401) renderLogin(`Could not check the key: ${err.message}`);
      return; // a 401 has already shown the login form
    }
  }
  document.getElementById("topbar").hidden = false;
  const hash = location.hash || home();
  for (const [pattern, render, page, needs] of ROUTES) {
    const m = hash.match(pattern);
    if (!m) continue;
    if (!can(needs)) break; // a page this key may not use: go to one it may
    document.body.dataset.page = page;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
    cleanup = render(m) || null;
    return;
  }
  location.hash = home();
}

window.addEventListener("hashchange", route);
window.addEventListener("tunelab:logout", (e) => {
  if (cleanup) { cleanup(); cleanup = null; }
  scopesKnown = false;
  renderLogin(e.detail);
});
document.getElementById("logout").addEventListener("click", () => {
  clearKey();
  scopesKnown = false;
  setScopes([]);
  toast("Logged out");
  route();
});
route();
