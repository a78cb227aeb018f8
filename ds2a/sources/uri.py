"""Source URIs checked before anything is opened: schemes, the options each may carry and
their bounds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple
from urllib.parse import parse_qsl, urlsplit

from ..errors import UserError

# Options a URI may carry: name -> (type, smallest, largest). Bounds keep a typo such as
# width=60000 from allocating gigabytes or a negative seed from failing deep inside numpy.
Option = Tuple[type, float, float]
DEMO_OPTIONS: Dict[str, Option] = {"frames": (int, 1, 10**9), "fps": (float, 0.0, 1000.0),
                                   "seed": (int, 0, 2**32 - 1), "width": (int, 64, 7680),
                                   "height": (int, 64, 4320), "speed": (int, 1, 7680),
                                   "codes": (int, 0, 2)}  # codes: 1 QR, 2 Data Matrix on each cell
CSI_OPTIONS: Dict[str, Option] = {"width": (int, 64, 7680), "height": (int, 64, 4320),
                                  "fps": (int, 1, 1000), "flip": (int, 0, 7)}
DEMO_WIDTH, DEMO_SPEED = 1280, 96  # demo://'s defaults (ds2a/sources/demo.py)
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp", "srt")
FORMS = ("csi://N, v4l2:///dev/videoN, N, rtsp://..., http://..., gst://PIPELINE, file://PATH, "
         "a path/folder/glob, or demo://")


@dataclass
class SourceSpec:
    """A parsed, checked source URI: what to open, before anything is opened."""

    kind: str  # demo, csi, v4l2, stream, gst, path
    target: str  # sensor id, device, URL, pipeline or path
    options: Dict[str, float] = field(default_factory=dict)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _number_option(uri: str, key: str, text: str, option: Option) -> float:
    kind, lo, hi = option
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        raise UserError(f"source {uri}: '{key}={text}' is not {what}; options are numbers "
                        "(example: demo://?frames=300&fps=30)") from None
    if not lo <= value <= hi:  # also refuses NaN
        raise UserError(f"source {uri}: '{key}={text}' is out of range; give {what} from {lo:g} to {hi:g}")
    return value


def _options(uri: str, query: str, allowed: Dict[str, Option]) -> Dict[str, float]:
    """Query options checked against `allowed`; a misspelt one is refused, not ignored."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise UserError(f"source {uri}: cannot read the options '{query}'; write them as "
                        "?key=value&key=value") from None
    seen = set()
    for key, _ in pairs:
        if key in seen:  # dict() would keep the last one silently: frames=5&frames=6 is a typo, not a choice
            raise UserError(f"source {uri}: option '{_short(key)}' is given twice; give each option once")
        seen.add(key)
    q = dict(pairs)
    unknown = sorted(_short(k) for k in set(q) - set(allowed))
    if unknown:
        raise UserError(f"source {uri}: unknown option(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(sorted(allowed)) or 'none'}")
    return {k: _number_option(uri, k, v, allowed[k]) for k, v in q.items()}


def parse_source(uri: str) -> SourceSpec:
    """Check a source URI without opening anything; UserError names the option and the accepted forms."""
    uri = str(uri).strip()
    if not uri or not uri.isprintable():
        raise UserError(f"source {uri!r} is empty or holds control characters (NUL, newline...); use one of {FORMS}")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise UserError(f"source {uri}: {exc}; use one of {FORMS}") from None
    scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""  # 'C:' is a drive, not a scheme
    if scheme == "demo":
        spec = SourceSpec("demo", "", _options(uri, parts.query, DEMO_OPTIONS))
        width = int(spec.options.get("width", DEMO_WIDTH))
        speed = int(spec.options.get("speed", DEMO_SPEED))
        if speed > width:  # a belt moving more than a frame per frame: no cell would ever be whole in view
            given = "speed" in spec.options
            what = f"speed {speed}" if given else f"the default speed {speed} (pixels per frame)"
            fix = f"give speed=1..{width}" + ("" if given else f" with width={width}, e.g. speed={max(1, width // 8)}")
            raise UserError(f"source {uri}: {what} is more than the frame width {width}; {fix}")
        return spec
    if scheme == "csi":
        sensor = _number_option(uri, "sensor id", parts.netloc or "0", (int, 0, 15))
        return SourceSpec("csi", str(sensor), _options(uri, parts.query, CSI_OPTIONS))
    if scheme == "v4l2" or uri.isdigit():
        dev = uri if uri.isdigit() else (parts.path or parts.netloc)
        if not dev:
            raise UserError(f"source {uri}: name the device, for example v4l2:///dev/video0 or 0")
        return SourceSpec("v4l2", dev)
    if scheme in STREAM_SCHEMES:
        return SourceSpec("stream", uri)
    if scheme == "gst":  # gst://<any GStreamer pipeline ending in appsink>
        pipe = uri[len("gst://"):]
        if not pipe.strip():
            raise UserError(f"source {uri}: give a GStreamer pipeline ending in appsink after gst://")
        return SourceSpec("gst", pipe)
    if scheme == "file":
        return SourceSpec("path", parts.netloc + parts.path)
    if scheme:
        raise UserError(f"unknown source scheme '{scheme}' in {uri}; use {FORMS}")
    return SourceSpec("path", uri)
