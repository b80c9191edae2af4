// ScanFort dashboard: refresh the live part of the page in place, sort and filter tables,
// confirm dangerous forms. No external scripts (the CSP allows only this file).
"use strict";
(function () {
  const sortState = {}; // table id -> {index, dir}

  function cellValue(row, index, kind) {
    const cell = row.cells[index];
    const raw = cell ? (cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent) : "";
    return kind === "num" ? parseFloat(raw) || 0 : raw.trim().toLowerCase();
  }

  function applySort(table) {
    const state = sortState[table.id];
    if (!state || !table.tBodies[0]) return;
    const th = table.tHead.rows[0].cells[state.index];
    const kind = th.dataset.sort || "text";
    const rows = Array.from(table.tBodies[0].rows).filter(function (r) { return r.dataset.agentId !== undefined || r.cells.length > 1; });
    rows.sort(function (a, b) {
      const x = cellValue(a, state.index, kind), y = cellValue(b, state.index, kind);
      return (x < y ? -1 : x > y ? 1 : 0) * state.dir;
    });
    rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
    Array.from(table.tHead.rows[0].cells).forEach(function (c, i) {
      if (i === state.index) c.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
      else c.removeAttribute("aria-sort");
    });
  }

  function applyFilter() {
    const text = document.getElementById("agent-filter");
    const state = document.getElementById("state-filter");
    const table = document.getElementById("agents");
    if (!table || !text || !state) return;
    const needle = text.value.trim().toLowerCase();
    Array.from(table.tBodies[0].rows).forEach(function (row) {
      if (row.dataset.agentId === undefined) return;
      const okText = !needle || row.textContent.toLowerCase().indexOf(needle) >= 0;
      const okState = !state.value || row.dataset.state === state.value;
      row.hidden = !(okText && okState);
    });
  }

  function wire(root) {
    root.querySelectorAll("table.sortable").forEach(function (table) {
      Array.from(table.tHead.rows[0].cells).forEach(function (th, index) {
        th.tabIndex = 0;
        const sort = function () {
          const prev = sortState[table.id];
          sortState[table.id] = { index: index, dir: prev && prev.index === index ? -prev.dir : 1 };
          applySort(table);
        };
        th.addEventListener("click", sort);
        th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
      });
      applySort(table);
    });
    applyFilter();
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  ["agent-filter", "state-filter"].forEach(function (id) {
    const el = document.getElementById(id);
    if (el) el.addEventListener("input", applyFilter);
  });
  const filters = document.getElementById("agent-filters");
  if (filters) filters.addEventListener("submit", function (e) { e.preventDefault(); });

  const live = document.getElementById("live");
  if (live && live.dataset.refreshUrl) {
    const period = Math.max(1, parseFloat(live.dataset.refreshS || "10")) * 1000;
    const refresh = async function () {
      if (document.hidden) return;
      try {
        const response = await fetch(live.dataset.refreshUrl, { credentials: "same-origin", cache: "no-store" });
        if (response.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname)); return; }
        if (response.ok) {
          live.innerHTML = await response.text();
          wire(live);
          live.dataset.refreshedAt = String(Date.now());
        }
      } catch (err) {
        // central unreachable: keep the last view, try again next period
      }
    };
    window.setInterval(refresh, period);
  }
  wire(document);
})();
