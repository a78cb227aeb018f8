// The page's only script (served from the package; the CSP header allows no other).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const picker = $("run");
  if (picker) picker.addEventListener("change", () => picker.form.submit());
  if (document.body.dataset.live !== "1") return;
  const img = $("live-img");
  const runBox = $("run");
  const set = (id, text) => { const el = $(id); if (el) el.textContent = text; };
  // the live picture: the next one is asked for only after the last arrived (at most ~4 per second)
  let seq = -1;
  function nextPicture() { setTimeout(() => { img.src = "live.jpg?t=" + Date.now(); }, 250); }
  img.addEventListener("load", nextPicture);
  img.addEventListener("error", () => setTimeout(nextPicture, 1000));
  async function poll() {
    try {
      const r = await fetch("api/live", {cache: "no-store"});
      const s = await r.json();
      seq = s.seq;
      // the banner is the latest part's verdict (what the line acts on); the picture carries its frame's
      const v = $("live-verdict");
      const lp = s.last_part && s.last_part.part_id ? s.last_part : null;
      v.textContent = !s.running ? "run ended" : lp ? lp.verdict + " " + lp.part_id : "waiting for the first part";
      v.className = "verdict " + (lp ? lp.verdict : "");
      set("live-frame-verdict", s.verdict || "-");
      set("live-seq", String(s.seq)); set("live-part", s.part_id || "-"); set("live-fps", String(s.fps));
      set("live-parts", String(s.parts)); set("live-fail", String(s.fail));
      if (s.last_part && s.last_part.part_id) {
        set("live-last", s.last_part.reasons.join("; "));
      }
    } catch (err) { set("live-verdict", "no connection to the station"); }
  }
  let chartsAt = Date.now();
  async function counts() {
    const run = document.getElementById("run") ? runBox.value : "";
    try {
      const r = await fetch("api/summary" + (run ? "?run=" + encodeURIComponent(run) : ""), {cache: "no-store"});
      if (!r.ok) return;
      const s = await r.json();
      for (const el of document.querySelectorAll("[data-k]")) {
        const k = el.dataset.k;
        if (k === "pass_rate") el.textContent = s.pass_rate === null ? "n/a" : (100 * s.pass_rate).toFixed(1) + "%";
        else if (k in s && s[k] !== null) el.textContent = String(s[k]);
      }
      if (Date.now() - chartsAt >= 30000) {  // the server redraws charts at most every 30 s
        chartsAt = Date.now();
        for (const id of ["chart-pass", "chart-defects"]) {
          const c = $(id); if (c) c.src = c.src.split("&t=")[0] + "&t=" + Date.now();
        }
      }
    } catch (err) { /* the next poll tries again */ }
  }
  setInterval(poll, 500); poll();
  setInterval(counts, 10000);
  void seq;
})();
