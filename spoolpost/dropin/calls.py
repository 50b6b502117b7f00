"""The capture calls of :class:`~spoolpost.Posthog` (posthog-python 7.x's
signatures and leniency), over its ``_call``; and posthog-python's context methods.

Inside a context (:mod:`spoolpost.events.contexts`), a call without a
``distinct_id`` takes the context's before deciding it is personless, as
posthog-python's ``get_identity_state`` does; the tags and ``$session_id`` are added
by the client's capture methods.
"""

from __future__ import annotations

import logging
import uuid as uuid_module
from collections.abc import Mapping
from typing import Any

from spoolpost.dropin.enrich import SYSTEM_PROPERTIES
from spoolpost.events.contexts import ContextApi, context_distinct_id, with_context_tags
from spoolpost.events.exceptions import (
    already_captured,
    exc_info_of,
    exception_properties,
    mark_captured,
)

__all__ = ["CaptureCalls"]

log = logging.getLogger("spoolpost")


def _or_context(distinct_id: Any) -> Any:
    if distinct_id is None or distinct_id == "":
        return context_distinct_id() or distinct_id
    return distinct_id


class CaptureCalls(ContextApi):
    """posthog-python's capture calls; the class using it implements :meth:`_call`."""

    def _call(self, method: str, summary: dict[str, Any], *args: Any, **kwargs: Any) -> str | None:
        raise NotImplementedError

    def capture(
        self,
        event: str,
        *,
        distinct_id: Any = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        uuid: Any = None,
        groups: Mapping[str, Any] | None = None,
        send_feature_flags: Any = False,
        flags: Any = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """posthog-python's ``capture``: returns the event's uuid once stored, or None.

        No ``distinct_id`` (None or ``""``): a personless event, as in posthog-python
        7.x: a random uuid4 id and ``$process_person_profile: false`` (unless the
        properties set it). ``$python_runtime`` and ``$python_version`` are added, as
        posthog-python's system context does. A bad ``uuid`` is replaced by a new one
        (ERROR), a bad ``timestamp`` by now (WARNING), an unencodable value is sent as
        null (WARNING naming its path). ``send_feature_flags``/``flags`` are ignored
        (spoolpost evaluates no flags; INFO). Never raises (``debug``: does)."""
        return self._capture("capture", event, distinct_id=distinct_id, properties=properties,
            timestamp=timestamp, uuid=uuid, groups=groups, send_feature_flags=send_feature_flags,
            flags=flags, disable_geoip=disable_geoip)  # fmt: skip

    def capture_ai(self, event: str, **kwargs: Any) -> str | None:
        """posthog-python 7.x's ``capture_ai``: :meth:`capture`'s arguments, event and
        answer, sent to PostHog's AI endpoint ``/i/v0/ai/batch/`` (v0 body, batches of
        AI events only, whatever the capture mode). A name without ``$ai_`` is sent
        there too (DEBUG, as posthog-python). Never raises (``debug``: does)."""
        if not (isinstance(event, str) and event.startswith("$ai_")):
            log.debug("capture_ai called with non-AI event name %r; sent to the AI endpoint", event)
        return self._capture("capture_ai", event, **kwargs)

    def capture_exception(self, exception: Any = None, **kwargs: Any) -> str | None:
        """posthog-python 7.x's ``capture_exception``: a ``$exception`` event for
        ``exception`` (an exception or an exc_info tuple; None: the one being
        handled, ``sys.exc_info()``), its properties built as posthog-python builds
        them (:mod:`spoolpost.events.exceptions`: ``$exception_list``,
        ``$exception_level``; the caller's ``properties`` win), with :meth:`capture`'s
        keyword arguments. Returns the event's uuid, or None: when there is no
        exception (WARNING), or it was captured before (by either library, as
        posthog-python marks it). Never raises, even with ``debug`` (as there)."""
        try:
            if exception is not None and already_captured(exception):
                log.debug("Exception already captured, skipping")
                return None
            info = exc_info_of(exception)
            if info is None:
                log.warning("No exception information available")
                return None
            kwargs.pop("_capture_metadata", None)  # posthog-python's integrations' channel
            properties = exception_properties(info, dict(kwargs.pop("properties", None) or {}))
            uid: str | None = self.capture("$exception", properties=properties, **kwargs)
            if exception is not None and uid is not None:
                mark_captured(exception, uid)
            return uid
        except Exception as exc:
            log.exception("Failed to capture exception: %s", exc)
            return None

    def _capture(
        self, method: str, event: str, *, distinct_id: Any = None,
        properties: Mapping[str, Any] | None = None, timestamp: Any = None, uuid: Any = None,
        groups: Mapping[str, Any] | None = None, send_feature_flags: Any = False,
        flags: Any = None, disable_geoip: bool | None = None,
    ) -> str | None:  # fmt: skip
        props = dict(properties or {})
        props.update(SYSTEM_PROPERTIES)
        distinct_id = _or_context(distinct_id)
        if distinct_id is None or distinct_id == "":
            distinct_id = str(uuid_module.uuid4())
            props.setdefault("$process_person_profile", False)
        if send_feature_flags or flags is not None:
            log.info("capture(send_feature_flags/flags) is ignored: spoolpost evaluates no flags")
        summary = {"event": event, "distinct_id": distinct_id, "properties": props}
        return self._call(
            method,
            summary,
            event,
            distinct_id=distinct_id,
            properties=props,
            timestamp=timestamp,
            uuid=uuid,
            groups=groups,
            disable_geoip=disable_geoip,
        )

    def _person(
        self, method: str, distinct_id: Any, properties: Mapping[str, Any] | None, **kw: Any
    ) -> str | None:
        distinct_id = _or_context(distinct_id)
        if distinct_id is None or distinct_id == "" or not with_context_tags(properties or {}):
            return None  # posthog-python: a personless or empty set() does nothing
        summary = {"event": f"${method}", "distinct_id": distinct_id, f"${method}": properties}
        return self._call(method, summary, distinct_id=distinct_id, properties=properties, **kw)

    def set(
        self,
        *,
        distinct_id: Any = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """posthog-python's ``set``: ``$set`` person ``properties``; None (nothing sent)
        without a ``distinct_id`` or with no properties. Never raises."""
        return self._person(
            "set",
            distinct_id,
            properties,
            timestamp=timestamp,
            uuid=uuid,
            disable_geoip=disable_geoip,
        )

    def set_once(
        self,
        *,
        distinct_id: Any = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """posthog-python's ``set_once``, as :meth:`set` for ``$set_once``."""
        return self._person(
            "set_once",
            distinct_id,
            properties,
            timestamp=timestamp,
            uuid=uuid,
            disable_geoip=disable_geoip,
        )

    def alias(
        self,
        previous_id: Any,
        distinct_id: Any,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """posthog-python's ``alias``: ``$create_alias``; None (WARNING) when either id
        is missing. Never raises."""
        distinct_id = _or_context(distinct_id)
        if previous_id in (None, "") or distinct_id in (None, ""):
            log.warning("alias() called without both ids, dropping the $create_alias event")
            return None
        summary = {"event": "$create_alias", "distinct_id": previous_id, "alias": distinct_id}
        return self._call(
            "alias", summary, previous_id, distinct_id, timestamp, uuid, disable_geoip
        )

    def group_identify(
        self,
        group_type: str,
        group_key: Any,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
        distinct_id: Any = None,
    ) -> str | None:
        """posthog-python's ``group_identify``: ``$groupidentify``, sent by
        ``distinct_id``, default a random uuid4 (as posthog-python 7.x); None (WARNING)
        without a group type or key. Never raises."""
        if not group_type or group_key in (None, ""):
            log.warning("group_identify() without a group type and key, dropping the event")
            return None
        distinct_id = _or_context(distinct_id)
        if distinct_id is None or distinct_id == "":
            distinct_id = str(uuid_module.uuid4())
        summary = {"event": "$groupidentify", "distinct_id": distinct_id, "group_key": group_key}
        args = (group_type, group_key, properties or {}, timestamp, uuid, disable_geoip)
        return self._call("group_identify", summary, *args, distinct_id)

    def identify(
        self,
        distinct_id: Any,
        properties: Mapping[str, Any] | None = None,
        *,
        timestamp: Any = None,
        uuid: Any = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """spoolpost's ``identify`` (``$identify``; posthog-python 7.x has none), the
        drop-in way: None (nothing sent) without a ``distinct_id``. Never raises."""
        distinct_id = _or_context(distinct_id)
        if distinct_id is None or distinct_id == "":
            return None
        summary = {"event": "$identify", "distinct_id": distinct_id}
        return self._call(
            "identify",
            summary,
            distinct_id,
            properties,
            timestamp=timestamp,
            uuid=uuid,
            disable_geoip=disable_geoip,
        )
