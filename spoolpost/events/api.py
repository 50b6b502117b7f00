"""The PostHog-shaped capture methods: argument forms and their documentation.

The capture methods take current posthog-python's (7.x) call forms:
``capture(event, *, distinct_id, properties=…, timestamp=…, uuid=…, groups=…,
disable_geoip=…)`` and ``set``/``set_once(*, distinct_id, properties, …)`` take
everything by keyword, so the old ``capture(distinct_id, event)`` order raises
``TypeError`` instead of silently swapping the two; ``alias`` and
``group_identify`` keep posthog-python's positional order. Two posthog-python options
have no meaning here and are refused with ``TypeError`` when they ask for
something (a false value is accepted): ``send_feature_flags`` and ``flags``,
because spoolpost does not evaluate feature flags, and a flag value looked up
at send time, maybe days later from the spool, would be wrong.

:class:`CaptureApi` holds the methods; each builds its event with a builder from
:mod:`spoolpost.events.build` through one :meth:`CaptureApi._emit`, which
:class:`~spoolpost.client.Client` implements (capture pipeline, then delivery).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from spoolpost.events import build as ev
from spoolpost.events.contexts import (
    ContextApi,
    context_distinct_id,
    context_session_id,
    with_context_tags,
)
from spoolpost.events.timestamps import Timestamp

#: The lane of :meth:`CaptureApi.capture_ai` events: the spool's ``AI_LANE`` (events/
#: imports nothing of the spool; a test keeps the two equal).
AI_LANE = "ai"

__all__ = ["CaptureApi", "refuse_feature_flags"]


def refuse_feature_flags(send_feature_flags: object, flags: object) -> None:
    """Raise ``TypeError`` when ``send_feature_flags`` is true or ``flags`` is not None
    (posthog-python's options that spoolpost refuses; see the module docstring)."""
    if send_feature_flags:
        raise TypeError(
            "capture(send_feature_flags=...) is not supported: spoolpost does not evaluate "
            "feature flags. Put the flag values you branched on in properties, e.g. "
            '{"$feature/my-flag": "variant"}.'
        )
    if flags is not None:
        raise TypeError(
            "capture(flags=...) is not supported: spoolpost does not evaluate feature "
            'flags. Put the flag values in properties, e.g. {"$feature/my-flag": "variant"}.'
        )


def _or_context(distinct_id: Any) -> Any:
    """``distinct_id``, or the current context's when it is None or empty."""
    if distinct_id is None or distinct_id == "":
        return context_distinct_id() or distinct_id
    return distinct_id


def _with_session(build: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``build``, adding the current context's ``$session_id`` to the properties."""
    session = context_session_id()
    if not session:
        return build

    def build_in_session(*args: Any, **kwargs: Any) -> dict[str, Any]:
        event = build(*args, **kwargs)
        event["properties"]["$session_id"] = str(session)
        return event

    return build_in_session


class CaptureApi(ContextApi):
    """The capture methods of :class:`~spoolpost.client.Client`, over :meth:`_emit`.

    Inside a context (:mod:`spoolpost.events.contexts`), a call without a
    ``distinct_id`` takes the context's, and tags and ``$session_id`` are added as
    posthog-python 7.x adds them."""

    #: The public capture methods.
    METHODS = ("capture", "capture_ai", "identify", "set", "set_once", "alias", "group_identify")

    disabled: bool

    def _emit(
        self,
        build: Callable[..., dict[str, Any]],
        disable_geoip: bool | None,
        *args: Any,
        lane: str | None = None,
    ) -> str | None:
        """Build an event with ``build(*args, now=…, disable_geoip=…)`` and write it
        on ``lane`` (None: analytics; ``"ai"``: PostHog's AI endpoint); return its
        uuid, or None when it was dropped (or nothing was captured)."""
        raise NotImplementedError

    def capture(
        self,
        event: str,
        *,
        distinct_id: ev.DistinctId | None = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: Timestamp = None,
        uuid: ev.EventUuid = None,
        groups: Mapping[str, Any] | None = None,
        disable_geoip: bool | None = None,
        send_feature_flags: object = False,
        flags: object = None,
    ) -> str | None:
        """Capture ``event`` (a non-empty str) for ``distinct_id``; return its uuid once
        it is committed to the spool, or None if ``before_send`` or ``on_full`` dropped
        it (or the client is disabled).

        Everything after ``event`` is keyword-only, as in posthog-python 7.x: the
        old ``capture(distinct_id, event)`` call raises ``TypeError``.
        ``distinct_id`` is a non-empty str, an int or a UUID (sent as a str); it is
        required here: posthog-python's personless events (no distinct_id) are
        :class:`~spoolpost.Posthog`'s.
        ``properties`` is copied, never mutated; values are encoded here, in the
        caller's thread (see :func:`~spoolpost.events.encoding.encode_event`).
        ``timestamp`` (datetime, date, or ISO 8601 string; default now) is sent as RFC
        3339 UTC; a naive one follows posthog-python's rule (UTC unless made by
        ``datetime.now()`` moments ago; see
        :func:`~spoolpost.events.timestamps.naive_to_aware`). ``uuid`` defaults to a
        new UUIDv7; a given one is normalized (canonical lowercase) and kept, and an
        event captured twice with the same uuid is stored and sent twice (PostHog
        deduplicates by uuid).
        ``groups`` maps group type → key.
        ``disable_geoip`` overrides the client's setting for this event.
        ``send_feature_flags`` and ``flags`` are accepted for posthog-python
        compatibility only when false/None.

        Raises ``ValueError`` for a bad event name, distinct_id, uuid or timestamp,
        or properties/groups that are not mappings; ``TypeError`` for
        ``send_feature_flags``/``flags`` and for arguments passed by position;
        :class:`~spoolpost.errors.EncodingError` naming the property path that
        cannot be encoded; :class:`~spoolpost.errors.EventTooLarge` over
        ``max_event_bytes``; :class:`~spoolpost.errors.SpoolFull` (``on_full``
        ``raise``/``block``); :class:`~spoolpost.errors.SpoolClosed` after
        :meth:`~spoolpost.client.Client.shutdown`. Nothing is written when it raises.
        """
        if self.disabled:
            return None
        if send_feature_flags or flags is not None:
            refuse_feature_flags(send_feature_flags, flags)
        return self._emit(
            ev.capture_event,
            disable_geoip,
            event,
            _or_context(distinct_id),
            with_context_tags(properties),
            timestamp,
            uuid,
            groups,
        )

    def capture_ai(
        self,
        event: str,
        *,
        distinct_id: ev.DistinctId,
        properties: Mapping[str, Any] | None = None,
        timestamp: Timestamp = None,
        uuid: ev.EventUuid = None,
        groups: Mapping[str, Any] | None = None,
        disable_geoip: bool | None = None,
        send_feature_flags: object = False,
        flags: object = None,
    ) -> str | None:
        """:meth:`capture` for PostHog's dedicated AI endpoint, ``POST
        /i/v0/ai/batch/``, as posthog-python 7.x's ``capture_ai``: the same arguments,
        event shape, errors and answer; the event is stored in the same spool on the
        AI lane and is always sent in a v0 body to that endpoint (never ``/batch/`` or
        v1, whatever the capture mode), in batches of AI events only. ``$ai_*`` names
        are usual; any other name is sent there too."""
        if self.disabled:
            return None
        if send_feature_flags or flags is not None:
            refuse_feature_flags(send_feature_flags, flags)
        return self._emit(
            ev.capture_event,
            disable_geoip,
            event,
            distinct_id,
            properties,
            timestamp,
            uuid,
            groups,
            lane=AI_LANE,
        )

    def identify(
        self,
        distinct_id: ev.DistinctId,
        properties: Mapping[str, Any] | None = None,
        *,
        timestamp: Timestamp = None,
        uuid: ev.EventUuid = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """``$identify``: set person ``properties`` on ``distinct_id`` (sent as
        ``properties.$set``). Returns and raises as :meth:`capture`.

        posthog-python 7.x has no ``identify`` (use :meth:`set`); its earlier
        ``identify(distinct_id, properties, context, timestamp, …)`` had ``context``
        third, so everything after ``properties`` is keyword-only here: a third
        positional argument raises ``TypeError`` instead of being misread."""
        return self._emit(
            ev.identify_event, disable_geoip, distinct_id, properties, timestamp, uuid
        )

    def set(
        self,
        *,
        distinct_id: ev.DistinctId | None = None,
        properties: Mapping[str, Any],
        timestamp: Timestamp = None,
        uuid: ev.EventUuid = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """``$set`` person ``properties`` (a mapping, required) on ``distinct_id``,
        overwriting earlier values. Returns and raises as :meth:`capture`.
        Keyword-only, as in posthog-python 7.x."""
        person, props = _or_context(distinct_id), with_context_tags(properties)
        return self._emit(ev.set_event, disable_geoip, person, props, timestamp, uuid)

    def set_once(
        self,
        *,
        distinct_id: ev.DistinctId | None = None,
        properties: Mapping[str, Any],
        timestamp: Timestamp = None,
        uuid: ev.EventUuid = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """``$set_once`` person ``properties`` (a mapping, required) on
        ``distinct_id``, only where not set yet. Returns and raises as :meth:`capture`.
        Keyword-only, as in posthog-python 7.x."""
        person, props = _or_context(distinct_id), with_context_tags(properties)
        return self._emit(ev.set_once_event, disable_geoip, person, props, timestamp, uuid)

    def alias(
        self,
        previous_id: ev.DistinctId,
        distinct_id: ev.DistinctId,
        timestamp: Timestamp = None,
        uuid: ev.EventUuid = None,
        disable_geoip: bool | None = None,
    ) -> str | None:
        """``$create_alias``: make ``distinct_id`` an alias of ``previous_id`` (sent
        by ``previous_id``, properties ``{"distinct_id": previous_id, "alias":
        distinct_id}``). Arguments in posthog-python's order. Returns and raises as
        :meth:`capture`."""
        build = _with_session(ev.alias_event)
        person = _or_context(distinct_id)
        return self._emit(build, disable_geoip, previous_id, person, timestamp, uuid)

    def group_identify(
        self,
        group_type: str,
        group_key: ev.DistinctId,
        properties: Mapping[str, Any] | None = None,
        timestamp: Timestamp = None,
        uuid: ev.EventUuid = None,
        disable_geoip: bool | None = None,
        distinct_id: ev.DistinctId | None = None,
    ) -> str | None:
        """``$groupidentify``: set ``properties`` on the group ``group_type``/
        ``group_key`` (properties ``$group_type``, ``$group_key``, ``$group_set``),
        sent by ``distinct_id`` (default ``"$<group_type>_<group_key>"``).
        Arguments in posthog-python's order. Returns and raises as :meth:`capture`."""
        return self._emit(
            _with_session(ev.group_identify_event),
            disable_geoip,
            group_type,
            group_key,
            properties,
            timestamp,
            uuid,
            _or_context(distinct_id),
        )
