// Tuning jobs: every job with its state, progress and ETA, refreshed every 2 s.
import { api } from "./api.js";
import { h, clear, badge, duration, when, progressBar, errorBox } from "./dom.js";
import { pageHeader } from "./widgets.js";

export function renderJobs(main) {
  const body = h("tbody", { id: "jobs-body" });
  const status = h("div", {});
  clear(main,
    pageHeader("Tuning jobs", h("a", { class: "button", href: "#/create", dataset: { needs: "tune" } }, "Create tuned model")),
    status,
    h("div", { class: "card" }, h("table", { class: "grid", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Name", "Method", "Base model", "State", "Progress", "ETA", "Created"].map((t) => h("th", {}, t)))),
      body)));
  let timer = null, stopped = false;

  async function load() {
    try {
      const { tuning_jobs: jobs } = await api("/v1/tuningJobs?limit=200");
      clear(status);
      clear(body, jobs.length ? jobs.map((j) => h("tr", { dataset: { job: j.id } },
        h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.display_name), h("div", { class: "muted small" }, j.id)),
        h("td", {}, j.method),
        h("td", { class: "path" }, j.base_model),
        h("td", {}, badge(j.state), j.step ? h("div", { class: "muted small" }, j.step) : null,
          j.error ? h("div", { class: "small error-text" }, `${j.error.code}: ${j.error.message}`) : null),
        h("td", {}, progressBar(j.progress)),
        h("td", {}, ["RUNNING", "PENDING"].includes(j.state) ? duration(j.eta_seconds) : "—"),
        h("td", {}, when(j.create_time)))) :
        h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No tuning jobs yet. ", h("a", { href: "#/create" }, "Create a tuned model."))));
    } catch (err) {
      clear(status, errorBox(err));
    }
    if (!stopped) timer = setTimeout(load, 2000);
  }
  load();
  return () => { stopped = true; clearTimeout(timer); };
}
