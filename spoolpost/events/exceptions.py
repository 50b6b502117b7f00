"""The properties of a ``$exception`` event, built as posthog-python 7.x builds them.

:func:`exception_properties` turns an exception (or ``sys.exc_info()``) into
PostHog's error-tracking properties: ``$exception_list`` (the caught exception
first, then each cause or context after its wrapper, then the members of an
exception group; at most 50 entries) and ``$exception_level`` (``error``). Each
entry has ``type``, ``value``, ``module``, a ``mechanism`` (``exception_id``,
``parent_id``, ``type`` ``generic`` for the root or ``chained``, ``handled``,
``source`` ``cause``/``context``/``member``, ``synthetic``) and a raw
``stacktrace`` of frames (``filename``, ``abs_path``, ``function``, ``module``,
``lineno``, five lines of source context each side, ``in_app`` False for
site-packages). The rules are posthog-python 7.91.1's
(``posthog/exception_utils.py``: ``exceptions_from_error_tuple``,
``serialize_frame``, ``construct_artificial_traceback``); a test compares the two.
spoolpost captures no code variables and no OpenTelemetry span ids.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import types
from typing import Any

__all__ = ["already_captured", "exception_properties", "mark_captured"]

#: At most this many exceptions in ``$exception_list`` (posthog-python's bound).
MAX_EXCEPTIONS = 50
#: Characters kept of a source line (posthog-python's ``DEFAULT_MAX_VALUE_LENGTH``).
MAX_LINE = 1024
#: Lines of source context on each side of a frame's line.
CONTEXT_LINES = 5
#: posthog-python's marks on an exception already captured: the same attributes, so
#: an exception is captured once whichever of the two libraries saw it first.
_CAPTURED, _UUID = "__posthog_exception_captured", "__posthog_exception_uuid"

ExcInfo = tuple[type[BaseException] | None, BaseException | None, types.TracebackType | None]


def already_captured(exception: object) -> bool:
    """True when ``exception`` (or an exc_info tuple's value) was captured before."""
    value = exception[1] if isinstance(exception, tuple) and len(exception) > 1 else exception
    return value is not None and hasattr(value, _CAPTURED)


def mark_captured(exception: object, uuid: str) -> None:
    """Mark ``exception`` as captured as the event ``uuid``."""
    value = exception[1] if isinstance(exception, tuple) and len(exception) > 1 else exception
    if isinstance(value, BaseException):
        setattr(value, _CAPTURED, True)
        setattr(value, _UUID, uuid)


def exc_info_of(exception: object) -> ExcInfo | None:
    """``(type, value, traceback)`` of ``exception`` (an exception, an exc_info tuple,
    or None for the one being handled: ``sys.exc_info()``); None when there is none.
    An exception that was never raised gets the current stack as its traceback, as in
    posthog-python (``synthetic`` in its mechanism). Raises ``ValueError`` for
    anything else."""
    if exception is None:
        info = sys.exc_info()
        return None if info[1] is None else info
    if isinstance(exception, tuple) and len(exception) == 3:
        return exception if exception[1] is not None else None
    if not isinstance(exception, BaseException):
        raise ValueError(f"Expected Exception object to report, got {type(exception)}!")
    if exception.__traceback__ is None:
        _synthesize_traceback(exception)
    return type(exception), exception, exception.__traceback__


def _synthesize_traceback(exception: BaseException) -> None:
    frames: list[types.FrameType] = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__") or "")
        if frames or not (module == "spoolpost" or module.startswith("spoolpost.")):
            frames.append(frame)  # spoolpost's own frames at the top are left out
        frame = frame.f_back
    tb = None
    for f in frames:
        tb = types.TracebackType(tb, f, f.f_lasti, f.f_lineno)
    if tb is not None:
        exception.__traceback__ = tb
        exception.__dict__["__spoolpost_synthetic_tb"] = tb


def exception_properties(info: ExcInfo, properties: dict[str, Any]) -> dict[str, Any]:
    """The ``$exception`` event's properties for ``info`` (:func:`exc_info_of`), with
    ``properties`` (the caller's) merged over them, as in posthog-python."""
    exc_type, value, tb = info
    entries: list[dict[str, Any]] = []
    _walk(exc_type, value, tb, entries, parent_id=0, source=None, seen=set())
    return {"$exception_list": entries, "$exception_level": "error", **properties}


def _walk(
    exc_type: type[BaseException] | None,
    value: BaseException | None,
    tb: types.TracebackType | None,
    entries: list[dict[str, Any]],
    *,
    parent_id: int,
    source: str | None,
    seen: set[int],
) -> None:
    """Append ``value``'s entry, then its cause or context, then its group members
    (depth first, bounded by :data:`MAX_EXCEPTIONS`)."""
    if value is not None:
        if id(value) in seen or len(entries) >= MAX_EXCEPTIONS:
            return
        seen.add(id(value))
    exception_id = len(entries)
    entries.append(_entry(exc_type, value, tb, exception_id, parent_id, source))
    if value is None:
        return
    if value.__suppress_context__:
        cause, relation = value.__cause__, "cause"
    else:
        cause, relation = value.__context__, "context"
    if cause is not None and len(entries) < MAX_EXCEPTIONS:
        _walk(type(cause), cause, cause.__traceback__, entries,
              parent_id=exception_id, source=relation, seen=seen)  # fmt: skip
    if isinstance(value, BaseExceptionGroup):
        for member in value.exceptions:
            if len(entries) >= MAX_EXCEPTIONS:
                break
            _walk(type(member), member, member.__traceback__, entries,
                  parent_id=exception_id, source="member", seen=seen)  # fmt: skip


def _entry(
    exc_type: type[BaseException] | None,
    value: BaseException | None,
    tb: types.TracebackType | None,
    exception_id: int,
    parent_id: int,
    source: str | None,
) -> dict[str, Any]:
    mechanism: dict[str, Any] = {"exception_id": exception_id}
    errno = getattr(value, "errno", None)
    if errno is not None:
        mechanism["meta"] = {"errno": {"number": errno}}
    if exception_id == 0:
        mechanism |= {"type": "generic", "handled": True}
    else:
        mechanism |= {"source": source, "parent_id": parent_id, "type": "chained"}
    synthetic = value is not None and value.__dict__.get("__spoolpost_synthetic_tb") is tb
    mechanism["synthetic"] = tb is not None and synthetic
    if isinstance(value, BaseExceptionGroup):
        mechanism["is_exception_group"] = True
    module = getattr(exc_type, "__module__", None)
    entry: dict[str, Any] = {
        "mechanism": mechanism,
        "module": None if module in (None, "builtins", "__builtins__") else module,
        "type": getattr(exc_type, "__qualname__", None) or getattr(exc_type, "__name__", None),
        "value": _message(value),
    }
    frames = [_frame(t.tb_frame, t.tb_lineno) for t in _stack(tb)]
    if frames:
        entry["stacktrace"] = {"frames": frames, "type": "raw"}
    return entry


def _message(value: BaseException | None) -> str:
    message = getattr(value, "message", "") or getattr(value, "detail", "") or value
    try:
        return str(message)
    except Exception:
        try:
            return repr(message)
        except Exception:
            return "<broken repr>"


def _stack(tb: types.TracebackType | None) -> list[types.TracebackType]:
    found = []
    while tb is not None:
        hidden = str(tb.tb_frame.f_globals.get("__name__", "")).startswith("sentry_sdk.")
        for flag in ("__traceback_hide__", "__tracebackhide__"):
            hidden = hidden or bool(tb.tb_frame.f_locals.get(flag, False))
        if not hidden:
            found.append(tb)
        tb = tb.tb_next
    return found


def _frame(frame: types.FrameType, lineno: int) -> dict[str, Any]:
    abs_path = frame.f_code.co_filename
    module = frame.f_globals.get("__name__")
    pre, line, post = _context(frame, abs_path, module, lineno - 1)
    rv: dict[str, Any] = {
        "platform": "python",
        "filename": _filename(module, abs_path) or None,
        "abs_path": os.path.abspath(abs_path) if abs_path else None,
        "function": frame.f_code.co_name or "<unknown>",
        "module": module,
        "lineno": lineno,
        "pre_context": pre,
        "context_line": line,
        "post_context": post,
    }
    if rv["abs_path"] and re.search(r"[\\/](?:dist|site)-packages[\\/]", rv["abs_path"]):
        rv["in_app"] = False
    return rv


def _filename(module: str | None, abs_path: str) -> str | None:
    if not abs_path or not module:
        return abs_path
    try:
        if abs_path.endswith(".pyc"):
            abs_path = abs_path[:-1]
        base = module.split(".", 1)[0]
        if base == module:
            return os.path.basename(abs_path)
        base_path = sys.modules[base].__file__
        if not base_path:
            return abs_path
        return abs_path.split(base_path.rsplit(os.sep, 2)[0], 1)[-1].lstrip(os.sep)
    except Exception:
        return abs_path


def _context(
    frame: types.FrameType, abs_path: str, module: str | None, lineno: int
) -> tuple[list[str], str | None, list[str]]:
    source: list[str] | None = None
    loader = frame.f_globals.get("__loader__")
    if module is not None and loader is not None and hasattr(loader, "get_source"):
        try:
            text = loader.get_source(module)
        except (ImportError, OSError):
            text = None
        if text is not None:
            source = text.splitlines()
    if source is None:
        try:
            source = linecache.getlines(abs_path)
        except OSError:
            return [], None, []
    if not source or not abs_path:
        return [], None, []
    low, high = max(0, lineno - CONTEXT_LINES), min(lineno + 1 + CONTEXT_LINES, len(source))
    try:
        line = _strip(source[lineno])
    except IndexError:  # the file changed since it was loaded
        return [], None, []
    before = [_strip(s) for s in source[low:lineno]]
    return before, line, [_strip(s) for s in source[lineno + 1 : high]]


def _strip(line: str) -> str:
    """A source line without its line break, cut to :data:`MAX_LINE` UTF-8 bytes."""
    line = line.strip("\r\n")
    try:
        encoded = line.encode("utf-8")
    except UnicodeEncodeError:
        return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."
    if len(encoded) <= MAX_LINE:
        return line
    return encoded[: MAX_LINE - 3].decode("utf-8", errors="ignore") + "..."
