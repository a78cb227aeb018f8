"""TensorRT release numbers and the facts about them that no API can tell us.

What a release *can do* is read off the imported module (`ds2a.trt.features`); this module
keeps only what must be written down: how to read a version string, which release lines
ds2a targets, and which runtimes load a version-compatible engine.
"""
from __future__ import annotations

from typing import Dict, Tuple

from ..errors import UserError

Version = Tuple[int, int]
MIN_SUPPORTED: Version = (8, 5)  # name-based I/O (set_tensor_address, execute_async_v3) arrived in 8.5
TARGETS = ("8.5", "8.6", "10", "11")  # the lines `ds2a export --check-trt/--trt` names
JETPACK: Dict[Version, str] = {(8, 5): "JetPack 5.1.x", (8, 6): "JetPack 6.0", (10, 3): "JetPack 6.1/6.2",
                               (10, 13): "JetPack 7"}

# Version-compatible engines (BuilderFlag.VERSION_COMPATIBLE, built with 8.6 or newer) embed the
# lean runtime, so later releases load them. NVIDIA's "Version Compatibility" pages: within a
# major version a later release loads them (11.0 -> 11.1+); across majors "engines built with
# TensorRT 8 work with TensorRT 9 and TensorRT 10 runtimes" (10.x docs) and "engines built with
# TensorRT 10 work with TensorRT 11" (11.x docs). Runtime major -> builder majors it loads.
VC_MIN: Version = (8, 6)
VC_LOADS_FROM: Dict[int, Tuple[int, ...]] = {8: (8,), 9: (8, 9), 10: (8, 9, 10), 11: (10, 11)}


def parse_release(text: str) -> Tuple[int, ...]:
    """'10.13.3.9' -> (10, 13, 3, 9); 'v8.5' -> (8, 5). UserError for something that is not a version."""
    parts = [p for p in str(text).strip().lower().lstrip("v").split(".") if p != ""]
    try:
        nums = tuple(int(p) for p in parts)
    except ValueError:
        nums = ()
    if not nums:
        raise UserError(f"cannot read TensorRT version '{text}' (expected a number like 8.6, 10.3 or 10.13.3.9)")
    return nums


def parse_version(text: str) -> Version:
    """'10.13.3.9' -> (10, 13); '11' -> (11, 0). The one reader of TensorRT version strings."""
    nums = parse_release(text)
    return nums[0], nums[1] if len(nums) > 1 else 0


def version_text(v: Version) -> str:
    return f"{v[0]}.{v[1]}"


def require_supported(version: str) -> Version:
    """Refuse releases before 8.5 (no name-based I/O) with the fix; returns (major, minor)."""
    v = parse_version(version)
    if v < MIN_SUPPORTED:
        raise UserError(f"TensorRT {version} is too old for ds2a (needs 8.5 or newer, for name-based I/O): "
                        "upgrade JetPack to 5.1+ or install TensorRT 8.6/10.x (see deploy/README.md)")
    return v


def target_version(text: str) -> Version:
    """A release line named on the command line (`--trt 8.5`, `--check-trt 10`): one of TARGETS."""
    try:
        v = parse_version(text)
    except UserError:
        v = (0, 0)
    if v < MIN_SUPPORTED or v[0] == 9 or v[0] > 11:
        raise UserError(f"TensorRT {text} is not a target here; choose one of {', '.join(TARGETS)} "
                        f"(8.5 = JetPack 5.1, 8.6 = JetPack 6.0, 10.x = JetPack 6.1+/desktop, 11.x = desktop)")
    return v


def same_release(a: str, b: str) -> bool:
    """A standard engine loads only in the release that built it (major, minor, patch and build)."""
    pa, pb = str(a).strip().split("."), str(b).strip().split(".")
    n = min(len(pa), len(pb), 4)  # a version reported without its build number still compares
    return pa[:n] == pb[:n] and len(pa[:n]) >= 3


def _loads_from(runtime_major: int) -> Tuple[int, ...]:
    # A major not in the table yet: NVIDIA's pattern since 10 is "the previous major and its own".
    return VC_LOADS_FROM.get(runtime_major, (runtime_major - 1, runtime_major))


def vc_loadable(built: str, runtime: str) -> bool:
    """Whether TensorRT `runtime` loads a version-compatible engine built by TensorRT `built`."""
    b, r = parse_release(built), parse_release(runtime)
    if b[:2] < VC_MIN or r[:2] < VC_MIN:
        return False
    if b[0] == r[0]:
        return b <= r
    return b[0] in _loads_from(r[0])


def vc_runtimes(built: str) -> str:
    """Which releases load a version-compatible engine from `built`, in words (for messages and docs)."""
    b = parse_release(built)
    later = sorted(m for m in range(b[0] + 1, max(VC_LOADS_FROM) + 1) if b[0] in _loads_from(m) and m != 9)
    text = f"TensorRT {built} or a later {b[0]}.x"
    return text + (" or " + " / ".join(f"{m}.x" for m in later) if later else "")
