"""posthog-python 7.x's contexts (``posthog/contexts.py``): a scope, entered with
:func:`new_context` (or :func:`scoped`), that supplies a distinct id
(:func:`identify_context`), a session (:func:`set_context_session`) and tags
(:func:`tag`) to the captures made inside it.

Kept in a :class:`contextvars.ContextVar`, so each thread and each asyncio task has its
own current scope. A nested scope inherits its parent's distinct id, session, device id
and tags unless ``fresh=True``; a child's tag wins over its parent's. What a capture
gets, as in posthog-python (``add_context_tags``, ``get_identity_state``):

- ``capture``: the tags under the event's properties (a property wins over a tag of
  the same name), ``$context_tags`` (the tag names, sorted; posthog-python sends a
  set in no fixed order), ``$session_id`` unless the properties have one, and the
  context's distinct id when the call gives none;
- ``set``/``set_once``: the same, in ``$set``/``$set_once``;
- ``alias``, ``group_identify``: the context's distinct id when none is given, and
  ``$session_id``.

Exception capture (``capture_exceptions``) is accepted and ignored: spoolpost has
no exception autocapture. ``capture_exceptions=True`` logs one INFO line per process;
the exception propagates unchanged either way.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

__all__ = [
    "ContextApi",
    "ContextScope",
    "context_distinct_id",
    "context_session_id",
    "get_context_device_id",
    "get_context_distinct_id",
    "get_context_session_id",
    "get_tags",
    "identify_context",
    "new_context",
    "scoped",
    "set_context_device_id",
    "set_context_session",
    "tag",
    "with_context_tags",
]

log = logging.getLogger("spoolpost")

_F = TypeVar("_F", bound=Callable[..., Any])


class ContextScope:
    """One scope: what was set in it, and its ``parent`` (not read when ``fresh``)."""

    def __init__(self, parent: ContextScope | None, fresh: bool) -> None:
        self.parent = None if fresh else parent
        self.distinct_id: str | None = None
        self.session_id: str | None = None
        self.device_id: str | None = None
        self.tags: dict[str, Any] = {}

    def _inherited(self, name: str) -> str | None:
        scope: ContextScope | None = self
        while scope is not None:
            value: str | None = getattr(scope, name)
            if value is not None:
                return value
            scope = scope.parent
        return None

    def collect_tags(self) -> dict[str, Any]:
        """The tags of this scope and its ancestors; a child's tag wins."""
        tags = self.parent.collect_tags() if self.parent is not None else {}
        tags.update(self.tags)
        return tags


_current: contextvars.ContextVar[ContextScope | None] = contextvars.ContextVar(
    "spoolpost_context", default=None
)
_told_exceptions = False


def _after_fork_in_child() -> None:
    _current.set(None)  # posthog-python, too, starts a forked child without a context


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def new_context(
    fresh: bool = False, capture_exceptions: bool | None = None, client: object = None
) -> Iterator[None]:
    """Enter a new scope for the ``with`` block: it inherits the current scope's
    distinct id, session, device id and tags unless ``fresh``. ``capture_exceptions``
    and ``client`` are accepted for posthog-python compatibility; exceptions are never
    captured (``capture_exceptions=True``: one INFO line per process)."""
    global _told_exceptions
    if capture_exceptions and not _told_exceptions:
        _told_exceptions = True
        log.info("new_context(capture_exceptions=True) is accepted and ignored by spoolpost")
    token = _current.set(ContextScope(_current.get(), fresh))
    try:
        yield
    finally:
        _current.reset(token)


def scoped(fresh: bool = False, capture_exceptions: bool | None = None) -> Callable[[_F], _F]:
    """Decorator: run the function (sync or async) inside :func:`new_context`."""

    def decorate(func: _F) -> _F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with new_context(fresh, capture_exceptions):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with new_context(fresh, capture_exceptions):
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]

    return decorate


def tag(name: str, value: Any) -> None:
    """Add a tag to the current scope (outside any scope: nothing, as posthog-python)."""
    scope = _current.get()
    if scope is not None:
        scope.tags[name] = value


def get_tags() -> dict[str, Any]:
    """A copy of the current scope's tags, inherited ones included ({} outside)."""
    scope = _current.get()
    return scope.collect_tags() if scope is not None else {}


def identify_context(distinct_id: str) -> None:
    """Set the distinct id of the current scope and its children."""
    scope = _current.get()
    if scope is not None:
        scope.distinct_id = distinct_id


def set_context_session(session_id: str) -> None:
    """Set the session id (``$session_id``) of the current scope and its children."""
    scope = _current.get()
    if scope is not None:
        scope.session_id = session_id


def set_context_device_id(device_id: str) -> None:
    """Set the device id of the current scope (posthog-python uses it for feature
    flags only; spoolpost keeps it and sends nothing)."""
    scope = _current.get()
    if scope is not None:
        scope.device_id = device_id


def get_context_distinct_id() -> str | None:
    scope = _current.get()
    return scope._inherited("distinct_id") if scope is not None else None


def get_context_session_id() -> str | None:
    scope = _current.get()
    return scope._inherited("session_id") if scope is not None else None


def get_context_device_id() -> str | None:
    scope = _current.get()
    return scope._inherited("device_id") if scope is not None else None


context_distinct_id = get_context_distinct_id
context_session_id = get_context_session_id


def with_context_tags(properties: Any) -> Any:
    """posthog-python's ``add_context_tags``: ``properties`` (a mapping or None) with
    the current scope's tags under them, ``$context_tags`` and ``$session_id``.
    Outside any scope, or when ``properties`` is not a mapping (the builder refuses
    it), ``properties`` itself."""
    scope = _current.get()
    if scope is None or not (properties is None or isinstance(properties, Mapping)):
        return properties
    merged = scope.collect_tags()
    names = sorted(merged)
    merged.update(properties or {})
    merged["$context_tags"] = names
    session = scope._inherited("session_id")
    if session and "$session_id" not in merged:
        merged["$session_id"] = session
    return merged


class ContextApi:
    """posthog-python's context methods on a client (``Client``, ``Posthog``): the
    same scopes as the module functions, shared by every client."""

    def new_context(
        self, fresh: bool = False, capture_exceptions: bool | None = None
    ) -> AbstractContextManager[None]:
        """:func:`new_context`."""
        return new_context(fresh, capture_exceptions, self)

    def scoped(
        self, fresh: bool = False, capture_exceptions: bool | None = None
    ) -> Callable[[_F], _F]:
        """:func:`scoped`."""
        return scoped(fresh, capture_exceptions)

    def tag(self, name: str, value: Any) -> None:
        """:func:`tag`."""
        tag(name, value)

    def get_tags(self) -> dict[str, Any]:
        """:func:`get_tags`."""
        return get_tags()

    def identify_context(self, distinct_id: str) -> None:
        """:func:`identify_context`."""
        identify_context(distinct_id)

    def set_context_session(self, session_id: str) -> None:
        """:func:`set_context_session`."""
        set_context_session(session_id)

    def set_context_device_id(self, device_id: str) -> None:
        """:func:`set_context_device_id`."""
        set_context_device_id(device_id)
