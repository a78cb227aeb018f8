// The page's only script (served from the package; the CSP header allows no other).
// One refresh = one snapshot (api/snapshot): the tiles, the live part count, the tables and the charts
// of a refresh all come from the same read of the records (ds2a/web/data.py snapshot).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const set = (id, text) => { const el = $(id); if (el) el.textContent = text; };
  const picker = $("run");
  if (picker) picker.addEventListener("change", () => picker.form.submit());
  const section = document.querySelector("section#run");
  const viewedRun = section ? section.dataset.run : null;
  const hasDb = document.body.dataset.db === "1";
  const refreshMs = 1000 * Number(document.body.dataset.refresh || "5");
  const live = document.body.dataset.live === "1";
  const pinned = new URLSearchParams(location.search).has("run");  // the viewer picked a run
  let liveRun = null;
  let ended = false;

  function applySummary(s) {
    for (const el of document.querySelectorAll("[data-k]")) {
      const k = el.dataset.k;
      if (k === "pass_rate") {
        if ("pass_rate" in s) el.textContent = s.pass_rate === null ? "n/a" : (100 * s.pass_rate).toFixed(1) + "%";
      } else if (k in s && s[k] !== null) el.textContent = String(s[k]);
    }
  }
  function liveCounts(parts, fail) { set("live-parts", String(parts)); set("live-fail", String(fail)); }
  // the shadow model's panel (ds2a/web/page.py shadow_section): its numbers and disagreeing parts, as text only
  function applyShadow(sh) {
    if (!$("shadow") || !sh) return;
    set("shadow-agreement", sh.agreement === null ? "n/a" : (100 * sh.agreement).toFixed(1) + "%");
    set("shadow-judged", String(sh.judged)); set("shadow-offered", String(sh.offered));
    set("shadow-sampled", String(sh.sampled_out));
    set("shadow-let-through", String(sh.n_let_through)); set("shadow-rejected", String(sh.n_rejected));
    const key = JSON.stringify(sh.pairs || []);
    if (shown.shadow === key) return;
    shown.shadow = key;
    const body = $("shadow-rows");
    body.textContent = "";
    for (const p of sh.pairs || []) {
      const tr = document.createElement("tr");
      tr.dataset.part = p.part_id;
      for (const text of [p.part_id, p.live, p.shadow, (p.shadow_reasons || []).join("; ")]) {
        const td = document.createElement("td"); td.textContent = text === null ? "" : String(text); tr.appendChild(td);
      }
      const links = document.createElement("td");
      for (const f of p.frames || []) {
        const a = document.createElement("a"); a.href = "failure/" + encodeURIComponent(f.id);
        a.textContent = "frame " + f.seq + " "; links.appendChild(a);
      }
      if (!links.childNodes.length) links.textContent = "-";
      tr.appendChild(links); body.appendChild(tr);
    }
    if (!body.childNodes.length) {
      const tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = 5; td.textContent = "no disagreement"; tr.appendChild(td); body.appendChild(tr);
    }
  }

  function apply(snap) {
    if (ended) return;  // a refresh that was under way when the run ended must not undo its final numbers
    applySummary(snap.summary);
    applyShadow(snap.summary.shadow);
    if (picker && picker.selectedOptions.length) picker.selectedOptions[0].textContent = snap.run_label;
    if (!live && snap.summary.status !== "running" && refreshTimer !== null) clearInterval(refreshTimer);
    if (live && snap.live_run !== null && String(snap.live_run) === viewedRun) {
      liveCounts(snap.summary.parts, snap.summary.fail);  // the same numbers as the tiles
    }
    if (snap.version !== section.dataset.version) {
      section.dataset.version = snap.version;
      const pass = $("chart-pass"), defects = $("chart-defects");
      if (pass) pass.src = snap.charts.pass_rate;
      if (defects) defects.src = snap.charts.defects;
      for (const id of ["defects", "failures"]) {  // built and escaped by the server (ds2a/web/page.py)
        if (shown[id] !== snap.html[id]) { $(id).innerHTML = snap.html[id]; shown[id] = snap.html[id]; }
      }
    }
    // overrides and doubts do not change the run's version: their list is compared on every refresh
    if ($("overrides") && snap.html.overrides !== undefined && shown.overrides !== snap.html.overrides) {
      $("overrides").innerHTML = snap.html.overrides; shown.overrides = snap.html.overrides;
    }
  }
  const shown = {};  // the tables as last received: replaced only when they change (no picture reloaded)
  let refreshing = false;
  async function refresh() {
    if (!section || refreshing) return;
    refreshing = true;
    try {
      const r = await fetch("api/snapshot?run=" + encodeURIComponent(viewedRun), {cache: "no-store"});
      if (r.ok) apply(await r.json());
    } catch (err) { /* the next refresh tries again */ }
    refreshing = false;
  }
  // a run that is no longer running does not change: only a running one is refreshed
  const status = document.querySelector("[data-k=status]");
  const refreshTimer = section && (live || (status && status.textContent === "running"))
    ? setInterval(refresh, refreshMs) : null;

  // actions: offered by role (data-rights, ds2a/web/actions.py), checked again by the server, each one audited
  const rights = (document.body.dataset.rights || "").split(" ").filter(Boolean);
  async function post(path, body, msgId) {
    set(msgId, "…");
    try {
      const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                   body: JSON.stringify(body), cache: "no-store"});
      let answer = null;
      try { answer = await r.json(); } catch (err) { answer = null; }
      set(msgId, answer && answer.message ? answer.message : "refused (" + r.status + "): sign in again at /login");
      return r.ok;
    } catch (err) { set(msgId, "no connection to the station"); return false; }
  }
  async function showRecipe() {
    try {
      const r = await fetch("api/recipes", {cache: "no-store"});
      const s = await r.json();
      if (s.available && s.current) {
        set("recipe-name", s.current.name || "");
        set("recipe-sha", String(s.current.sha256 || "").slice(0, 12));
      }
    } catch (err) { /* the next refresh tries again */ }
  }
  const recipeButton = $("recipe-switch");
  if (recipeButton) recipeButton.addEventListener("click", async () => {
    await post("api/recipe", {name: $("recipe-select").value}, "recipe-msg");
    showRecipe();
  });
  if ($("recipe")) setInterval(showRecipe, refreshMs);
  function review(kind) {
    const body = {run: viewedRun, part_id: $("review-part").value.trim(), reason: $("review-reason").value.trim()};
    if (kind === "override") body.verdict = $("review-verdict").value;
    return post("api/" + kind, body, "review-msg").then((ok) => { if (ok) refresh(); });
  }
  for (const kind of ["doubtful", "override"]) {
    const b = $("review-" + kind);
    if (b) b.addEventListener("click", () => review(kind));
  }
  // review marks for training data (ds2a/records/review.py, docs/REVIEW.md): the same part and note as above;
  // an engineer confirms a mark by its number (`ds2a review list`); the server checks every role again
  const doubtButton = $("review-doubtful");
  if (doubtButton) {
    const row = doubtButton.parentElement;
    const button = (text, onClick) => {
      const b = document.createElement("button"); b.type = "button"; b.textContent = text;
      b.addEventListener("click", onClick); row.append(" ", b); return b;
    };
    for (const kind of ["false_reject", "missed_defect"]) {
      button("mark " + kind.replace("_", " "), () => post("api/mark", {run: viewedRun, part_id: $("review-part").value.trim(),
        kind: kind, note: $("review-reason").value.trim()}, "review-msg"));
    }
    if (rights.includes("override")) {
      const n = document.createElement("input"); n.id = "review-mark"; n.size = 4; n.placeholder = "mark #";
      row.append(" ", n);
      button("confirm mark", () => post("api/mark/" + encodeURIComponent(n.value.trim()) + "/confirm",
        {note: $("review-reason").value.trim()}, "review-msg"));
    }
  }
  const failures = $("failures");
  if (failures && $("review-part")) failures.addEventListener("click", (ev) => {  // a FAIL part's title picks it
    const h = ev.target.closest(".part h3");
    if (h && !ev.target.closest("a")) { $("review-part").value = h.parentElement.dataset.part; $("review-reason").focus(); }
  });
  const ack = $("alarm-ack");
  if (ack && rights.includes("acknowledge")) {
    ack.hidden = false;
    ack.addEventListener("click", () => post("api/alarm/ack", {}, "alarm-msg"));
  }
  if (!live) return;

  const img = $("live-img");
  // the live picture: the next one is asked for only after the last arrived (at most ~4 per second)
  function nextPicture() { if (!ended) setTimeout(() => { if (!ended) img.src = "live.jpg?t=" + Date.now(); }, 250); }
  img.addEventListener("load", nextPicture);
  img.addEventListener("error", () => setTimeout(nextPicture, 1000));
  // the first picture may have arrived (or failed) before this deferred script ran: start the loop anyway
  if (img.complete) setTimeout(nextPicture, img.naturalWidth > 0 ? 0 : 1000);

  function showEnded(e) {
    ended = true;
    clearInterval(pollTimer);
    if (refreshTimer !== null) clearInterval(refreshTimer);
    e = e || {};
    const rate = e.pass_rate === null || e.pass_rate === undefined ? "" :
      ", pass rate " + (100 * e.pass_rate).toFixed(1) + "%";
    const box = $("live-ended");
    box.textContent = "Run " + (e.run === null || e.run === undefined ? "" : e.run + " ") + "ended" +
      (e.status ? " (" + e.status + ")" : "") + ": " + e.parts + " parts, " + e.pass + " PASS, " + e.fail +
      " FAIL" + (e.none ? ", " + e.none + " NONE (not inspected)" : "") + rate + ", " + e.frames + " frames. The live view stopped with the run; the records stay in " +
      "the database (ds2a web DB shows them).";
    box.hidden = false;
    $("live").classList.add("ended");
    liveCounts(e.parts, e.fail);
    if (e.status && e.run !== null && String(e.run) === viewedRun) {  // the final numbers
      applySummary(e);
      if (e.label && picker && picker.selectedOptions.length) picker.selectedOptions[0].textContent = e.label;
    }
  }

  async function poll() {
    if (ended) return;
    try {
      const r = await fetch("api/live", {cache: "no-store"});
      const s = await r.json();
      liveRun = s.run;
      // two parts can be on screen: the last one decided (what the line acts on) and the one in view now
      const lp = s.last_part && s.last_part.part_id ? s.last_part : null;
      set("live-last-part", lp ? lp.part_id : "waiting for the first part");
      set("live-last-verdict", lp ? lp.verdict : "");
      set("live-last", lp ? lp.reasons.join("; ") : "");
      $("live-verdict").className = "verdict " + (lp ? lp.verdict : "");
      // "in view": the frame of the picture on screen (the newest frame may already be another part)
      const f = s.shown || {seq: s.seq, part_id: s.part_id, verdict: s.verdict};
      set("live-frame-verdict", f.verdict || "-");
      set("live-seq", String(f.seq)); set("live-part", f.part_id || "-"); set("live-fps", String(s.fps));
      if (!hasDb || liveRun === null || String(liveRun) !== viewedRun) liveCounts(s.parts, s.fail);
      const alarm = s.alarm || {};
      const box = $("alarm");
      if (box && alarm.active) {
        set("alarm-text", alarm.text); set("alarm-count", alarm.count > 1 ? "(" + alarm.count + " alarms)" : "");
        box.hidden = false;
      } else if (box && !box.hidden && !alarm.active) box.hidden = true;
      // the run being inspected is not the one on the page (opened before it was recorded, or an older
      // run was the latest then): show it, once per run, unless the viewer picked a run
      if (s.running && liveRun !== null && String(liveRun) !== viewedRun && !pinned) {
        const key = "ds2a-shown-run-" + liveRun;
        if (!sessionStorage.getItem(key)) { sessionStorage.setItem(key, "1"); location.reload(); }
      }
      if (!s.running) showEnded(s.ended);
    } catch (err) {
      if (!ended) { set("live-last-part", "no connection to the station"); set("live-last-verdict", ""); }
    }
  }
  const pollTimer = setInterval(poll, 500);
  poll();
  refresh();
})();
