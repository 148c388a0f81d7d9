// /docs (Swagger UI) and /redoc: fetch the OpenAPI schema with the Studio's key (this tab's
// sessionStorage) and hand it to the viewer, whose "Try it out" calls carry the same key.
// The viewers' scripts come from the jsDelivr CDN, as FastAPI's own docs pages load them.
import { getKey, setKey, clearKey } from "./api.js";
import { h, clear } from "./dom.js";

const CDN = "https://cdn.jsdelivr.net/npm";
const VIEWERS = {
  "/docs": { js: `${CDN}/swagger-ui-dist@5/swagger-ui-bundle.js`, css: `${CDN}/swagger-ui-dist@5/swagger-ui.css` },
  "/redoc": { js: `${CDN}/redoc@2/bundles/redoc.standalone.js` },
};
const main = document.getElementById("main");

function askForKey(message) {
  const input = h("input", { type: "password", id: "api-key", placeholder: "tl-…", autocomplete: "current-password", required: true });
  clear(main, h("form", { class: "card login", id: "docs-login", onsubmit: (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    show();
  } },
    h("h1", {}, "TuneLab API reference"),
    h("p", { class: "muted" }, "The API reference needs an API key, like every route but /health. ",
      "Log in to the ", h("a", { href: "/" }, "Studio"), " in this tab, or give a key here."),
    message ? h("p", { class: "alert bad", id: "docs-error" }, message) : null,
    h("label", { for: "api-key" }, "API key"), input, h("button", { type: "submit" }, "Show the reference")));
}

function load(viewer) {
  if (viewer.css) document.head.append(h("link", { rel: "stylesheet", href: viewer.css }));
  return new Promise((resolve, reject) => {
    document.head.append(h("script", { src: viewer.js, onload: resolve,
      onerror: () => reject(new Error(`could not load ${viewer.js}; the schema itself is at /openapi.json (send the key)`)) }));
  });
}

async function show() {
  const key = getKey();
  if (!key) return askForKey();
  const response = await fetch("/openapi.json", { headers: { Authorization: `Bearer ${key}` } });
  if (response.status === 401) { clearKey(); return askForKey("That API key was refused."); }
  if (!response.ok) return askForKey(`The schema could not be read (HTTP ${response.status}).`);
  const spec = await response.json();
  const viewer = VIEWERS[location.pathname] || VIEWERS["/docs"];
  clear(main);
  try {
    await load(viewer);
  } catch (err) {
    return clear(main, h("p", { class: "alert bad", id: "docs-error" }, err.message));
  }
  const target = document.getElementById("reference");
  if (viewer === VIEWERS["/redoc"]) return window.Redoc.init(spec, {}, target);
  window.SwaggerUIBundle({
    spec,
    domNode: target,
    requestInterceptor: (request) => { request.headers.Authorization = `Bearer ${getKey()}`; return request; },
  });
}

show();
