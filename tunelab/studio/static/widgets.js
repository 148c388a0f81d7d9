// Pieces shared by several pages: key/value tables, the base-vs-tuned evaluation table.
import { h, fmt } from "./dom.js";

export function kvTable(rows, attrs = {}) {
  return h("table", { class: "kv", ...attrs },
    h("tbody", {}, rows.filter(Boolean).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
}

const interval = (m) => (m ? h("span", {}, fmt(m.value), h("small", { class: "muted" }, ` [${fmt(m.low, 3)}, ${fmt(m.high, 3)}]`)) : "—");

/** Base against tuned on the validation set: each metric with its 95% bootstrap interval. */
export function evaluationTable(evaluation) {
  if (evaluation && !evaluation.models && evaluation.metrics) return retrievalTable(evaluation);
  if (!evaluation || !evaluation.models) return h("p", { class: "muted" }, "No evaluation: give a validation set to compare the tuned model with its base.");
  const [base, tuned] = [evaluation.models[0], evaluation.models[evaluation.models.length - 1]];
  const diff = (evaluation.differences && evaluation.differences.tuned) || {};
  const conf = evaluation.bootstrap ? Math.round(evaluation.bootstrap.confidence * 100) : 95;
  return h("div", { class: "evaluation", dataset: { testid: "evaluation" } },
    h("p", { class: "muted" },
      `Task: ${evaluation.task || "?"}${evaluation.task_inferred ? " (inferred)" : ""} · ${evaluation.n_examples} examples · `,
      `headline ${evaluation.headline_metric} · ${conf}% bootstrap intervals`),
    h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", {}, "Base"), h("th", {}, "Tuned"), h("th", {}, "Tuned − base"))),
      h("tbody", {}, (evaluation.metrics || []).map((name) => {
        const d = diff[name];
        return h("tr", { class: name === evaluation.headline_metric ? "headline" : "" },
          h("td", {}, name), h("td", {}, interval(base.metrics[name])), h("td", {}, interval(tuned.metrics[name])),
          h("td", { class: d && d.excludes_zero ? (d.value > 0 === !["loss", "perplexity"].includes(name) ? "good" : "worse") : "" },
            interval(d), d && d.excludes_zero ? " *" : ""));
      }))),
    h("p", { class: "muted small" }, "* the interval excludes zero: the difference is unlikely to be noise."));
}

export function usageRows(usage) {
  if (!usage) return [];
  return [
    // The same names as the data report, times the epochs run (tunelab/jobs/usage.py).
    usage.billable_tokens != null ? ["Billable tokens", h("span", {}, fmt(usage.billable_tokens), h("small", { class: "muted" }, " all tokens × epochs"))] : null,
    ["Trained tokens", h("span", {}, fmt(usage.trained_tokens), h("small", { class: "muted" }, usage.processed_tokens != null ? " model turns × epochs" : ""))],
    usage.processed_tokens != null ? ["Processed tokens", h("span", {}, fmt(usage.processed_tokens), h("small", { class: "muted" }, " every token the batches carried"))] : null,
    ["Training time", usage.train_seconds != null ? `${fmt(usage.train_seconds, 3)} s` : "—"],
    ["Wall time", usage.wall_seconds != null ? `${fmt(usage.wall_seconds, 3)} s` : "—"],
    ["CPU time", usage.cpu_seconds != null ? `${fmt(usage.cpu_seconds, 3)} s` : "—"],
    ["Peak memory", usage.peak_rss_mb != null ? `${fmt(usage.peak_rss_mb, 4)} MB` : "—"],
    ["Estimated cost", usage.estimated_cost != null ? `${usage.estimated_cost}` : "not set (TUNELAB_PRICE_PER_1K_TOKENS)"],
  ];
}

export const pageHeader = (title, ...extra) => h("div", { class: "page-header" }, h("h1", {}, title), h("div", { class: "actions" }, extra));

/** An embedding model's evaluation: retrieval metrics (recall@k, NDCG, MRR) of the base and the
 * tuned encoder on each labelled set, {metrics: {set: {metric: {base, tuned, delta}}}}. */
export function retrievalTable(evaluation) {
  return h("div", { class: "evaluation retrieval", dataset: { testid: "evaluation" } },
    Object.entries(evaluation.metrics).map(([set, metrics]) => [
      h("p", { class: "muted" }, `Retrieval on the ${set} labels · ${fmt((evaluation.queries || {})[set])} queries`,
        set === "test" && evaluation.test_from_split ? " (20% of the training queries, held out)" : ""),
      h("table", { class: "grid", dataset: { set } },
        h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", {}, "Base"), h("th", {}, "Tuned"), h("th", {}, "Tuned − base"))),
        h("tbody", {}, Object.entries(metrics).map(([name, m]) => h("tr", { dataset: { metric: name } },
          h("td", {}, name), h("td", {}, fmt(m.base)), h("td", {}, fmt(m.tuned)),
          h("td", { class: m.delta > 0 ? "good" : m.delta < 0 ? "worse" : "" }, `${m.delta > 0 ? "+" : ""}${fmt(m.delta)}`))))),
    ]));
}
