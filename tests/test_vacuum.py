"""The spool gives space back: incremental auto_vacuum steps on the delivery thread's
idle path and after a drain, the one-time conversion of an older spool, and
``spoolpost compact``. Real spool files, the real loopback endpoint, a dispatcher
driven step by step (no sleeps)."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from kit import API_KEY, INLINE, T0, MakeRig, Rig, counts, make_event

from spoolpost import ops
from spoolpost.cli import cli
from spoolpost.clock import ManualClock
from spoolpost.delivery.transport import HttpTransport
from spoolpost.errors import SpoolLocked
from spoolpost.ops.drain import give_back_space
from spoolpost.spool import Spool, vacuum
from spoolpost.spool.vacuum import STEP_PAUSE, file_bytes
from spoolpost.testing import LocalEndpoint

#: Events big enough that a few thousand make a spool of several MiB.
PAD = 1000


def auto_vacuum(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        conn.close()


def size(path: Path) -> int:
    """Bytes on disk of the spool and its -wal."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def make_old_spool(path: Path) -> None:
    """A spool as spoolpost made them before incremental auto_vacuum: NONE."""
    Spool(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")
    conn.close()
    assert auto_vacuum(path) == 0


def fill(rig: Rig, n: int) -> list[str]:
    uuids = []
    for first in range(0, n, 500):
        uuids += rig.capture(min(500, n - first), pad=PAD)
    return uuids


def step_until_space_given_back(rig: Rig, max_steps: int = 10_000) -> int:
    """Step the idle dispatcher until a step no longer asks to be called again after
    STEP_PAUSE (the give-back episode is over); return the steps it took."""
    for steps in range(1, max_steps + 1):
        step = rig.step()
        assert step.batches == 0
        if step.wait != STEP_PAUSE:
            return steps
        rig.clock.advance(STEP_PAUSE)
    raise AssertionError(f"space still being given back after {max_steps} steps")


def test_a_new_spool_is_made_with_incremental_auto_vacuum(spool_path: Path) -> None:
    Spool(spool_path).close()
    assert auto_vacuum(spool_path) == 2
    with Spool(spool_path) as spool:
        assert spool.file_usage().auto_vacuum == "incremental"


@pytest.fixture
def one_round_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each give-back step does one round of incremental_vacuum calls, whatever the
    machine's speed, so that how many steps an episode takes is known."""
    monkeypatch.setattr(vacuum, "STEP_SECONDS", 0.0)


@pytest.mark.usefixtures("one_round_per_step")
def test_a_drained_spool_shrinks_below_a_tenth_of_its_peak_by_dispatcher_steps(
    rig: Rig, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    captured = fill(rig, 4000)
    peak = size(rig.path)
    assert peak > 4_000_000
    rig.dispatcher.run_until_idle(rig.clock.now())
    delivered = {e["uuid"] for r in endpoint.requests for e in r.json["batch"]}
    peak = max(peak, size(rig.path))
    assert rig.spool.file_usage().free_pages > 0  # drained: the file is still its peak size

    with caplog.at_level(logging.INFO, logger="spoolpost"):
        steps = step_until_space_given_back(rig)

    assert steps > 1  # in bounded steps, not one long hold of the lock
    assert rig.spool.file_usage().free_pages == 0
    assert size(rig.path) < peak / 10, (size(rig.path), peak)
    assert any("gave back" in r.getMessage() for r in caplog.records)
    # Loss accounting: every event whose capture returned was delivered; none dead.
    assert delivered == set(captured) and len(captured) == 4000
    assert counts(rig.spool) == {"pending": 0, "leased": 0, "dead": 0}
    with sqlite3.connect(rig.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_spool_with_a_small_freelist_is_left_alone(rig: Rig) -> None:
    fill(rig, 100)  # ~100 KiB: under the 1 MiB worth giving back
    rig.dispatcher.run_until_idle(rig.clock.now())
    free = rig.spool.file_usage().free_pages
    assert free > 0
    assert rig.spool.give_back_space() is None
    assert rig.spool.file_usage().free_pages == free


@pytest.mark.usefixtures("one_round_per_step")
def test_capture_goes_on_between_the_steps_and_after(rig: Rig) -> None:
    fill(rig, 3000)
    rig.dispatcher.run_until_idle(rig.clock.now())
    assert rig.step().wait == STEP_PAUSE  # an episode began
    # Between two steps another process captures at once (no lock held).
    with Spool(rig.path, busy_timeout=0) as other:
        uuid, body = make_event(rig.clock.now())
        assert other.append(uuid, body, rig.clock.now())
    rig.clock.advance(STEP_PAUSE)
    rig.dispatcher.run_until_idle(rig.clock.now())  # it is delivered
    step_until_space_given_back(rig)
    assert counts(rig.spool) == {"pending": 0, "leased": 0, "dead": 0}
    assert rig.spool.counters()["delivered"] == 3001


def test_an_old_spool_is_switched_over_once_it_is_nearly_empty(
    spool_path: Path, make_rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    make_old_spool(spool_path)
    rig = make_rig()
    fill(rig, 3000)
    peak = size(spool_path)
    with caplog.at_level(logging.INFO, logger="spoolpost"):
        rig.dispatcher.run_until_idle(rig.clock.now())  # its last, idle step converts
        step_until_space_given_back(rig)
    assert auto_vacuum(spool_path) == 2
    assert size(spool_path) < peak / 10
    assert any("switched to incremental auto_vacuum" in r.getMessage() for r in caplog.records)


def test_an_old_spool_holding_much_is_not_vacuumed_by_delivery(
    spool_path: Path, make_rig: MakeRig
) -> None:
    make_old_spool(spool_path)
    rig = make_rig()
    fill(rig, 10_000)
    batch = rig.spool.claim(rig.clock.now(), max_events=5000, max_bytes=1 << 30, lease_ttl=60)
    assert batch is not None
    assert rig.spool.ack(batch.token, [r.id for r in batch.rows]) == 5000
    usage = rig.spool.file_usage()
    # Half the file is free, but ~6 MB is live: one VACUUM would hold capture up.
    assert usage.worth_giving_back and usage.used_bytes > 4 * 1024 * 1024
    assert rig.spool.give_back_space() is None
    assert rig.spool.file_usage() == usage
    assert auto_vacuum(spool_path) == 0


def test_a_drain_gives_the_space_back_and_checkpoints(
    spool_path: Path, endpoint: LocalEndpoint
) -> None:
    with Spool(spool_path) as spool:
        for _ in range(3000):
            uuid, body = make_event(0.0, pad=PAD)
            assert spool.append(uuid, body, T0)
        peak = size(spool_path)
        transport = HttpTransport(endpoint.url, API_KEY)
        result = ops.drain_spool(spool, transport, config=INLINE, clock=ManualClock(start=T0))
        assert result.delivered == 3000 and result.pending == 0
        # Measured while the drain's spool is still open: no close-time checkpoint helps.
        assert spool.file_usage().free_pages == 0
        assert Path(f"{spool_path}-wal").stat().st_size == 0
        assert size(spool_path) < peak / 10
        assert file_bytes(spool._db) == size(spool_path)


# -- spoolpost compact ---------------------------------------------------------------------


def compact(*args: str | Path, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["compact", *map(str, args)], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def old_spool_with_free_pages(path: Path) -> int:
    """An old (auto_vacuum NONE) spool with 2000 events added and deleted and 3 live;
    returns its size."""
    make_old_spool(path)
    with Spool(path) as spool:
        for _ in range(2003):
            uuid, body = make_event(0.0, pad=PAD)
            spool.append(uuid, body, T0)
        batch = spool.claim(T0, max_events=2000, max_bytes=1 << 30, lease_ttl=60)
        assert batch is not None
        spool.ack(batch.token, [r.id for r in batch.rows])
    return size(path)


def test_compact_with_yes_vacuums_and_switches_an_old_spool(spool_path: Path) -> None:
    before = old_spool_with_free_pages(spool_path)
    code, out, _ = compact(spool_path, "--yes")
    assert code == 0
    assert out.startswith(f"compacted {spool_path}: ")
    assert out.endswith("(switched to incremental auto_vacuum)\n")
    assert auto_vacuum(spool_path) == 2
    assert size(spool_path) < before / 10
    assert counts(spool_path) == {"pending": 3, "leased": 0, "dead": 0}  # nothing lost


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        ("y\n", 0, ""),
        ("n\n", 1, "Error: not confirmed; nothing was changed"),
        ("", 1, "Error: no confirmation could be read (stdin is closed or empty)"),
    ],
)
def test_compact_asks_first_and_names_the_lock(
    spool_path: Path, answer: str, code: int, message: str
) -> None:
    before = old_spool_with_free_pages(spool_path)
    got, _, err = compact(spool_path, input=answer)
    assert got == code
    assert f"Compact {spool_path} (" in err
    assert "It holds the spool's write lock for the whole VACUUM" in err
    assert message in err
    assert (size(spool_path) < before / 10) is (code == 0)
    assert auto_vacuum(spool_path) == (2 if code == 0 else 0)
    assert counts(spool_path)["pending"] == 3


def test_compact_json(spool_path: Path) -> None:
    before = old_spool_with_free_pages(spool_path)
    code, out, _ = compact(spool_path, "--yes", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["before_bytes"] == before and data["converted"] is True
    assert data["after_bytes"] == size(spool_path) < before / 10


def test_compact_of_a_missing_spool_is_an_error(tmp_path: Path) -> None:
    code, _, err = compact(tmp_path / "missing.spool", "--yes")
    assert code == 1 and "no spool at" in err
    assert not (tmp_path / "missing.spool").exists()


def test_compact_while_another_process_holds_the_write_lock_says_so(spool_path: Path) -> None:
    old_spool_with_free_pages(spool_path)
    holder = sqlite3.connect(spool_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with (
            Spool(spool_path, busy_timeout=0) as spool,
            pytest.raises(SpoolLocked, match="stayed locked"),
        ):
            spool.compact()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert auto_vacuum(spool_path) == 0  # unchanged
    assert counts(spool_path)["pending"] == 3


@pytest.mark.parametrize("steps", [True, False], ids=["drained", "budget-spent"])
def test_after_a_drain_the_wal_is_checkpointed_and_space_given_back_unless_its_budget_ran_out(
    rig: Rig, steps: bool
) -> None:
    fill(rig, 3000)
    batch = rig.spool.claim(rig.clock.now(), max_events=3000, max_bytes=1 << 30, lease_ttl=60)
    assert batch is not None
    assert rig.spool.ack(batch.token, [r.id for r in batch.rows]) == 3000
    before = rig.spool.file_usage()
    assert before.worth_giving_back and before.wal_bytes > 0

    give_back_space(rig.spool, rig.clock, steps=steps)

    after = rig.spool.file_usage()
    assert after.wal_bytes == 0  # checkpointed either way
    assert after.free_pages == (0 if steps else before.free_pages)
    assert (size(rig.path) < before.file_bytes / 10) is steps
