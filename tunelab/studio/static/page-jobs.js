// Tuning jobs: every job with its state, progress and ETA, refreshed every 2 s.
import { api } from "./api.js";
import { h, clear, badge, duration, when, progressBar, errorBox } from "./dom.js";
import { pageHeader } from "./widgets.js";
import { drawChart } from "./chart.js";

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f"];

export function renderJobs(main) {
  const body = h("tbody", { id: "jobs-body" });
  const status = h("div", {});
  // Overlay: the loss curves of the jobs ticked in the table, on one chart.
  const picked = new Set();
  const overlayCanvas = h("canvas", { class: "chart", id: "overlay-chart", "aria-label": "Loss of the selected jobs" });
  const overlayMetric = h("select", { id: "overlay-metric", "aria-label": "Curve to compare" },
    [["train_loss", "train loss"], ["eval_loss", "eval loss"], ["learning_rate", "learning rate"], ["tokens_per_second", "tokens/s"]].map(([v, t]) => h("option", { value: v }, t)));
  const overlay = h("div", { class: "card", id: "overlay", hidden: true },
    h("div", { class: "output-head" }, h("h2", {}, "Compare curves"), overlayMetric), overlayCanvas);
  let names = {};
  async function drawOverlay() {
    overlay.hidden = picked.size === 0;
    if (!picked.size) return;
    const key = overlayMetric.value;
    const series = await Promise.all([...picked].map(async (id, i) => {
      const { metrics } = await api(`/v1/tuningJobs/${id}/metrics`);
      return { name: names[id] || id, color: COLORS[i % COLORS.length], points: metrics.filter((r) => r[key] != null).map((r) => [r.step, r[key]]) };
    }));
    drawChart(overlayCanvas, series, { xLabel: "step", yLabel: overlayMetric.selectedOptions[0].textContent, empty: "No such values in these jobs" });
  }
  overlayMetric.addEventListener("change", drawOverlay);
  clear(main,
    pageHeader("Tuning jobs", h("a", { class: "button", href: "#/create", dataset: { needs: "tune" } }, "Create tuned model")),
    status, overlay,
    h("div", { class: "card" }, h("table", { class: "grid", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Compare", "Name", "Method", "Base model", "State", "Progress", "ETA", "Created"].map((t) => h("th", {}, t)))),
      body)));
  let timer = null, stopped = false;

  async function load() {
    try {
      const { tuning_jobs: jobs } = await api("/v1/tuningJobs?limit=200");
      clear(status);
      names = Object.fromEntries(jobs.map((j) => [j.id, j.display_name]));
      clear(body, jobs.length ? jobs.map((j) => h("tr", { dataset: { job: j.id } },
        h("td", {}, h("input", { type: "checkbox", class: "overlay-pick", checked: picked.has(j.id), "aria-label": `Compare ${j.display_name}`,
          onchange: (e) => { if (e.target.checked) picked.add(j.id); else picked.delete(j.id); drawOverlay(); } })),
        h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.display_name), h("div", { class: "muted small" }, j.id)),
        h("td", {}, j.method),
        h("td", { class: "path" }, j.base_model),
        h("td", {}, badge(j.state), j.step ? h("div", { class: "muted small" }, j.step) : null,
          j.error ? h("div", { class: "small error-text" }, `${j.error.code}: ${j.error.message}`) : null),
        h("td", {}, progressBar(j.progress)),
        h("td", {}, ["RUNNING", "PENDING"].includes(j.state) ? duration(j.eta_seconds) : "—"),
        h("td", {}, when(j.create_time)))) :
        h("tr", {}, h("td", { colspan: "8", class: "muted" }, "No tuning jobs yet. ", h("a", { href: "#/create" }, "Create a tuned model."))));
    } catch (err) {
      clear(status, errorBox(err));
    }
    if (!stopped) timer = setTimeout(load, 2000);
  }
  load();
  return () => { stopped = true; clearTimeout(timer); };
}
