"""The tests' shared kit: constants and helpers that test modules import (no tests here).

A spool's rows are read one way: through the public maintenance API,
:meth:`Spool.events`, by :func:`live`, :func:`dead_letters`, :func:`states`,
:func:`counts` and :func:`stored`. Each takes a :class:`Spool`, or a path to open
with a new one (the way another process would see the file). Tests that check what
that API does not show (lease records, pragmas, schema, page layout) read the SQLite
file itself.

A :class:`Rig` is a real spool file, a real :class:`HttpTransport` to the real loopback
endpoint and a :class:`Dispatcher` that is never started: the test drives it with
``step(now)`` on a :class:`ManualClock`, so backoff is simulated time and never slept.
Request times are read from the ``sent_at`` each request carries (stamped from the
injected clock).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from spoolpost.clock import ManualClock
from spoolpost.delivery import DeliveryConfig, Dispatcher, Step
from spoolpost.delivery.policy import PausePolicy, RetryPolicy
from spoolpost.delivery.transport import HttpTransport, WireFormat
from spoolpost.events.build import capture_event
from spoolpost.events.encoding import encode_event
from spoolpost.spool import Filter, Spool, SpooledEvent
from spoolpost.testing import LocalEndpoint, RecordedRequest

#: The project API key the tests capture and send with.
API_KEY = "phc_test_key"
#: Another project's key: for the tests of a spool bound to a key that is not API_KEY.
OTHER_API_KEY = "phc_other_project"
#: The key crash_child.py captures with (it imports it from here): whoever opens the
#: spool such a child left behind must use the same key, or meet a KeyMismatch.
CRASH_API_KEY = "phc_crash_test"
#: A fixed wall-clock time, 2023-11-14T22:13:20Z. A whole second, so that an HTTP-date
#: (whole seconds) lands exactly where computed.
T0 = 1_700_000_000.0
#: Where a Rig's clock starts.
START = T0
#: Every pending event goes out at once, in batches of up to 500.
INLINE = DeliveryConfig(flush_at=1, flush_interval=0.0)
#: An event's states, in the order :meth:`Spool.events` gives them.
STATES = ("pending", "leased", "dead")
LIVE = Filter(states=frozenset({"pending", "leased"}))
DEAD = Filter(states=frozenset({"dead"}))

SpoolOrPath = Spool | str | os.PathLike[str]


# -- reading a spool ---------------------------------------------------------------------


@contextlib.contextmanager
def _opened(source: SpoolOrPath) -> Iterator[Spool]:
    """``source`` itself, or a new Spool on that file, closed afterwards."""
    if isinstance(source, Spool):
        yield source
        return
    with Spool(source) as spool:
        yield spool


def _events(source: SpoolOrPath, where: Filter | None = None) -> list[SpooledEvent]:
    # No age filter here, so ``now`` plays no part.
    with _opened(source) as spool:
        return list(spool.events(where, now=time.time()))


def live(source: SpoolOrPath) -> list[SpooledEvent]:
    """The pending and leased events, in capture order."""
    return _events(source, LIVE)


def dead_letters(source: SpoolOrPath) -> list[SpooledEvent]:
    """The dead letters, in the order they died."""
    return _events(source, DEAD)


def states(source: SpoolOrPath) -> dict[str, list[str]]:
    """The uuids in each state (every state present), in the order Spool.events gives them."""
    found: dict[str, list[str]] = {s: [] for s in STATES}
    for e in _events(source):
        found[e.state].append(e.uuid)
    return found


def counts(source: SpoolOrPath) -> dict[str, int]:
    """How many events are in each state (every state present)."""
    return {state: len(uuids) for state, uuids in states(source).items()}


def stored(source: SpoolOrPath) -> list[dict[str, Any]]:
    """The pending and leased events, decoded, in capture order."""
    return [e.event for e in live(source)]


def rows(
    events: Iterable[SpooledEvent], columns: str = "id, uuid, state, attempts"
) -> list[tuple[Any, ...]]:
    """These fields of each event, named like the spool's columns: ``size`` is the
    body's length in bytes, ``length(last_error)`` that of the last error."""
    names = [c.strip() for c in columns.split(",")]
    return [tuple(_field(e, name) for name in names) for e in events]


def _field(e: SpooledEvent, name: str) -> Any:
    if name == "size":
        return len(e.body)
    if name == "length(last_error)":
        return None if e.last_error is None else len(e.last_error)
    return getattr(e, name)


# -- writing events ----------------------------------------------------------------------


def add_events(
    spool: Spool, names: Sequence[str], *, at: float = T0, distinct_id: str = "u1"
) -> list[str]:
    """Append one event per name, captured at ``at``, ``at + 1``, …; return uuids."""
    uuids = []
    for n, name in enumerate(names):
        event = capture_event(name, distinct_id, {"n": n}, now=at + n)
        assert spool.append(event["uuid"], encode_event(event), at + n)
        uuids.append(event["uuid"])
    return uuids


def kill(
    spool: Spool,
    uuids: Sequence[str],
    *,
    at: float = T0,
    reason: str = "rejected",
    status: int | None = 400,
    detail: str = '{"error":"bad event"}',
) -> None:
    """Dead-letter the pending events ``uuids`` at time ``at`` (the rest stay pending)."""
    batch = spool.claim(at, max_events=10_000, max_bytes=1 << 30, lease_ttl=60)
    assert batch is not None
    doomed = [r.id for r in batch.rows if r.uuid in set(uuids)]
    assert len(doomed) == len(uuids)
    assert spool.dead_letter(batch.token, doomed, at, reason, status, detail) == len(doomed)
    spool.release(batch.token)


# -- the failure-policy rig --------------------------------------------------------------


def sent_at(request: RecordedRequest) -> float:
    """The ``sent_at`` stamp of a request, as UTC seconds."""
    stamp = request.json["sent_at"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def gaps(requests: Sequence[RecordedRequest]) -> list[float]:
    """Seconds between consecutive requests, by their ``sent_at``."""
    times = [sent_at(r) for r in requests]
    return [b - a for a, b in itertools.pairwise(times)]


def make_event(
    now: float, index: int = 0, pad: int = 0, name: str = "test event"
) -> tuple[str, bytes]:
    """An encoded PostHog event (uuid, body) built the way ``Client.capture`` builds it."""
    event = capture_event(name, "user-1", {"i": index, "pad": "x" * pad}, now=now)
    return str(event["uuid"]), encode_event(event)


@dataclass
class Rig:
    """A spool + transport + unstarted dispatcher on a manual clock."""

    path: Path
    endpoint: LocalEndpoint
    clock: ManualClock
    spool: Spool
    dispatcher: Dispatcher
    spools: list[Spool] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        path: Path,
        endpoint: LocalEndpoint,
        *,
        config: DeliveryConfig = INLINE,
        retry: RetryPolicy | None = None,
        pause: PausePolicy | None = None,
        gzip: bool = False,
        compression: str | None = None,
        wire: WireFormat | None = None,
        timeout: tuple[float, float] = (2.0, 5.0),
        clock: ManualClock | None = None,
    ) -> Rig:
        clock = clock or ManualClock(start=START)
        spool = Spool(path)
        transport = HttpTransport(
            endpoint.url, API_KEY, gzip=gzip, compression=compression, wire=wire, timeout=timeout
        )
        dispatcher = Dispatcher(
            spool, transport, config=config, retry=retry, pause=pause, clock=clock
        )
        return cls(path, endpoint, clock, spool, dispatcher, [spool])

    def restart(self, **options: Any) -> Rig:
        """A new spool object and dispatcher on the same file and clock: a new process."""
        self.dispatcher.stop(1.0)
        self.spool.close()
        fresh = Rig.build(self.path, self.endpoint, clock=self.clock, **options)
        fresh.spools = [*self.spools, fresh.spool]
        return fresh

    def close(self) -> None:
        self.dispatcher.stop(1.0)
        for spool in self.spools:
            spool.close()

    def capture(self, n: int = 1, *, pad: int = 0, name: str = "test event") -> list[str]:
        """Append ``n`` events at the clock's now; return their uuids."""
        uuids = []
        for i in range(n):
            uuid, body = make_event(self.clock.now(), i, pad, name)
            assert self.spool.append(uuid, body, self.clock.now())
            uuids.append(uuid)
        return uuids

    def step(self) -> Step:
        return self.dispatcher.step(self.clock.now())

    def run(self, seconds: float, tick: float = 0.1) -> None:
        """Simulate ``seconds``: at every ``tick``, send whatever may be sent."""
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            self.dispatcher.run_until_idle(self.clock.now())
            self.clock.advance(tick)

    def states(self) -> dict[str, int]:
        return self.spool.stats(self.clock.now()).counts

    def pending(self) -> list[SpooledEvent]:
        """Events still pending or leased, in capture order."""
        return live(self.spool)

    def dead(self) -> list[SpooledEvent]:
        """Dead letters, in the order they died."""
        return dead_letters(self.spool)


#: Builds a :class:`Rig` with options for :meth:`Rig.build` (the ``make_rig`` fixture).
MakeRig = Callable[..., Rig]


def read_terminal(leader: int, timeout: float = 60.0) -> bytes:
    """Everything written to a pseudo-terminal (``pty.openpty()``'s ``leader``) until
    the child closes its side (or ``timeout`` seconds pass with nothing new); closes
    ``leader``."""
    seen = b""
    while select.select([leader], [], [], timeout)[0]:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child side is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return seen
