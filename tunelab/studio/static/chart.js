// A small line chart on <canvas>: series of [x, y] points, axes with ticks, a legend.
// After drawing, canvas.dataset.points holds how many points were drawn (tests read it).

function niceTicks(lo, hi, count = 5) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

const drawn = new Map(); // canvas -> its last arguments, to redraw sharply on resize

window.addEventListener("resize", () => {
  for (const [canvas, args] of drawn) {
    if (!canvas.isConnected) drawn.delete(canvas);
    else drawChart(canvas, ...args);
  }
});

/**
 * series: [{name, color, points: [[x, y], ...], style: "line" | "points"}]
 * options: {xLabel, yLabel, empty}
 */
export function drawChart(canvas, series, { xLabel = "", yLabel = "", empty = "No data yet" } = {}) {
  drawn.set(canvas, [series, { xLabel, yLabel, empty }]);
  // A canvas has no text: name it as an image, with what it shows (the last value of each series).
  canvas.dataset.title ||= canvas.getAttribute("aria-label") || yLabel || "chart";
  canvas.setAttribute("role", "img");
  const last = series.filter((s) => s.points.length).map((s) => `${s.name} ${+s.points[s.points.length - 1][1].toPrecision(4)} at ${xLabel || "x"} ${s.points[s.points.length - 1][0]}`);
  canvas.setAttribute("aria-label", `${canvas.dataset.title}: ${last.length ? last.join("; ") : empty}`);
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600, height = canvas.clientHeight || 260;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(canvas);
  const ink = style.getPropertyValue("--ink").trim() || "#222";
  const grid = style.getPropertyValue("--grid").trim() || "#e5e7eb";
  ctx.font = "12px system-ui, sans-serif";

  const all = series.flatMap((s) => s.points).filter(([x, y]) => isFinite(x) && isFinite(y));
  canvas.dataset.points = String(all.length);
  if (!all.length) {
    ctx.fillStyle = ink;
    ctx.textAlign = "center";
    ctx.fillText(empty, width / 2, height / 2);
    return;
  }
  const pad = { left: 56, right: 16, top: 28, bottom: 40 };
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const ySpan = y1 - y0 || Math.abs(y1) || 1;
  y0 -= ySpan * 0.05; y1 += ySpan * 0.05;
  const X = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const Y = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);

  ctx.strokeStyle = grid;
  ctx.fillStyle = ink;
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const t of niceTicks(y0, y1)) {
    ctx.beginPath(); ctx.moveTo(pad.left, Y(t)); ctx.lineTo(width - pad.right, Y(t)); ctx.stroke();
    ctx.fillText(+t.toPrecision(4), pad.left - 6, Y(t));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const t of niceTicks(x0, x1, 8)) {
    if (!Number.isInteger(t) && x1 - x0 > 8) continue;
    ctx.beginPath(); ctx.moveTo(X(t), pad.top); ctx.lineTo(X(t), height - pad.bottom); ctx.stroke();
    ctx.fillText(+t.toPrecision(6), X(t), height - pad.bottom + 6);
  }
  ctx.fillText(xLabel, (pad.left + width - pad.right) / 2, height - 16);
  ctx.save();
  ctx.translate(14, (pad.top + height - pad.bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(yLabel, 0, -6);
  ctx.restore();

  let legendX = pad.left;
  for (const s of series) {
    const pts = s.points.filter(([x, y]) => isFinite(x) && isFinite(y));
    ctx.strokeStyle = ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    if (s.style !== "points" && pts.length > 1) {
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
      ctx.stroke();
    }
    if (s.style === "points" || pts.length === 1) {
      for (const [x, y] of pts) { ctx.beginPath(); ctx.arc(X(x), Y(y), 4, 0, 2 * Math.PI); ctx.fill(); }
    }
    ctx.fillRect(legendX, 10, 12, 4);
    ctx.fillStyle = ink;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(`${s.name} (${pts.length})`, legendX + 16, 12);
    legendX += ctx.measureText(`${s.name} (${pts.length})`).width + 36;
  }
}
