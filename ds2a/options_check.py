"""Options dataclasses check their own field types: one check for every *Options, called from __post_init__.

The fields of InspectOptions, EvalOptions, BenchOptions... are the flags of their commands, and the CLI
always passes the right types. A Python caller may not: `outputs="out.mp4"` where a list is expected
would be iterated letter by letter (JPEG folders o/, u/, t/...), and `max_frames="5"` would fail deep
inside with a raw TypeError. Here every field is compared with its annotation once, at construction,
and a mismatch is a UserError naming the class, the field and what it must be. Paths (os.PathLike)
are accepted where text is expected and stored as str. Torch-free, Python 3.8.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import numbers
import os
import sys
import typing
from typing import Any, Dict, Tuple

from .errors import UserError

__all__ = ["check_fields"]

_HINTS: Dict[type, Dict[str, Any]] = {}
_LISTS = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _hints(cls: type) -> Dict[str, Any]:
    """The resolved annotations of `cls` (cached); one that cannot be resolved is not checked."""
    if cls not in _HINTS:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - a name only imported for type checkers: resolve field by field
            hints = {}
            module = vars(sys.modules.get(cls.__module__, typing))
            for klass in reversed(cls.__mro__):
                for name, text in getattr(klass, "__annotations__", {}).items():
                    try:
                        hints[name] = eval(text, dict(module), {}) if isinstance(text, str) else text  # noqa: S307
                    except Exception:  # noqa: BLE001
                        hints[name] = Any
        _HINTS[cls] = hints
    return _HINTS[cls]


def _is_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) is typing.Union and str in typing.get_args(tp))


def _paths_to_text(value: Any, tp: Any) -> Any:
    """os.PathLike where text (or a list of text) is expected, as str; anything else unchanged."""
    if isinstance(value, os.PathLike) and _is_text(tp):
        return os.fspath(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _paths_to_text(value, inner[0]) if len(inner) == 1 else value
    if origin in _LISTS and args and _is_text(args[0]) and isinstance(value, (list, tuple)) \
            and any(isinstance(v, os.PathLike) for v in value):
        return type(value)(os.fspath(v) if isinstance(v, os.PathLike) else v for v in value)
    return value


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any or isinstance(tp, typing.TypeVar):
        return True
    if tp is type(None) or tp is None:
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin in _LISTS:
        ok = isinstance(value, (list, tuple)) or (origin is not list and isinstance(value, collections.abc.Sequence)
                                                  and not isinstance(value, (str, bytes)))
        return ok and (not args or all(_matches(v, args[0]) for v in value))
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return not args or all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in _MAPS:
        return isinstance(value, collections.abc.Mapping) and (not args or all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()))
    if origin is collections.abc.Callable:
        return callable(value)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a typing construct not used by the options: not checked


def _describe(tp: Any) -> str:
    """An annotation as a reader would say it: 'a whole number or None', 'a list of text'."""
    names = {bool: "True or False", int: "a whole number", float: "a number", str: "text", type(None): "None"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin in _LISTS:
        return "a list" + (f" of {_plural(args[0])}" if args and args[0] is not Any else "")
    if origin is tuple:
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(set(args)) == 1:
                return f"a tuple of {len(args)} {_plural(args[0])}"
            return f"a tuple of {len(args)} ({', '.join(_describe(a) for a in args)})"
        return "a tuple"
    if origin in _MAPS:
        return "a dict"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    return f"a {getattr(tp, '__name__', str(tp))}"


def _plural(tp: Any) -> str:
    return {str: "text", int: "whole numbers", float: "numbers"}.get(tp, _describe(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_fields(obj: Any) -> None:
    """UserError for the first field of the dataclass `obj` whose value does not fit its annotation."""
    cls = type(obj)
    hints = _hints(cls)
    for f in dataclasses.fields(obj):
        tp = hints.get(f.name, Any)
        value = getattr(obj, f.name)
        fixed = _paths_to_text(value, tp)
        if fixed is not value:
            object.__setattr__(obj, f.name, fixed)  # frozen dataclasses too
        if _matches(fixed, tp):
            continue
        hint = ""
        if isinstance(value, str) and typing.get_origin(_optional_inner(tp)) in _LISTS:
            hint = f"; for one item give a list: {f.name}=[{_short(value)}]"
        raise UserError(f"{cls.__name__}.{f.name} is {_short(value)} ({type(value).__name__}); "
                        f"it must be {_describe(tp)}{hint}")


def _optional_inner(tp: Any) -> Any:
    args: Tuple[Any, ...] = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else ()
    inner = [a for a in args if a is not type(None)]
    return inner[0] if len(inner) == 1 else tp
