"""The HTML of the page. Every value from the database goes through `e()` (html.escape); the script and
style are static files, and the Content-Security-Policy header forbids any other script."""
from __future__ import annotations

import html
import time
import urllib.parse
from typing import Any, Dict, List, Optional

STAGES = ("queue_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "output_ms", "latency_ms")


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(t: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def _doc(title: str, body: str, live: bool = False, root: str = "") -> str:
    """root: the way back to the site's top from this page ('' or '../'); links stay relative for proxies."""
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title><link rel=stylesheet href='{root}static/page.css'>"
            f"<script src='{root}static/page.js' defer></script></head><body data-live='{1 if live else 0}'>"
            f"{body}</body></html>")


def _run_picker(runs: List[Dict[str, Any]], run_id: Optional[int]) -> str:
    opts = "".join(f"<option value='{e(r['id'])}'{' selected' if r['id'] == run_id else ''}>run {e(r['id'])} · "
                   f"{e(_when(r['started_at']))} · {e(r['status'])} · {e(r['parts'])} parts</option>" for r in runs)
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


def _defects(s: Dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{e(name)}</td><td data-k='regions:{e(name)}'>{e(d['regions'])}</td><td>{e(d['frames'])}</td>"
                   f"<td>{e(round(d['area_px']))}</td>"
                   f"<td>{e('-' if d['area_mm2'] is None else format(d['area_mm2'], '.2f'))}</td></tr>"
                   for name, d in s["defects"].items()) or "<tr><td colspan=5>no defects</td></tr>"
    reasons = "".join(f"<li><b>{e(n)}</b> {e(r)}</li>" for r, n in sorted(s["fail_reasons"].items(),
                                                                        key=lambda kv: -kv[1]))
    return ("<section id=defects><h2>Defects per class</h2><table><thead><tr><th>class</th><th>regions</th>"
            f"<th>frames</th><th>area px</th><th>area mm²</th></tr></thead><tbody>{rows}</tbody></table>"
            + (f"<h2>Why parts failed</h2><ul id=reasons>{reasons}</ul>" if reasons else "") + "</section>")


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


def _gallery(fails: List[Dict[str, Any]]) -> str:
    items = ""
    for f in fails:
        pic = (f"<img src='image/{e(f['id'])}/annotated' loading=lazy alt='frame {e(f['seq'])}'>" if f["image_path"]
               else "<div class=noimg>no image saved</div>")
        items += (f"<a class=fail href='failure/{e(f['id'])}' data-frame='{e(f['id'])}'>{pic}<span>{e(f['part_id'] or '')} "
                  f"· frame {e(f['seq'])} · {e(_when(f['t']))}</span><small>{e('; '.join(f['reasons']))}</small></a>")
    return (f"<section id=failures><h2>Recent failures</h2><div class=gallery>{items or 'none'}</div></section>")


def _live() -> str:
    return ("<section id=live><h2>Live</h2><div class=livebox><img id=live-img src='live.jpg' alt='live view'>"
            "<div><div id=live-verdict class=verdict>waiting for the first part</div>"
            "<p>frame <b id=live-seq>-</b> (<b id=live-frame-verdict>-</b>) · part in view <b id=live-part>-</b> · "
            "<b id=live-fps>-</b> FPS</p>"
            "<p>this run: <b id=live-parts>0</b> parts, <b id=live-fail>0</b> FAIL</p>"
            "<p id=live-last class=meta></p></div></div></section>")


def _notify(notify: List[Dict[str, Any]]) -> str:
    items = "".join(f"<li{' class=bad' if n.get('undelivered') else ''}>{e(n.get('target'))}: {e(n.get('sent'))} sent, "
                    f"<b>{e(n.get('undelivered'))}</b> undelivered"
                    + (f" ({e(n.get('last_error'))})" if n.get("undelivered") and n.get("last_error") else "") + "</li>"
                    for n in notify)
    return f"<ul id=notify>{items}</ul>" if items else ""


def overview(db: Optional[str], runs: List[Dict[str, Any]], run_id: Optional[int], s: Optional[Dict[str, Any]],
             fails: List[Dict[str, Any]], live: bool, notify: Optional[List[Dict[str, Any]]] = None) -> str:
    head = (f"<header><h1>ds2a station</h1><span class=db>{e(db or 'no --db: records not kept')}</span>"
            f"{_run_picker(runs, run_id) if runs else ''}</header>")
    body = head + (_live() if live else "")
    if s is None:
        body += "<p class=empty>No runs recorded yet.</p>" if db else ""
        return _doc("ds2a station", body, live)
    q = urllib.parse.urlencode({"run": run_id})
    rate = "n/a" if s["pass_rate"] is None else f"{100.0 * s['pass_rate']:.1f}%"
    body += (f"<section id=run data-run='{e(run_id)}'><h2>Run {e(run_id)} <small>{e(s['status'])}, started "
             f"{e(_when(s['started']))}</small></h2><p class=meta>model {e(s['model'])} · source {e(s['source'])}</p>"
             f"{_notify(notify or [])}</section>{_counts(s)}"
             f"<section id=trend><h2>Trend</h2><img id=chart-pass src='chart/pass_rate.svg?{e(q)}' alt='pass rate "
             f"{e(rate)}'><img id=chart-defects src='chart/defects.svg?{e(q)}' alt='defects per class'></section>"
             + _defects(s) + _latency(s) + _gallery(fails))
    return _doc(f"ds2a · run {run_id} · {rate}", body, live)


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
