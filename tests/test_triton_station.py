"""`triton://` URLs: parsed, routed to the Triton backend by open_model, refused with the fix when malformed."""
from __future__ import annotations

import pytest

from ds2a.errors import UserError
from ds2a.runtime import backend_for, open_model
from ds2a.runtime.triton_backend import parse_url


@pytest.mark.parametrize("url, expected", [
    ("triton://gpu-server/ds2a", ("grpc", "gpu-server", 8001, "ds2a", {})),
    ("triton+grpc://10.0.0.5:9001/line3?timeout=2.5", ("grpc", "10.0.0.5", 9001, "line3", {"timeout": "2.5"})),
    ("triton+http://gpu-server/ds2a?version=2", ("http", "gpu-server", 8000, "ds2a", {"version": "2"})),
    ("TRITON://[::1]:8001/ds2a", ("grpc", "::1", 8001, "ds2a", {})),
])
def test_urls_parse(url, expected):
    assert parse_url(url) == expected
    assert backend_for(url) == "triton"


@pytest.mark.parametrize("url, message", [
    ("triton://gpu-server", "needs a host and one model name"),
    ("triton://:8001/ds2a", "needs a host and one model name"),
    ("triton://gpu-server/a/b", "needs a host and one model name"),
    ("triton://gpu-server:99999/ds2a", "port is not a number"),
    ("triton://gpu-server/ds2a?timeout=1&batch=4", "unknown option"),
])
def test_bad_urls_are_refused(url, message):
    with pytest.raises(UserError, match=message):
        parse_url(url)


def test_open_model_routes_urls_and_checks_options():
    pytest.importorskip("tritonclient.grpc")
    with pytest.raises(UserError, match="timeout=abc is not a number"):
        open_model("triton://127.0.0.1:1/ds2a?timeout=abc")
    with pytest.raises(UserError, match="more than 0 seconds"):
        open_model("triton://127.0.0.1:1/ds2a?timeout=0")
    with pytest.raises(UserError, match=r"cannot reach the Triton server at triton://127.0.0.1:1/ds2a"):
        open_model("triton://127.0.0.1:1/ds2a?timeout=2")
    with pytest.raises(UserError, match="drop --backend tensorrt"):
        backend_for("triton://h/ds2a", "tensorrt")


def test_the_loop_records_frames_while_the_model_is_away_as_not_inspected():
    """A served model that is away (ModelUnavailable) drops frames as NONE, never PASS, and the run goes on."""
    from fakes.segmenter import ThresholdSegmenter
    from test_inspect_loop import CLASSES, Collect, CounterSource, _loop

    from ds2a.runtime import ModelUnavailable

    class Flaky(ThresholdSegmenter):
        calls = 0

        def infer_batch(self, frames):
            Flaky.calls += 1
            if 3 <= Flaky.calls <= 5:
                raise ModelUnavailable("the model server triton://h/ds2a is unreachable; retrying in 0.5 s")
            return super().infer_batch(frames)

    out = Collect()
    loop = _loop(CounterSource(9, live=False), Flaky((16, 16), classes=CLASSES), out)
    stats = loop.run()
    verdicts = [r.verdict for r in out.results]
    assert verdicts[2:5] == ["NONE"] * 3 and "NONE" not in verdicts[:2] + verdicts[5:]
    assert all(r.class_map is None and "not inspected" in r.reasons[0] for r in out.results[2:5])
    assert stats.frames == 9 and stats.model_away == 3 and stats.dropped == 3
    assert any("model unavailable" in n for n in loop.notes) and any("model back" in n for n in loop.notes)
