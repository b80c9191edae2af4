// ScanFort dashboard: refresh the live part of the page in place, confirm dangerous forms.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (live && live.dataset.refreshUrl) {
    const period = Math.max(1, parseFloat(live.dataset.refreshS || "10")) * 1000;
    const refresh = async function () {
      if (document.hidden) return;
      try {
        const response = await fetch(live.dataset.refreshUrl, { credentials: "same-origin", cache: "no-store" });
        if (response.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname)); return; }
        if (response.ok) { live.innerHTML = await response.text(); live.dataset.refreshedAt = String(Date.now()); }
      } catch (err) {
        // central unreachable: keep the last view, try again next period
      }
    };
    window.setInterval(refresh, period);
  }
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
