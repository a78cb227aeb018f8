"""Output files: checked before the work starts, never the same file as an input, written atomically.

Every command that writes a file the user named (`--json`, `--csv`, `--out`, `--markdown`,
`--plot`, `--db`, `--output`) calls `check_outputs` before its first minute of work, with every
input it reads, so a typo that points an output at an input (or a hard link or symlink of it)
or at a folder it cannot write fails at once with a one-line error. This is the one place that
keeps an output from replacing an input: an input given as a folder (a dataset, an image
folder) or a glob stands for every file in it, so an existing output inside an input folder,
or matched by an input glob, or a hard link of a file there, is refused too. Files are then written through
`atomic_write` / `atomic_path`: a temp file in the same folder, renamed over the target only
when complete, so a crash or a full disk never leaves half a file in place of a good one.
This is the only atomic writer: checkpoints, calibration caches, engines and their sidecars,
Triton repositories and every command's output files go through it.
"""
from __future__ import annotations

import contextlib
import glob
import os
import stat
import uuid
from typing import IO, Iterator, List, Optional, Sequence, Tuple, Union

from .errors import UserError

Named = Tuple[str, Optional[str]]  # (option as the user typed it, e.g. "--csv", path or None)
PathLike = Union[str, "os.PathLike[str]"]


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _resolve(label: str, path: PathLike) -> str:
    """Absolute path with the folder's symlinks resolved (and the file's own, when it is a link)."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path.strip():
        raise UserError(f"{label}: empty path; give a file name")
    if "\x00" in path:
        raise UserError(f"{label} {path!r}: the path contains a NUL byte; give a plain file name")
    real = os.path.realpath(path)
    if not os.path.basename(real):
        raise UserError(f"{label} {path}: give a file name, not a folder")
    return real


def _same(a: str, b: str) -> bool:
    """Same file: equal resolved paths, or (both existing) the same inode: catches hard links."""
    if os.path.normcase(a) == os.path.normcase(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_writable_dir(folder: str, label: str) -> None:
    """Create the folder and prove a file can be created there; UserError otherwise."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".ds2a-write-test-{uuid.uuid4().hex}")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write {label}: folder {folder}: {_why(exc)}; choose a writable folder") from None


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[") and not os.path.lexists(path)


def _input_files(label: str, path: str) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """(files, folders) one input stands for, resolved: a file itself, a folder (read recursively), or a glob
    (each match; a matched folder as a folder). URIs (demo://, rtsp://, triton://...) read no local file."""
    if "://" in path and not path.startswith("file://"):
        return [], []
    path = path[len("file://"):] if path.startswith("file://") else path
    names = sorted(glob.glob(path)) if _is_glob(path) else [path]
    files, folders = [], []
    for name in names:
        real = _resolve(label, name) if os.path.basename(os.path.realpath(name)) else os.path.realpath(name)
        (folders if os.path.isdir(real) else files).append((label if name == path else f"{label} {name}", real))
    return files, folders


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.normcase(path), os.path.normcase(folder)]) == os.path.normcase(folder)
    except ValueError:  # other drive (Windows)
        return False


def _linked_into(real: str, folders: Sequence[Tuple[str, str]]) -> Optional[Tuple[str, str]]:
    """(label, file) of a file in an input folder that is a hard link of `real` (only looked for when
    `real` has more than one link, so the walk is the rare case)."""
    try:
        st = os.stat(real)
    except OSError:
        return None
    if st.st_nlink < 2:
        return None
    for label, folder in folders:
        for root, _, names in os.walk(folder):
            for n in names:
                try:
                    other = os.stat(os.path.join(root, n))
                except OSError:
                    continue
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return label, os.path.join(root, n)
    return None


def check_outputs(outputs: Sequence[Named], inputs: Sequence[Named] = ()) -> List[str]:
    """Check output files before any work; returns their resolved absolute paths (None ones skipped).

    `inputs` are every file the command reads: files, folders (every file below them) and globs.
    Refused with a UserError naming the option: an empty path, a folder, a path whose folder
    cannot be created or written, an output that is the same file as an input (compared with
    os.path.samefile, so hard links and symlinks count), an existing file inside an input folder
    (or a hard link of one), or the same file as another output.
    """
    ins: List[Tuple[str, str]] = []
    folders: List[Tuple[str, str]] = []
    for in_label, p in inputs:
        if p is not None:
            files, dirs = _input_files(in_label, os.fspath(p))
            ins += files
            folders += dirs
    done: List[Tuple[str, str]] = []
    for label, path in outputs:
        if path is None:
            continue
        real = _resolve(label, path)
        if os.path.isdir(real):
            raise UserError(f"{label} {path} is a folder; give a file name inside it")
        for in_label, in_real in ins:
            if _same(real, in_real):
                raise UserError(f"{label} {path} is the same file as the input {in_label}; writing it would "
                                "destroy the input: choose another output path")
        if os.path.lexists(real):  # a new file cannot be an input; an existing one may be read from a folder
            for in_label, folder in folders:
                if _inside(real, folder):
                    raise UserError(f"{label} {path} is a file inside the input {in_label} {folder}, which is read: "
                                    "writing it would replace an input; choose an output path outside that folder")
            linked = _linked_into(real, folders)
            if linked:
                raise UserError(f"{label} {path} is the same file as {linked[1]} in the input {linked[0]} (a hard "
                                "link); writing it would destroy the input: choose another output path")
        for out_label, out_real in done:
            if _same(real, out_real):
                raise UserError(f"{label} {path} is the same file as {out_label}; give each output its own path")
        if os.path.lexists(real) and not os.path.isfile(real) and not _is_special(real):
            raise UserError(f"{label} {path} exists and is not a regular file; choose another path")
        check_writable_dir(os.path.dirname(real), f"{label} {path}")
        done.append((label, real))
    return [real for _, real in done]


def _is_special(path: str) -> bool:
    """A character device or a pipe (/dev/null, /dev/stdout): written in place, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


@contextlib.contextmanager
def atomic_path(path: PathLike, label: str = "output") -> Iterator[str]:
    """Yield a temp path (same folder, same extension) to write; it replaces `path` only on success.

    For libraries that write by file name (torch.save, onnx.save, savefig, cv2.imwrite). A symlink target
    is followed (the file it points at is replaced); /dev/null and pipes are written in place.
    """
    real = _resolve(label, path)
    if _is_special(real):
        yield real
        return
    folder = os.path.dirname(real)
    base, ext = os.path.splitext(os.path.basename(real))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {label} {path}: {_why(exc)}; choose a writable path") from None
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp{ext}")  # random: no other writer has it
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise UserError(f"{label} {path} was not written (nothing was produced); see the messages above")
        os.replace(tmp, real)
    except OSError as exc:
        _unlink(tmp)
        raise UserError(f"cannot write {label} {path}: {_why(exc)}; check free space and permissions") from None
    except BaseException:
        _unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", label: str = "output", **open_kw) -> Iterator[IO]:
    """`open(path, mode)` that leaves `path` untouched unless the whole body succeeds."""
    if "w" not in mode:
        raise ValueError("atomic_write is for writing ('w' or 'wb')")
    if "b" not in mode:
        open_kw.setdefault("encoding", "utf-8")
    with atomic_path(path, label) as tmp:
        try:
            fh = open(tmp, mode, **open_kw)  # noqa: SIM115 - closed below, before the rename
        except OSError as exc:
            raise UserError(f"cannot write {label} {path}: {_why(exc)}; choose a writable path") from None
        with fh:
            yield fh
            fh.flush()
            if not _is_special(tmp):
                os.fsync(fh.fileno())


def write_new(path: str, data: bytes) -> None:
    """Create `path` with `data`; never replaces an existing file (FileExistsError). OSError on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
