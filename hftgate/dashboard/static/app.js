"use strict";
// The dashboard page: one EventSource on /api/events. The server sends the charted history
// once ("history"), then every sample ("state"); each sample re-renders the panels and adds
// one point to each chart. Everything shown comes from the suite (symbols, reasons...): text
// nodes only, never HTML.

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const child of children || []) node.append(child instanceof Node ? child : String(child));
  return node;
}
function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return value.toLocaleString("en-US", { maximumFractionDigits: digits ?? 2 });
  return String(value);
}
function pct(ratio) { return ratio === null || ratio === undefined ? "–" : (ratio * 100).toFixed(1) + "%"; }
// A figure keeps its raw value in data-value, so what is shown can be checked against the source.
function figure(label, shown, id, raw) {
  const value = raw === undefined || raw === null ? undefined : String(raw);
  return el("div", { class: "figure", id: id, "data-value": value }, [el("b", {}, [shown]), el("span", {}, [label])]);
}
function table(headers, rows) {
  return el("table", {}, [el("tr", {}, headers.map(h => el("th", {}, [h]))),
    ...rows.map(r => el("tr", {}, r.map(c => c instanceof Node ? el("td", {}, [c]) : el("td", {}, [fmt(c, 4)]))))]);
}
function error(text) { return el("p", { class: "error" }, [text]); }
function note(text, id) { return el("p", { class: "note", id: id }, [text]); }
function fill(id, nodes) { document.querySelector("#" + id + " .body").replaceChildren(...nodes); }
// A panel is rebuilt only when what it shows changed: most panels hold still most seconds, and
// an unchanged panel then costs the browser no layout.
const shown = new Map();
function changed(id, ...inputs) {
  const key = JSON.stringify(inputs);
  if (shown.get(id) === key) return false;
  shown.set(id, key);
  return true;
}
const ratioFormat = (v) => (v * 100).toFixed(v >= 0.995 || v === 0 ? 0 : 1) + "%";

const charts = {
  latency: new LineChart(document.getElementById("chart-latency"), {
    unit: "ms", series: [{ key: "p50_ms", label: "p50" }, { key: "p99_ms", label: "p99" }, { key: "p999_ms", label: "p99.9" }] }),
  orders: new LineChart(document.getElementById("chart-orders"), {
    unit: "/s", series: [{ key: "orders_per_s", label: "orders" }] }),
  rejects: new LineChart(document.getElementById("chart-rejects"), {
    unit: "/s", series: [{ key: "rejects_per_s", label: "rejects", color: "#f85149" }] }),
  journal: new LineChart(document.getElementById("chart-journal"), {
    unit: "ms", series: [{ key: "journal_p50_ms", label: "p50" }, { key: "journal_p99_ms", label: "p99" }] }),
  cache: new LineChart(document.getElementById("chart-cache"), {
    minY: null, maxY: 1, format: ratioFormat,
    series: [{ key: "hit_ratio", label: "overall" }, { key: "hit_L1", label: "L1" }, { key: "hit_L2", label: "L2" },
             { key: "hit_L3", label: "L3" }] }),
  replicas: new LineChart(document.getElementById("chart-replicas"), {
    series: [{ key: "replicas", label: "replicas" }] }),
  arbitrage: new LineChart(document.getElementById("chart-arbitrage"), {
    series: [{ key: "arbitrage_open", label: "open" }] }),
  venues: new LineChart(document.getElementById("chart-venues"), { unit: "/s", seriesPrefix: "venue " }),
};
function drawCharts() { for (const chart of Object.values(charts)) chart.draw(); }

function render(s) {
  const ex = s.execution;
  fill("panel-latency", [el("div", { class: "figures" }, [
    figure("p50 ms", fmt(ex.p50_ms, 3), "p50-ms", ex.p50_ms),
    figure("p99 ms", fmt(ex.p99_ms, 3), "p99-ms", ex.p99_ms),
    figure("p99.9 ms", fmt(ex.p999_ms, 3), "p999-ms", ex.p999_ms)])]);

  fill("panel-execution", [
    el("div", { class: "figures" }, [
      figure("orders/s", fmt(ex.orders_per_s, 1), "orders-per-s", ex.orders_per_s),
      figure("peak orders/s", fmt(ex.peak_orders_per_s, 1), "peak-orders-per-s", ex.peak_orders_per_s),
      figure("average orders/s", fmt(ex.average_orders_per_s, 1), "average-orders-per-s", ex.average_orders_per_s),
      figure("orders received", fmt(ex.orders_received), "orders-received", ex.orders_received),
      figure("open orders", fmt(ex.open_orders), "open-orders", ex.open_orders)])]);

  if (changed("panel-rejects", ex.rejects_per_s, ex.inputs_rejected, ex.rejects_by_reason)) fill("panel-rejects", [
    el("div", { class: "figures" }, [
      figure("rejects/s", fmt(ex.rejects_per_s, 1), "rejects-per-s", ex.rejects_per_s),
      figure("inputs rejected", fmt(ex.inputs_rejected), "inputs-rejected", ex.inputs_rejected)]),
    ex.rejects_by_reason.length
      ? table(["reason", "count"], ex.rejects_by_reason.map(x => [x.reason, x.count]))
      : note("no rejects")]);

  fill("panel-journal", [el("div", { class: "figures" }, [
    figure("p50 ms", fmt(ex.journal_p50_ms, 3), "journal-p50-ms", ex.journal_p50_ms),
    figure("p99 ms", fmt(ex.journal_p99_ms, 3), "journal-p99-ms", ex.journal_p99_ms),
    figure("fsyncs/s", fmt(ex.fsyncs_per_s, 1), "fsyncs-per-s", ex.fsyncs_per_s),
    figure("records per fsync", fmt(ex.records_per_fsync, 2), "records-per-fsync", ex.records_per_fsync),
    figure("snapshots", fmt(ex.snapshots_taken), "snapshots", ex.snapshots_taken)])]);

  const c = s.cache;
  if (changed("panel-cache", c)) fill("panel-cache", c.available ? [
    el("div", { class: "figures" }, [figure("hit ratio", pct(c.hit_ratio), "cache-hit-ratio", c.hit_ratio),
      figure("redis", c.redis_available ? "up" : "down")]),
    table(["level", "hits", "misses", "hit ratio"], c.levels.map(x => [x.level.replace("CACHE_LEVEL_", ""), x.hits, x.misses, pct(x.hit_ratio)]))]
    : [error("cache: " + c.error)]);

  const g = s.gateway;
  const byShard = new Map(ex.shards.map(x => [x.address, x]));
  const shardRows = (g.available ? g.shards : ex.shards).map(m => {
    const x = byShard.get(m.address) || { available: false, error: "not polled" };
    const symbols = el("span", { class: "symbols" }, [(m.symbols || []).join(" ") || "–"]);
    return x.available
      ? [fmt(m.shard_id), m.address, fmt(x.orders_per_s, 1), fmt(x.p50_ms, 3), fmt(x.p99_ms, 3), fmt(x.p999_ms, 3), fmt(x.open_orders), symbols]
      : [fmt(m.shard_id), m.address, "–", "–", "–", "–", "–", el("span", { class: "error" }, [x.error])];
  });
  if (changed("panel-gateway", g, shardRows.map(r => r.map(x => x instanceof Node ? x.textContent : x)))) fill("panel-gateway", [
    el("div", { class: "figures" }, [figure("epoch", fmt(g.epoch), "shard-map-epoch", g.epoch),
      figure("shards", fmt(shardRows.length), "shard-count", shardRows.length)]),
    ...(g.available ? [] : [error("gateway: " + g.error)]),
    table(["shard", "address", "orders/s", "p50 ms", "p99 ms", "p99.9 ms", "open", "symbols"], shardRows),
    ...(g.pins && g.pins.length ? [table(["pinned symbol", "shard"], g.pins.map(x => [x.symbol, fmt(x.shard_id)]))] : [])]);

  const sc = s.scaler;
  if (changed("panel-scaler", sc)) fill("panel-scaler", sc.available ? [
    el("div", { class: "figures" }, [figure("replicas", fmt(sc.replicas.length), "scaler-replicas", sc.replicas.length)]),
    sc.replicas.length
      ? table(["service", "replica", "address", "state"],
          sc.replicas.map(x => [x.service, x.replica_id, x.address, x.state.replace("REPLICA_STATE_", "")]))
      : note("no replicas reported yet"),
    el("h2", {}, ["Last decisions"]),
    sc.decisions.length
      ? table(["#", "service", "action", "replicas", "reason"], sc.decisions.map(x =>
          [fmt(x.decision_id), x.service, x.action.replace("SCALING_ACTION_", ""), x.current_replicas + " → " + x.desired_replicas,
           el("span", { class: "reason" }, [x.reason])]))
      : note("no decisions yet")]
    : [note("no scaler", "no-scaler"), el("p", { class: "reason" }, [sc.error || ""])]);

  const a = s.arbitrage;
  if (changed("panel-arbitrage", a)) fill("panel-arbitrage", [
    el("div", { class: "figures" }, [
      figure("open now", fmt(a.open_now), "arbitrage-open", a.open_now),
      figure("opened", fmt(a.opened), "arbitrage-opened", a.opened),
      figure("closed", fmt(a.closed), "arbitrage-closed", a.closed),
      figure("best open edge bps", fmt(a.best_open_edge_bps, 2), "arbitrage-best-edge", a.best_open_edge_bps)]),
    ...(a.available ? [] : [el("p", { class: "note" }, ["arbitrage stream: " + a.error])]),
    a.recent.length
      ? table(["id", "event", "kind", "legs", "edge bps", "lifetime ms"], a.recent.map(x =>
          [fmt(x.opportunity_id), x.event, x.kind, el("span", { class: "reason" }, [x.legs]), fmt(x.edge_bps, 2), fmt(x.lifetime_ms, 1)]))
      : note("no opportunity seen yet")]);

  const md = s.marketdata;
  if (changed("panel-marketdata", md)) fill("panel-marketdata", md.available ? [
    el("div", { class: "figures" }, [
      figure("symbols", fmt(md.symbols), "md-symbols", md.symbols),
      figure("ticks accepted", fmt(md.accepted_ticks), "md-accepted", md.accepted_ticks),
      figure("subscribers", fmt(md.subscribers))]),
    table(["venue", "quotes", "trades", "ticks/s"], md.venues.map(x => [x.venue, x.quotes, x.trades, fmt(x.ticks_per_s, 1)])),
    table(["venue", "symbol", "bid", "ask", "last"], md.top.map(x => [x.venue, x.symbol, x.bid, x.ask, x.last]))]
    : [error("market data: " + md.error)]);

  if (changed("panel-services", s.services)) fill("panel-services", [table(["service", "address", "health"],
    s.services.map(x => [x.name, x.address, el("span", { class: x.status, title: x.error || "" }, [x.status])]))]);

  document.getElementById("updated").textContent = "updated " + new Date(s.collected_ms).toLocaleTimeString();
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("history", (e) => {
    const points = JSON.parse(e.data);
    for (const chart of Object.values(charts)) chart.setPoints(points);
    drawCharts();
  });
  events.addEventListener("state", (e) => {
    const state = JSON.parse(e.data);
    render(state);
    for (const chart of Object.values(charts)) chart.push(state.series);
    drawCharts();
  });
  events.onerror = () => {
    // EventSource reconnects by itself (the server's retry field); say so meanwhile.
    document.getElementById("updated").textContent = "dashboard unreachable: reconnecting…";
  };
}
connect();
window.addEventListener("resize", drawCharts);
