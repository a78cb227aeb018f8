"""The HTML of the page. Every value from the database goes through `e()` (html.escape); the script and
style are static files, and the Content-Security-Policy header forbids any other script."""
from __future__ import annotations

import html
import re
import time
import urllib.parse
from typing import Any, Dict, List, Optional

REFRESH_S = 10  # the page's one refresh period: numbers, charts and tables together (ds2a/web/static/page.js)
STAGES = ("queue_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "output_ms", "latency_ms")


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(t: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def _doc(title: str, body: str, live: bool = False, root: str = "", db: bool = False,
         rights: Optional[List[str]] = None) -> str:
    """root: the way back to the site's top from this page ('' or '../'); links stay relative for proxies.
    rights: what the viewer may do (ds2a/web/actions.py); the script offers only those controls."""
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title><link rel=stylesheet href='{root}static/page.css'>"
            f"<script src='{root}static/page.js' defer></script></head><body data-live='{1 if live else 0}' "
            f"data-db='{1 if db else 0}' data-refresh='{REFRESH_S}' data-rights='{e(' '.join(rights or []))}'>"
            f"{body}</body></html>")


def swatch(colour: Optional[str]) -> str:
    """A class's colour as a small SVG square (a fill attribute: the page's CSP allows no inline style)."""
    if not colour or not re.fullmatch(r"#[0-9a-f]{6}", colour):
        return ""
    return (f"<svg class=sw width=12 height=12 aria-hidden=true><rect width=12 height=12 fill='{colour}' "
            "stroke='#57606a' stroke-width=1 /></svg> ")


def run_label(run_id: Any, started: Optional[float], status: Any, parts: Any) -> str:
    """A run as the picker names it (the viewed run's label is refreshed with the page's numbers)."""
    return f"run {run_id} · {_when(started)} · {status} · {parts} parts"


def _run_picker(runs: List[Dict[str, Any]], run_id: Optional[int], s: Optional[Dict[str, Any]] = None) -> str:
    """s: the viewed run's summary, so its label shows the same moment as the tiles."""
    def label(r: Dict[str, Any]) -> str:
        if s is not None and r["id"] == run_id:
            return run_label(r["id"], s["started"], s["status"], s["parts"])
        return run_label(r["id"], r["started_at"], r["status"], r["parts"])

    opts = "".join(f"<option value='{e(r['id'])}'{' selected' if r['id'] == run_id else ''}>{e(label(r))}</option>"
                   for r in runs)
    return (f"<form id=run-form method=get action='.'><label>run <select id=run name=run>{opts}</select></label>"
            "<noscript><button>show</button></noscript></form>")


def _tile(key: str, value: str, label: str, cls: str = "") -> str:
    return f"<div class='tile {cls}'><b data-k='{key}'>{value}</b><span>{e(label)}</span></div>"


def _counts(s: Dict[str, Any]) -> str:
    rate = "n/a" if s["pass_rate"] is None else f"{100.0 * s['pass_rate']:.1f}%"
    level = s["level"] or "part"
    return ("<section id=counts class=tiles>"
            + _tile("parts", e(s["parts"]), f"{level}s")
            + _tile("pass", e(s["pass"]), "PASS", "ok")
            + _tile("fail", e(s["fail"]), "FAIL", "bad")
            + _tile("pass_rate", e(rate), "pass rate")
            + _tile("frames", e(s["frames"]), "frames")
            + _tile("frames_fail", e(s["frames_fail"]), "FAIL frames")
            + _tile("dropped", e(s["dropped"] if s["dropped"] is not None else "?"), "dropped frames")
            + "</section>")


def defects_section(s: Dict[str, Any], colours: Optional[Dict[str, str]] = None) -> str:
    """The per-class table; each class with the colour the video and the chart give it."""
    colours = colours or {}
    rows = "".join(f"<tr data-class='{e(name)}'><td>{swatch(colours.get(name))}{e(name)}</td>"
                   f"<td>{e(d['regions'])}</td><td>{e(d['frames'])}</td><td>{e(round(d['area_px']))}</td>"
                   f"<td>{e('-' if d['area_mm2'] is None else format(d['area_mm2'], '.2f'))}</td></tr>"
                   for name, d in s["defects"].items()) or "<tr><td colspan=5>no defects</td></tr>"
    reasons = "".join(f"<li><b>{e(n)}</b> {e(r)}</li>" for r, n in sorted(s["fail_reasons"].items(),
                                                                        key=lambda kv: -kv[1]))
    return ("<h2>Defects per class</h2><table><thead><tr><th>class</th><th>regions</th>"
            f"<th>frames</th><th>area px</th><th>area mm²</th></tr></thead><tbody>{rows}</tbody></table>"
            + (f"<h2>Why parts failed</h2><ul id=reasons>{reasons}</ul>" if reasons else ""))


def _latency(s: Dict[str, Any]) -> str:
    rows = ""
    for stage in STAGES:
        st = s["latency_ms"].get(stage) or {}
        if st.get("count"):
            rows += (f"<tr><td>{e(stage[:-3])}</td><td>{e(st['count'])}</td>"
                     + "".join(f"<td>{e(format(st[k], '.1f'))}</td>" for k in ("median", "p90", "p99", "max"))
                     + "</tr>")
    rows = rows or "<tr><td colspan=6>no timings</td></tr>"
    return ("<section id=latency><h2>Latency (ms)</h2><table><thead><tr><th>stage</th><th>frames</th><th>p50</th>"
            f"<th>p90</th><th>p99</th><th>max</th></tr></thead><tbody>{rows}</tbody></table></section>")


def gallery(parts: List[Dict[str, Any]]) -> str:
    """The latest FAIL parts, one entry each, with the part's FAIL frames (data.failed_parts)."""
    items = ""
    for p in parts:
        frames = ""
        for f in p["frames"]:
            pic = (f"<img src='image/{e(f['id'])}/annotated' loading=lazy alt='frame {e(f['seq'])}'>"
                   if f["image_path"] else "<div class=noimg>no image saved</div>")
            frames += (f"<a class=fail href='failure/{e(f['id'])}' data-frame='{e(f['id'])}' "
                       f"title='{e('; '.join(f['reasons']))}'>{pic}<span>frame {e(f['seq'])}</span></a>")
        more = p["n_fail_frames"] - len(p["frames"])
        frames += f"<span class=more>+{e(more)} more FAIL frame(s)</span>" if more > 0 else ""
        frames = frames or "<span class=more>no FAIL frame recorded for this part</span>"
        items += (f"<div class=part data-part='{e(p['part_id'] or '')}'><h3>{e(p['part_id'] or 'part')} · FAIL "
                  f"<small>{e(_when(p['t_end']))} · {e(p['n_fail_frames'])} of {e(p['n_frames'])} frames FAIL"
                  f" · <a class=evidence href='evidence/{e(p['id'])}.zip'>evidence</a>"
                  f"</small></h3><p class=why>{e('; '.join(p['reasons']))}</p><div class=frames>{frames}</div></div>")
    return f"<h2>Recent failures <small>(latest FAIL parts)</small></h2><div class=gallery>{items or 'none'}</div>"


def shadow_rows(sh: Dict[str, Any]) -> str:
    """The latest parts where the shadow model disagrees with the live one (data.shadow_panel), live verdict first,
    with links to the live part's saved FAIL frames."""
    rows = ""
    for p in sh.get("pairs") or []:
        links = " ".join(f"<a href='failure/{e(f['id'])}'>frame {e(f['seq'])}</a>" for f in p["frames"]) or "-"
        rows += (f"<tr data-part='{e(p['part_id'])}'><td>{e(p['part_id'])}</td><td class=v>{e(p['live'])}</td>"
                 f"<td class=v>{e(p['shadow'])}</td><td>{e('; '.join(p['shadow_reasons']))}</td><td>{links}</td></tr>")
    return rows or "<tr><td colspan=5>no disagreement</td></tr>"


def shadow_section(sh: Optional[Dict[str, Any]]) -> str:
    """The shadow model (`ds2a inspect --shadow`, docs/SHADOW.md): recorded only, never the station's verdict."""
    if not sh:
        return ""
    rate = "n/a" if sh["agreement"] is None else f"{100.0 * sh['agreement']:.1f}%"
    return (f"<section id=shadow><h2>Shadow model <small>(recorded only, never the station's verdict)</small></h2>"
            f"<p class=meta>{e(sh['model'])}</p><p>agreement <b id=shadow-agreement>{e(rate)}</b> on "
            f"<b id=shadow-judged>{e(sh['judged'])}</b> judged of <b id=shadow-offered>{e(sh['offered'])}</b> parts "
            f"(<b id=shadow-sampled>{e(sh['sampled_out'])}</b> sampled out) · would have let through "
            f"<b id=shadow-let-through>{e(sh['n_let_through'])}</b> · would have rejected "
            f"<b id=shadow-rejected>{e(sh['n_rejected'])}</b></p><table><thead><tr><th>part</th><th>live</th>"
            "<th>shadow</th><th>shadow's reasons</th><th>live FAIL frames</th></tr></thead>"
            f"<tbody id=shadow-rows>{shadow_rows(sh)}</tbody></table></section>")


def _live() -> str:
    return ("<section id=live><h2>Live</h2><div class=livebox><img id=live-img src='live.jpg' alt='live view'>"
            "<div><div id=live-verdict class=verdict><small>last decided part</small> <span id=live-last-part>"
            "waiting for the first part</span> <b id=live-last-verdict></b></div>"
            "<p id=live-last class=meta></p>"
            "<p><small>in view (the picture)</small> part <b id=live-part>-</b> · frame <b id=live-seq>-</b>: "
            "<b id=live-frame-verdict>-</b> · <b id=live-fps>-</b> FPS</p>"
            "<p>this run: <b id=live-parts>0</b> parts, <b id=live-fail>0</b> FAIL</p>"
            "<p id=live-ended class=ended hidden></p></div></div>"
            "<p id=alarm class=alarm hidden><b>ALARM</b> <span id=alarm-text></span> <small id=alarm-count></small> "
            "<button id=alarm-ack type=button hidden>acknowledge</button></p><p id=alarm-msg class=meta role=status>"
            "</p></section>")


def _who(actions: Dict[str, Any]) -> str:
    """Who the page acts for, and a way out for a signed-in user."""
    who = actions.get("who") or {}
    role = who.get("role") or "view only"
    out = ("<form id=signout method=post action=logout><button type=submit>sign out</button></form>"
           if who.get("authenticated") else "")
    return f"<span id=who data-role='{e(who.get('role') or '')}'>{e(who.get('name'))} ({e(role)})</span>{out}"


def _recipe(state: Optional[Dict[str, Any]]) -> str:
    """The recipe in force; for a viewer who may switch it, the control (filled by page.js from api/recipes)."""
    if not state or not state.get("available"):
        return ""
    cur = state.get("current") or {}
    control = ""
    if state.get("may_switch"):
        opts = "".join(f"<option value='{e(n)}'{' selected' if n == cur.get('name') else ''}>{e(n)}</option>"
                       for n in state.get("names") or [])
        control = (f"<label>switch to <select id=recipe-select>{opts}</select></label> "
                   "<button id=recipe-switch type=button>switch</button>")
    return (f"<section id=recipe><h2>Recipe</h2><p>in force: <b id=recipe-name>{e(cur.get('name'))}</b> "
            f"<small id=recipe-sha>{e(str(cur.get('sha256') or '')[:12])}</small></p>{control}"
            "<p id=recipe-msg class=meta role=status></p></section>")


def overrides_list(s: Dict[str, Any]) -> str:
    """The run's overrides and doubts beside their originals (the verdicts above are never changed)."""
    items = ""
    for o in s.get("overrides") or []:
        what = f"{o['original']} -> {o['verdict']}" if o["kind"] == "override" else f"{o['original']}, doubtful"
        who = f"{o['user']} ({o['role']})" if o["role"] else f"{o['user']} (unverified)"
        items += (f"<li data-part='{e(o['part_id'])}' data-kind='{e(o['kind'])}'><b>{e(o['part_id'])}</b> {e(what)} "
                  f"by {e(who)} at {e(_when(o['t']))}: {e(o['reason'])}</li>")
    return items or "<li>none</li>"


def _review(s: Dict[str, Any], rights: List[str]) -> str:
    """Mark a part's verdict doubtful (operator) or override it (engineer); the original verdict stays."""
    controls = ""
    if "doubtful" in rights:
        verdicts = "".join(f"<option value={v}>{v}</option>" for v in ("PASS", "FAIL", "NONE"))
        controls = ("<p><label>part <input id=review-part autocomplete=off></label> <label>reason "
                    "<input id=review-reason autocomplete=off></label></p><p>"
                    "<button id=review-doubtful type=button>mark doubtful</button>"
                    + (f" <label>new verdict <select id=review-verdict>{verdicts}</select></label> "
                       "<button id=review-override type=button>override</button>" if "override" in rights else "")
                    + "</p><p id=review-msg class=meta role=status></p>")
    return (f"<section id=review><h2>Overrides and doubts <small>(the verdicts above are the originals)</small></h2>"
            f"{controls}<ul id=overrides>{overrides_list(s)}</ul></section>")


def _notify(notify: List[Dict[str, Any]]) -> str:
    items = "".join(f"<li{' class=bad' if n.get('undelivered') else ''}>{e(n.get('target'))}: {e(n.get('sent'))} sent, "
                    f"<b>{e(n.get('undelivered'))}</b> undelivered"
                    + (f" ({e(n.get('last_error'))})" if n.get("undelivered") and n.get("last_error") else "") + "</li>"
                    for n in notify)
    return f"<ul id=notify>{items}</ul>" if items else ""


def chart_urls(run_id: int, version: str) -> Dict[str, str]:
    """The charts of one snapshot: the version makes a new picture exactly when the numbers change."""
    return {name: f"chart/{name}.svg?" + urllib.parse.urlencode({"run": run_id, "v": version})
            for name in ("pass_rate", "defects")}


def overview(db: Optional[str], runs: List[Dict[str, Any]], run_id: Optional[int], s: Optional[Dict[str, Any]],
             fails: List[Dict[str, Any]], live: bool, notify: Optional[List[Dict[str, Any]]] = None,
             colours: Optional[Dict[str, str]] = None, version: str = "",
             actions: Optional[Dict[str, Any]] = None) -> str:
    """fails: data.failed_parts; colours: '#rrggbb' per class (charts.class_colours); version: data.version;
    actions: who views and may act, and the recipes (a station's page: ds2a/web/actions.py), else None."""
    rights: List[str] = list(((actions or {}).get("who") or {}).get("rights") or [])
    head = (f"<header><h1>ds2a station</h1><span class=db>{e(db or 'no --db: records not kept')}</span>"
            f"{_run_picker(runs, run_id, s) if runs else ''}{_who(actions) if actions else ''}</header>")
    body = head + (_live() if live else "") + (_recipe(actions.get("recipes")) if actions else "")
    if s is None:
        body += "<p class=empty>No runs recorded yet.</p>" if db else ""
        return _doc("ds2a station", body, live, db=False, rights=rights)
    rate = "n/a" if s["pass_rate"] is None else f"{100.0 * s['pass_rate']:.1f}%"
    urls = chart_urls(run_id or 0, version)
    body += (f"<section id=run data-run='{e(run_id)}' data-version='{e(version)}'><h2>Run {e(run_id)} <small "
             f"id=run-status><span data-k=status>{e(s['status'])}</span>, started {e(_when(s['started']))}</small></h2><p class=meta>model "
             f"{e(s['model'])} <span class=checks>({e(s.get('model_checks') or 'checks not recorded')})</span> · source "
             f"{e(s['source'])}</p>{_notify(notify or [])}</section>{_counts(s)}"
             f"<section id=trend><h2>Trend</h2><img id=chart-pass src='{e(urls['pass_rate'])}' alt='pass rate "
             f"{e(rate)}'><img id=chart-defects src='{e(urls['defects'])}' alt='defects per class'></section>"
             f"<section id=defects>{defects_section(s, colours)}</section>" + _latency(s)
             + f"<section id=failures>{gallery(fails)}</section>" + shadow_section(s.get("shadow"))
             + (_review(s, rights) if actions else ""))
    return _doc(f"ds2a · run {run_id} · {rate}", body, live, db=True, rights=rights)


def failure_page(f: Dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{e(d['class_name'])}</td><td>{e(round(d['area_px'] or 0))}</td>"
                   f"<td>{e('-' if d['area_mm2'] is None else format(d['area_mm2'], '.2f'))}</td>"
                   f"<td>{e(d['x'])},{e(d['y'])} {e(d['w'])}×{e(d['h'])}</td>"
                   f"<td>{e('-' if d['confidence'] is None else format(d['confidence'], '.2f'))}</td></tr>"
                   for d in f["defects"]) or "<tr><td colspan=5>no regions recorded</td></tr>"
    pic = (f"<a href='../image/{e(f['id'])}/raw' id=raw-link><img id=annotated src='../image/{e(f['id'])}/annotated' "
           "alt='annotated frame'></a><p><a href='../image/" + e(f["id"]) + "/raw'>raw image</a></p>"
           if f["image_path"] else "<p class=noimg>no image saved for this frame (run without --save-fail)</p>")
    body = (f"<header><h1><a href='../?run={e(f['run_id'])}'>ds2a station</a> · failure</h1></header>"
            f"<section id=failure data-frame='{e(f['id'])}'><h2>Frame {e(f['seq'])} · part {e(f['part_id'] or '-')} · "
            f"{e(f['verdict'])}</h2><p>{e(_when(f['t']))} · run {e(f['run_id'])}</p>"
            f"<ul id=why>{''.join(f'<li>{e(r)}</li>' for r in f['reasons'])}</ul>{pic}"
            "<h2>Defect regions</h2><table id=regions><thead><tr><th>class</th><th>area px</th><th>area mm²</th>"
            f"<th>box x,y w×h</th><th>confidence</th></tr></thead><tbody>{rows}</tbody></table></section>")
    return _doc(f"ds2a · failure frame {f['seq']}", body, root="../")


def message_page(title: str, text: str) -> str:
    return _doc(title, f"<header><h1>{e(title)}</h1></header><p>{e(text)}</p>")
