"use strict";
// hftgate's own small line chart on a <canvas>: time on x (the last `windowMs`), one line per
// series on y, a legend with each series' latest value. No dependency, nothing loaded from
// elsewhere. It draws only when asked (once per sample), so an idle page costs nothing.
//
//   const chart = new LineChart(canvas, { series: [{ key: "p99_ms", label: "p99" }], unit: "ms" });
//   chart.push({ t: Date.now(), p99_ms: 1.2 }); chart.draw();
//
// A chart given `seriesPrefix` instead of `series` makes one series per key of the points
// that starts with it (market data's venues), at most `maxSeries`.

const CHART_PALETTE = ["#58a6ff", "#f0883e", "#f85149", "#3fb950", "#d2a8ff", "#e3b341", "#39c5cf", "#ff7b72"];

class LineChart {
  constructor(canvas, options) {
    this.canvas = canvas;
    this.series = (options.series || []).map((s, i) => ({ color: CHART_PALETTE[i % CHART_PALETTE.length], ...s }));
    this.seriesPrefix = options.seriesPrefix || null;
    this.maxSeries = options.maxSeries || CHART_PALETTE.length;
    this.unit = options.unit || "";
    this.minY = options.minY ?? 0;  // null: from the data
    this.maxY = options.maxY ?? null;  // null: from the data
    this.windowMs = options.windowMs || 300000;
    this.capacity = options.capacity || 600;  // points kept, whatever the window
    this.format = options.format || ((v) => formatNumber(v));
    this.times = [];
    this.values = new Map();  // series key -> array parallel to this.times
    for (const s of this.series) this.values.set(s.key, []);
  }

  _adopt(point) {
    if (!this.seriesPrefix) return;
    for (const key of Object.keys(point)) {
      if (!key.startsWith(this.seriesPrefix) || this.values.has(key) || this.series.length >= this.maxSeries) continue;
      const color = CHART_PALETTE[this.series.length % CHART_PALETTE.length];
      this.series.push({ key, label: key.slice(this.seriesPrefix.length), color });
      this.values.set(key, new Array(this.times.length).fill(null));
    }
  }

  push(point) {
    if (typeof point.t !== "number") return;
    if (this.times.length && point.t <= this.times[this.times.length - 1]) return;  // a repeated sample
    this._adopt(point);
    this.times.push(point.t);
    for (const s of this.series) {
      const v = point[s.key];
      this.values.get(s.key).push(typeof v === "number" && isFinite(v) ? v : null);
    }
    const cut = Math.max(0, this.times.length - this.capacity);
    if (cut) {
      this.times.splice(0, cut);
      for (const arr of this.values.values()) arr.splice(0, cut);
    }
  }

  setPoints(points) {
    this.times = [];
    for (const s of this.series) this.values.set(s.key, []);
    for (const p of points) this.push(p);
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 400, height = canvas.clientHeight || 140;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    const left = 52, right = 8, top = 18, bottom = 16;
    const plotW = Math.max(10, width - left - right), plotH = Math.max(10, height - top - bottom);
    const now = this.times.length ? this.times[this.times.length - 1] : Date.now();
    const from = now - this.windowMs;

    // The y range: what is visible, from minY (0 by default), with headroom.
    let lo = Infinity, hi = -Infinity;
    for (const s of this.series) {
      const arr = this.values.get(s.key);
      for (let i = 0; i < arr.length; i++) {
        if (this.times[i] < from || arr[i] === null) continue;
        lo = Math.min(lo, arr[i]);
        hi = Math.max(hi, arr[i]);
      }
    }
    if (lo === Infinity) { lo = 0; hi = 1; }
    if (this.minY !== null) lo = Math.min(this.minY, lo);
    if (this.maxY !== null) hi = Math.max(this.maxY, hi);
    else hi = hi + (hi - lo) * 0.1;
    if (hi <= lo) hi = lo + 1;
    const x = (t) => left + ((t - from) / this.windowMs) * plotW;
    const y = (v) => top + plotH - ((v - lo) / (hi - lo)) * plotH;

    ctx.strokeStyle = "#2a313c";
    ctx.fillStyle = "#8b949e";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4, py = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(left + plotW, py); ctx.stroke();
      ctx.fillText(this.format(v) + (this.unit ? " " + this.unit : ""), left - 4, py);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const minutes = this.windowMs / 60000;
    for (let m = 1; m <= minutes; m++) {  // no label at the left edge, where the y labels are
      const px = x(from + m * 60000);
      ctx.fillText(m === minutes ? "now" : `-${minutes - m}m`, px, top + plotH + 3);
    }

    let drawn = 0;
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    for (const s of this.series) {
      const arr = this.values.get(s.key);
      ctx.strokeStyle = s.color;
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < arr.length; i++) {
        if (this.times[i] < from || arr[i] === null) { pen = false; continue; }
        const px = x(this.times[i]), py = y(arr[i]);
        if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        pen = true;
        drawn++;
      }
      ctx.stroke();
    }

    // Legend: each series with its latest value.
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    let lx = left;
    for (const s of this.series) {
      const arr = this.values.get(s.key);
      const last = arr.length ? arr[arr.length - 1] : null;
      const text = `${s.label} ${last === null ? "–" : this.format(last)}${this.unit ? " " + this.unit : ""}`;
      ctx.fillStyle = s.color;
      ctx.fillRect(lx, 4, 10, 3);
      ctx.fillStyle = "#c9d1d9";
      ctx.fillText(text, lx + 13, 1);
      lx += ctx.measureText(text).width + 26;
    }
    // What a test (or a curious user) can read back without pixels.
    canvas.dataset.points = String(drawn);
    canvas.dataset.series = String(this.series.length);
  }
}

function formatNumber(value) {
  if (value === null || value === undefined) return "–";
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : 3;
  return value.toLocaleString("en-US", { maximumFractionDigits: digits });
}
