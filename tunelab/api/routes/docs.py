"""The API reference behind the key: ``/openapi.json`` needs a key like every API route, and the
``/docs`` (Swagger UI) and ``/redoc`` pages are shells without data that fetch the schema with
the key the Studio holds in this browser tab (or one typed into the page), and send the same key
with Swagger UI's "Try it out" calls.

FastAPI's built-in versions of these routes answer anyone, so the app turns them off. The schema
holds nothing secret that the source does not, but an open route tells a scanner what runs here
and which version, and the README promises that every route but /health needs a key.

The viewers' scripts load in the browser from the jsDelivr CDN, as FastAPI's own pages load
them; the server fetches nothing, and the Studio (tunelab/studio) loads nothing remote.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from tunelab.studio import NO_CACHE

schema_router = APIRouter(include_in_schema=False)
pages_router = APIRouter(include_in_schema=False)

CDN = "https://cdn.jsdelivr.net/npm"
VIEWERS = {
    "swagger": (
        f"{CDN}/swagger-ui-dist@5/swagger-ui-bundle.js",
        f"{CDN}/swagger-ui-dist@5/swagger-ui.css",
    ),
    "redoc": (f"{CDN}/redoc@2/bundles/redoc.standalone.js", None),
}

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>TuneLab API reference</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/studio/styles.css">
  __CSS__
</head>
<body data-page="docs">
  <main id="main">
    <form class="card login" id="docs-login" hidden>
      <h1>TuneLab API reference</h1>
      <p class="muted">The API reference needs an API key, like every route but /health.
        Log in to the <a href="/">Studio</a> in this tab, or give a key here.</p>
      <p class="alert bad" id="docs-error" hidden></p>
      <label for="api-key">API key</label>
      <input type="password" id="api-key" placeholder="tl-…" autocomplete="current-password"
             required>
      <button type="submit">Show the reference</button>
    </form>
  </main>
  <div id="reference"></div>
  <script type="module">
    const KEY = "tunelab.apiKey";  // the Studio's sessionStorage entry (studio/static/api.js)
    const form = document.getElementById("docs-login");
    const error = document.getElementById("docs-error");
    function ask(message) {
      form.hidden = false;
      error.hidden = !message;
      error.textContent = message || "";
    }
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, document.getElementById("api-key").value.trim());
      show();
    });
    function load(src) {
      return new Promise((resolve, reject) => {
        const script = Object.assign(document.createElement("script"), { src });
        script.onload = resolve;
        script.onerror = () => reject(new Error(
          `could not load ${src}; the schema itself is at /openapi.json (send the key)`));
        document.head.append(script);
      });
    }
    async function show() {
      const key = sessionStorage.getItem(KEY);
      if (!key) return ask();
      const response = await fetch("/openapi.json", { headers: { Authorization: `Bearer ${key}` } });
      if (response.status === 401) {
        sessionStorage.removeItem(KEY);
        return ask("That API key was refused.");
      }
      if (!response.ok) return ask(`The schema could not be read (HTTP ${response.status}).`);
      const spec = await response.json();
      form.hidden = true;
      try {
        await load("__JS__");
      } catch (err) {
        return ask(err.message);
      }
      const target = document.getElementById("reference");
      if ("__VIEWER__" === "redoc") return window.Redoc.init(spec, {}, target);
      window.SwaggerUIBundle({
        spec,
        domNode: target,
        requestInterceptor: (request) => {
          request.headers.Authorization = `Bearer ${sessionStorage.getItem(KEY)}`;
          return request;
        },
      });
    }
    show();
  </script>
</body>
</html>
"""


def _page(viewer: str) -> HTMLResponse:
    js, css = VIEWERS[viewer]
    link = f'<link rel="stylesheet" href="{css}">' if css else ""
    html = PAGE.replace("__CSS__", link).replace("__JS__", js).replace("__VIEWER__", viewer)
    return HTMLResponse(html, headers=NO_CACHE)


@schema_router.get("/openapi.json")
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@pages_router.get("/docs")
def swagger_page() -> HTMLResponse:
    return _page("swagger")


@pages_router.get("/redoc")
def redoc_page() -> HTMLResponse:
    return _page("redoc")
