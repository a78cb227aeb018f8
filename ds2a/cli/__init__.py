"""The `ds2a` command: one verb per pipeline stage, each implemented in its own module.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`; it is imported
only when its verb is used, so `ds2a inspect` on a Jetson never imports torch.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sqlite3
import sys
import threading
from typing import IO, Dict, Iterator, List, Optional, Tuple

from ..errors import UserError

# verb -> (module, one-line help, example command lines)
COMMANDS: Dict[str, Tuple[str, str, str]] = {
    "synth": ("ds2a.cli.synth", "write a synthetic battery-defect dataset (M-BSD layout)",
              "ds2a synth data/synth --train 400 --test 100 --size 256x256 --seed 0"),
    "train": ("ds2a.cli.train", "train DS2A-Former (single process or torchrun DDP)",
              "ds2a train --model ds2a_tiny --data data/synth --out runs/tiny"),
    "eval": ("ds2a.cli.eval", "score a model (.pt/.onnx/.engine) or png predictions on a split",
             "ds2a eval --model ds2a/assets/demo/ds2a_tiny_synth.int8.onnx --data data/synth"),
    "convert-official": ("ds2a.cli.convert_official", "convert an official mmsegmentation checkpoint",
                         "ds2a convert-official ds2aformer_r18.pth r18.pt --arch r18"),
    "export": ("ds2a.cli.export", "export a checkpoint to ONNX (uint8 frames in, class map out)",
               "ds2a export runs/tiny/best.pt --out model.onnx"),
    "calibrate": ("ds2a.cli.calibrate", "make an INT8 (Q/DQ) or FP16 ONNX, calibrated on CPU",
                  "ds2a calibrate model.onnx --data data/synth --precision int8 --out model.int8.onnx"),
    "build-engine": ("ds2a.cli.build_engine", "build a TensorRT engine from an ONNX (on the device)",
                     "ds2a build-engine model.int8.onnx --out model.engine"),
    "inspect": ("ds2a.cli.inspect", "realtime inspection: source -> model -> verdicts + records",
                "ds2a inspect --model model.onnx --source demo:// --headless --max-frames 200"),
    "report": ("ds2a.cli.report", "summarise an inspection database",
               "ds2a report runs/inspect.sqlite --csv parts.csv"),
    "evidence": ("ds2a.cli.evidence", "one folder per part for an auditor: pictures, defects, rule, recipe, hashes",
                 "ds2a evidence runs/demo/inspect.sqlite --part cell-000003 --out evidence/"),
    "override": ("ds2a.cli.override", "overrule a part's verdict or mark it doubtful, with a reason (audited)",
                 "ds2a override runs/demo/inspect.sqlite --part cell-000003 --verdict PASS --reason \"dust\" --user ben"),
    "review": ("ds2a.cli.review", "mark wrong verdicts, confirm marks, export them as training data (audited)",
               "ds2a review mark runs/demo/inspect.sqlite --part cell-000003 --kind false_reject --note \"dust\" --user anna"),
    "web": ("ds2a.cli.web", "the operator's web page for an inspection database (read-only)",
            "ds2a web runs/demo/inspect.sqlite --bind 127.0.0.1:8080"),
    "bench": ("ds2a.cli.bench", "latency / accuracy benchmark across backends and precisions",
              "ds2a bench --model model.onnx --duration 10 --markdown bench.md"),
    "serve": ("ds2a.cli.serve", "host a model on Triton Inference Server for many stations (PyTriton)",
              "ds2a serve model.onnx --instances 2   # stations: --model triton://SERVER:8001/ds2a"),
    "export-triton": ("ds2a.cli.export_triton", "write a Triton model repository (config.pbtxt) for a model",
                      "ds2a export-triton model.onnx --repo triton_repo --name ds2a"),
    "doctor": ("ds2a.cli.doctor", "what this machine can run: GPU, TensorRT, CUDA, OpenCV", "ds2a doctor --model model.engine"),
}


# a third-party module a command may miss -> (what to call it, the pip extra that brings it; setup.cfg)
EXTRAS: Dict[str, Tuple[str, str]] = {
    "torch": ("PyTorch", "train"), "scipy": ("SciPy", "train"), "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"), "onnxslim": ("onnxslim", "export"), "modelopt": ("NVIDIA ModelOpt", "calib"),
    "onnx_graphsurgeon": ("onnx-graphsurgeon", "calib"), "polygraphy": ("polygraphy", "calib"), "lief": ("lief", "calib"),
    "matplotlib": ("matplotlib", "bench"), "aiohttp": ("aiohttp", "web"), "paho": ("paho-mqtt", "notify"),
    "pymodbus": ("pymodbus", "notify"), "tritonclient": ("tritonclient", "serve"), "pytriton": ("PyTriton", "serve"),
    "cuda": ("cuda-python", "trt"),
}
# the extras a command needs beyond the runtime (`make demo` installs only the runtime)
VERB_EXTRAS: Dict[str, Tuple[str, ...]] = {
    "train": ("train",), "convert-official": ("train",), "export": ("train", "export"), "calibrate": ("calib",),
    "bench": ("bench",), "web": ("web",), "serve": ("serve",), "export-triton": ("serve",),
}


def missing_extra(verb: str, exc: ModuleNotFoundError) -> Optional[str]:
    """'ds2a VERB needs X: pip install ...' for a missing optional package; None for anything else (a bug)."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    package, extra = EXTRAS[top]
    extras = VERB_EXTRAS.get(verb, ())
    extras = extras if extra in extras or (extra == "export" and "calib" in extras) else extras + (extra,)
    return f"{package} is not installed and `ds2a {verb}` needs it: pip install 'ds2a-edge[{','.join(extras)}]'"


def build_parser() -> argparse.ArgumentParser:
    epilog = "examples:\n" + "\n".join(f"  {ex}" for _, _, ex in COMMANDS.values())
    parser = argparse.ArgumentParser(
        prog="ds2a", description=__doc__.splitlines()[0],
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, (_, help_text, example) in COMMANDS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from .. import __version__

    return f"ds2a {__version__}"


def _command_parser(verb: str) -> Tuple[argparse.ArgumentParser, object]:
    module_name, help_text, example = COMMANDS[verb]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == "cv2":
            from ..opencv import MISSING

            print(f"ds2a {verb}: error: {MISSING}", file=sys.stderr)
            raise SystemExit(2) from None
        message = missing_extra(verb, exc)
        if message is None:
            raise
        print(f"ds2a {verb}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    parser = argparse.ArgumentParser(
        prog=f"ds2a {verb}", description=help_text, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser, module


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help", "--version"):
            valid = ", ".join(COMMANDS)
            parser.error(f"unknown command '{argv[0]}'; valid commands: {valid}")
        parser.parse_args(argv or ["--help"])
        return 0
    verb = argv[0]
    parser, module = _command_parser(verb)
    args = parser.parse_args(argv[1:])
    to_stderr = getattr(module, "messages_to_stderr", None)
    with _console(sys.stderr if to_stderr is not None and to_stderr(args) else sys.stdout):
        return _run(verb, module, args)


def _run(verb: str, module: object, args: argparse.Namespace) -> int:
    try:
        return int(module.run(args) or 0)  # type: ignore[attr-defined]
    except UserError as exc:
        print(f"ds2a {verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ds2a {verb}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # an optional package (torch, onnx, ...) the command imports when it runs
        message = missing_extra(verb, exc)
        if message is None or os.environ.get("DS2A_DEBUG"):
            raise
        print(f"ds2a {verb}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ds2a ... | head`: the reader left; say nothing more
        _silence_stdout()
        return 141
    except (OSError, sqlite3.Error) as exc:
        if os.environ.get("DS2A_DEBUG"):
            raise
        print(f"ds2a {verb}: error: {_environment_error(exc, args)} (DS2A_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2


class Console(logging.Handler):
    """The library's log records printed as the command's own lines: the bare message, info on
    `info` (stdout, or stderr for commands whose stdout is data), warnings and errors on stderr.

    A record may carry `end` (extra={"end": ""}) for a progress line that rewrites itself.
    """

    def __init__(self, info: IO[str], problems: IO[str]) -> None:
        super().__init__()
        self.info, self.problems = info, problems
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.problems if record.levelno >= logging.WARNING else self.info
            stream.write(self.format(record) + getattr(record, "end", "\n"))
            stream.flush()
        except BrokenPipeError:
            if threading.current_thread() is threading.main_thread():
                raise  # `ds2a ... | head`: main() ends quietly, as it did with print()
            self.handleError(record)  # a worker thread (records, notifiers) goes on
        except Exception:  # a full disk: logging reports it; the station goes on
            self.handleError(record)


@contextlib.contextmanager
def _console(info: IO[str]) -> Iterator[None]:
    """The "ds2a" logger prints through one Console for one `main()` call, then is left as it was
    (tests and host programs call main() many times)."""
    logger = logging.getLogger("ds2a")
    handler = Console(info, sys.stderr)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here, even when the host configured the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _environment_error(exc: BaseException, args: argparse.Namespace) -> str:
    """One line for a file-system or database failure, naming the path involved."""
    if isinstance(exc, OSError):
        paths = " -> ".join(f"'{p}'" for p in (exc.filename, exc.filename2) if p is not None)
        what = exc.strerror or str(exc) or type(exc).__name__
        return f"{paths}: {what}; check the path, its permissions and free space" if paths else \
            f"{what} ({type(exc).__name__}); check the paths given, their permissions and free space"
    db = getattr(args, "db", None)
    where = f"database '{db}'" if db else "the database"
    return f"{where}: {type(exc).__name__}: {exc}; check that it is a ds2a database that is not locked or damaged"


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not complain about the pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
