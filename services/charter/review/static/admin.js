// The admin page: queue, acceptance and agreement figures, and the AI confidence histogram (SVG).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 5000;

  const percent = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);

  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text || "";
    el.className = "status" + (kind ? ` status-${kind}` : "");
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function row(...cells) {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    return el;
  }

  function drawHistogram(histogram, threshold) {
    const { edges, counts } = histogram;
    const width = 560;
    const height = 240;
    const pad = { left: 44, right: 12, top: 14, bottom: 40 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const max = Math.max(1, ...counts);
    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": "Histogram of the AI's confidence",
      class: "histogram",
      id: "confidence-chart",
    });
    // horizontal grid lines with counts
    const ticks = 4;
    for (let i = 0; i <= ticks; i++) {
      const value = Math.round((max * i) / ticks);
      const y = pad.top + plotH - (plotH * value) / max;
      chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid" }));
      const label = svg("text", { x: pad.left - 6, y: y + 4, class: "axis", "text-anchor": "end" });
      label.textContent = String(value);
      chart.append(label);
    }
    const slot = plotW / Math.max(1, counts.length);
    counts.forEach((count, i) => {
      const h = (plotH * count) / max;
      const x = pad.left + i * slot;
      const bar = svg("rect", {
        x: x + slot * 0.1,
        y: pad.top + plotH - h,
        width: slot * 0.8,
        height: Math.max(h, count ? 1 : 0),
        rx: 2,
        class: edges[i + 1] <= threshold + 1e-9 ? "bar bar-low" : "bar",
      });
      const title = svg("title");
      title.textContent = `confidence ${edges[i].toFixed(1)}–${edges[i + 1].toFixed(1)}: ${count} labels`;
      bar.append(title);
      chart.append(bar);
      if (count) {
        const n = svg("text", { x: x + slot / 2, y: pad.top + plotH - h - 4, class: "count", "text-anchor": "middle" });
        n.textContent = String(count);
        chart.append(n);
      }
      const tick = svg("text", { x: x + slot / 2, y: height - pad.bottom + 16, class: "axis", "text-anchor": "middle" });
      tick.textContent = edges[i].toFixed(1);
      chart.append(tick);
    });
    chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: pad.top + plotH, y2: pad.top + plotH, class: "baseline" }));
    const caption = svg("text", { x: pad.left + plotW / 2, y: height - 6, class: "axis", "text-anchor": "middle" });
    caption.textContent = "AI confidence (bin start)";
    chart.append(caption);
    $("chart").replaceChildren(chart);
  }

  function agreementRow(label, decisions, a) {
    return row(
      cell(label),
      cell(decisions === null ? "" : String(decisions), "num"),
      cell(String(a.pairs), "num"),
      cell(a.pairs ? percent(a.agreement) : "–", "num"),
      cell(a.pairs ? a.kappa.toFixed(2) : "–", "num"),
    );
  }

  function show(data) {
    for (const [name, value] of Object.entries(data.totals)) {
      const el = $(`t-${name}`);
      if (el) el.textContent = String(value);
    }
    for (const [name, value] of Object.entries(data.rates)) {
      for (const prefix of ["r-", "r2-"]) {
        const el = $(`${prefix}${name}`);
        if (el) el.textContent = prefix === "r-" && el.tagName === "SMALL" ? `${percent(value)} of labels` : percent(value);
      }
    }
    $("routes").replaceChildren(
      ...(data.routes.length
        ? data.routes.map((r) => row(cell(r.route.replace(/_/g, " ")), cell(r.reason.replace(/_/g, " ")), cell(String(r.labels), "num")))
        : [row(cell("No labels yet", "muted"), cell(""), cell(""))]),
    );
    const ag = data.agreement;
    const rows = [
      agreementRow("Human – human (same item)", null, ag.human_human),
      agreementRow("Human – AI (all)", null, ag.human_ai),
    ];
    for (const [principle, a] of Object.entries(ag.by_principle)) {
      rows.push(agreementRow(`Human – AI, principle ${principle}`, null, a));
    }
    for (const r of ag.by_reviewer) {
      rows.push(agreementRow(`Reviewer ${r.reviewer} – AI`, r.decisions, r));
    }
    $("agreement").replaceChildren(...rows);
    $("threshold").textContent = data.accept_confidence.toFixed(2);
    drawHistogram(data.confidence_histogram, data.accept_confidence);
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  async function refresh() {
    try {
      const response = await fetch("/api/admin/overview", { credentials: "same-origin", headers: { accept: "application/json" } });
      if (response.status === 401) {
        window.location.assign("/login");
        return;
      }
      const data = await response.json().catch(() => null);
      if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
      show(data);
      setStatus("");
      document.body.classList.add("ready");
    } catch (err) {
      setStatus(err.message, "error");
    }
  }

  refresh();
  window.setInterval(refresh, REFRESH_MS);
})();
