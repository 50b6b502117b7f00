"""The operator's view (issue 10): inspect's verdict without sending, the spool that
remembers its endpoint, a drain that says what it waits for, check, metrics, path.

Real spools under tmp_path, the real loopback endpoint, real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from kit import API_KEY, CRASH_API_KEY, MakeRig, add_events, kill
from prometheus_client.parser import text_string_to_metric_families

from spoolpost import Client, ops
from spoolpost.cli import cli
from spoolpost.client import default_spool_path, key_fingerprint
from spoolpost.clock import ManualClock
from spoolpost.delivery import DeliveryConfig
from spoolpost.delivery.hosts import canonical_host
from spoolpost.delivery.policy import PausePolicy
from spoolpost.delivery.transport import HttpTransport
from spoolpost.errors import HostMismatch
from spoolpost.spool import Spool
from spoolpost.spool.maintenance import DEAD_REASONS
from spoolpost.testing import LocalEndpoint, RecordedRequest, Response

ENV_VARS = ("SPOOLPOST_SPOOL", "SPOOLPOST_HOST", "SPOOLPOST_API_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def inspect_json(path: Path) -> dict[str, object]:
    result = run("inspect", path, "--json")
    assert result.exit_code == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.fixture
def second_endpoint() -> Iterator[LocalEndpoint]:
    with LocalEndpoint() as ep:
        yield ep


# -- inspect: the verdict, without sending --------------------------------------------


def test_after_a_401_inspect_says_paused_by_401_since_when_without_sending(
    spool_path: Path, make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(clock=ManualClock(), pause=PausePolicy(initial=300))
    rig.capture(3)
    endpoint.respond(Response(401, body=b'{"error":"bad key"}'))
    at = rig.clock.now()
    rig.step()
    assert rig.dispatcher.paused_reason is not None
    rig.step()  # the dispatcher records the episode at its next step
    sent = len(endpoint.requests)

    data = inspect_json(spool_path)
    human = run("inspect", spool_path)

    assert len(endpoint.requests) == sent == 1  # inspect sent nothing
    assert data["state"] == "paused" and data["status"] == 401
    assert data["since"] == pytest.approx(at)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(round(at)))
    assert human.stdout.splitlines()[0].startswith(
        f"state           paused by HTTP 401 since {stamp}Z (pid {os.getpid()} on "
    )
    assert data["counts"] == {"pending": 3, "leased": 0, "dead": 0}


def test_after_a_503_with_retry_after_inspect_says_backing_off_until_when(
    spool_path: Path, make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(clock=ManualClock())
    rig.capture(2)
    endpoint.respond(Response(503, headers={"Retry-After": "60"}))
    at = rig.clock.now()
    rig.step()
    rig.step()

    data = inspect_json(spool_path)

    assert data["state"] == "backing_off"
    assert data["until"] == pytest.approx(at + 60, abs=1)
    assert "(Retry-After) after HTTP 503" in str(data["summary"])
    assert data["retrying"] == 2
    assert data["last_error"] == {"message": 'HTTP 503: {"status":1}', "at": at} or (
        isinstance(data["last_error"], dict) and data["last_error"]["at"] == pytest.approx(at)
    )
    assert len(endpoint.requests) == 1


def test_a_sigkilled_owners_lease_shows_as_gone_and_taken_back_at_once(
    spool_path: Path,
) -> None:
    child = Path(__file__).with_name("crash_child.py")
    proc = subprocess.Popen(
        [sys.executable, str(child), "lease", str(spool_path), "4", "3600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()

    data = inspect_json(spool_path)
    human = run("inspect", spool_path).stdout

    (lease,) = data["leases"]  # type: ignore[misc]
    assert lease["pid"] == proc.pid and lease["alive"] is False
    assert lease["events"] == 4 and lease["taken_back"] == "at once"
    assert data["state"] == "stuck"
    assert f"leased to gone process(es) {proc.pid}" in str(data["summary"])
    assert f"4 events to pid {proc.pid} on" in human and "(GONE)" in human
    assert "taken back at once" in human
    assert data["counts"] == {"pending": 0, "leased": 4, "dead": 0}  # inspect took nothing

    # A drain with a short budget does not wait for the hour-long lease of a gone
    # process: it takes the events back at once and delivers them.
    with LocalEndpoint() as endpoint:
        drained = run(
            "drain", spool_path, "--host", endpoint.url, "--api-key", CRASH_API_KEY,
            "--budget", "5", "--json",
        )  # fmt: skip
        assert drained.exit_code == 0, drained.output
        assert json.loads(drained.stdout)["delivered"] == 4
        assert [e["n"] for r in endpoint.requests for e in r.events] == [0, 1, 2, 3]


def test_inspect_of_a_corrupt_spool_changes_nothing_and_exits_1(
    spool_path: Path, spool: Spool
) -> None:
    add_events(spool, ["a", "b"])
    spool.close()
    raw = bytearray(spool_path.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # the schema page, past the header
    spool_path.write_bytes(bytes(raw))
    before = spool_path.read_bytes()

    result = run("inspect", spool_path)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: spool {spool_path} is corrupt")
    assert spool_path.read_bytes() == before
    assert not [p for p in spool_path.parent.iterdir() if ".corrupt-" in p.name]


def test_inspect_shows_key_host_bounds_and_the_last_success(
    spool_path: Path, make_client: object, endpoint: LocalEndpoint
) -> None:
    client = make_client(send=True, max_spool_bytes=1 << 20)  # type: ignore[operator]
    client.capture("e", distinct_id="u")
    assert client.flush(timeout=10).complete
    client.shutdown(timeout=5)

    data = inspect_json(spool_path)

    assert data["state"] == "healthy"
    assert data["ingestion_host"] == endpoint.url
    assert data["key_fingerprint"] == key_fingerprint(API_KEY)
    assert data["max_spool_bytes"] == 1 << 20 and data["bound_source"] == "recorded"
    assert isinstance(data["last_success_at"], float)
    assert 0 < float(data["full"]) < 1  # type: ignore[arg-type]


# -- the spool remembers where it delivers ------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("https://app.posthog.com", "https://us.i.posthog.com"),
        ("https://us.posthog.com/", "https://us.i.posthog.com"),
        ("https://us.i.posthog.com:443/", "https://us.i.posthog.com"),
        ("https://eu.posthog.com", "https://eu.i.posthog.com"),
        ("https://user:pw@EU.i.posthog.com/", "https://eu.i.posthog.com"),
        ("http://127.0.0.1:8000/prefix/", "http://127.0.0.1:8000/prefix"),
    ],
)
def test_hosts_compare_as_posthog_python_resolves_them(given: str, canonical: str) -> None:
    assert canonical_host(given) == canonical


def test_a_drain_without_host_goes_where_the_spool_first_delivered(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint, second_endpoint: LocalEndpoint
) -> None:
    add_events(spool, ["first"], at=time.time())
    first = run("drain", spool_path, "--api-key", API_KEY, "--host", endpoint.url)
    assert first.exit_code == 0
    assert spool.meta()["ingestion_host"] == endpoint.url

    add_events(spool, ["second"], at=time.time())
    assert run("drain", spool_path, "--api-key", API_KEY).exit_code == 0
    assert len(endpoint.delivered_uuids()) == 2

    add_events(spool, ["third"], at=time.time())
    refused = run("drain", spool_path, "--api-key", API_KEY, "--host", second_endpoint.url)
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"Error: spool {spool_path} delivers to {endpoint.url}, not {second_endpoint.url}; "
        "refusing to send its events elsewhere. Give that host, or force_host=True / "
        "--force-host.\n"
    )
    assert second_endpoint.requests == []

    forced = run(
        "drain", spool_path, "--api-key", API_KEY, "--host", second_endpoint.url, "--force-host"
    )
    assert forced.exit_code == 0
    assert len(second_endpoint.delivered_uuids()) == 1
    assert spool.meta()["ingestion_host"] == second_endpoint.url


def test_a_client_refuses_another_endpoint_unless_forced(
    spool_path: Path, endpoint: LocalEndpoint, second_endpoint: LocalEndpoint
) -> None:
    Client(API_KEY, endpoint.url, spool=spool_path, send=True).shutdown(timeout=1)
    Client(API_KEY, endpoint.url + "/", spool=spool_path, send=True).shutdown(timeout=1)
    Client(API_KEY, second_endpoint.url, spool=spool_path, send=False).shutdown(timeout=1)
    with pytest.raises(HostMismatch, match="force_host=True"):
        Client(API_KEY, second_endpoint.url, spool=spool_path)
    Client(API_KEY, second_endpoint.url, spool=spool_path, force_host=True).shutdown(timeout=1)
    with Spool(spool_path) as s:
        assert s.meta()["ingestion_host"] == second_endpoint.url


# -- drain says what it waits for ---------------------------------------------------------


def _stored_retry_after(spool: Spool, endpoint: LocalEndpoint) -> float:
    """Two events whose one attempt got 503 with ``Retry-After: 60``; returns when
    they are due again (UTC seconds)."""
    add_events(spool, ["a", "b"], at=time.time() - 10)
    endpoint.respond(Response(503, headers={"Retry-After": "60"}))
    transport = HttpTransport(endpoint.url, API_KEY)
    first = ops.drain_spool(spool, transport, budget=1, outage_after=1, grace=0)
    assert first.outage is not None
    due = spool.next_due_at()
    assert due is not None
    return due


def test_drain_with_a_stored_retry_after_past_its_budget_exits_at_once(
    spool: Spool, endpoint: LocalEndpoint
) -> None:
    due = _stored_retry_after(spool, endpoint)
    clock = ManualClock(start=due - 59)  # a second after the 503
    transport = HttpTransport(endpoint.url, API_KEY)

    result = ops.drain_spool(spool, transport, budget=5, clock=clock)

    assert (clock.now(), clock.monotonic()) == (due - 59, 0.0)  # no wait was requested
    assert len(endpoint.requests) == 1
    assert ops.drain_exit_code(result) == ops.EXIT_REMAIN
    assert result.pending == 2
    assert result.waiting_until == due
    assert result.waiting_for is not None and result.waiting_for.startswith("HTTP 503")

    # On the real clock: a drain's threads would move a ManualClock past its leases.
    delivered = ops.drain_spool(spool, transport, budget=5, retry_now=True)
    assert ops.drain_exit_code(delivered) == ops.EXIT_EMPTY
    assert delivered.delivered == 2
    assert len(endpoint.delivered_uuids()) == 2


def test_drain_cli_says_until_when_and_why_and_now_delivers(
    spool_path: Path, spool: Spool, endpoint: LocalEndpoint
) -> None:
    _stored_retry_after(spool, endpoint)
    base = ("drain", spool_path, "--api-key", API_KEY, "--host", endpoint.url)

    waiting = run(*base, "--budget", "5")
    quiet = run(*base, "--budget", "5", "--quiet")
    forced = run(*base, "--budget", "5", "--now")

    assert waiting.exit_code == quiet.exit_code == 3
    assert waiting.stdout.startswith("delivered 0, dead-lettered 0, remaining 2; nothing is due")
    assert "(waiting for: HTTP 503" in waiting.stdout and "--now tries at once" in waiting.stdout
    assert quiet.stdout == ""
    assert forced.exit_code == 0 and forced.stdout.startswith("delivered 2,")


def test_drain_of_a_spool_that_does_not_exist_yet_is_nothing_to_do(tmp_path: Path) -> None:
    path = tmp_path / "later.spool"
    result = run("drain", path, "--api-key", API_KEY)
    quiet = run("drain", path, "--api-key", API_KEY, "--quiet")
    assert (result.exit_code, result.stdout) == (0, f"nothing to do: no spool at {path} yet\n")
    assert (quiet.exit_code, quiet.stdout) == (0, "")
    assert not path.exists()


def test_a_drain_counts_only_what_it_delivered_itself(
    spool: Spool, endpoint: LocalEndpoint
) -> None:
    add_events(spool, ["a", "b", "c"], at=time.time() - 10)
    transport = HttpTransport(endpoint.url, API_KEY)
    others: list[int] = []

    def another_process_delivers_one(request: RecordedRequest) -> Response | None:
        if not others:  # while this drain's first request waits for its answer
            with Spool(spool.path) as other:
                batch = other.claim(time.time(), max_events=1, max_bytes=1 << 20, lease_ttl=60)
                assert batch is not None
                others.append(other.ack(batch.token, batch.ids))
        return None

    endpoint.set_handler(another_process_delivers_one)
    config = DeliveryConfig(flush_interval=0.0, max_batch_size=1, senders=1)
    result = ops.drain_spool(spool, transport, config=config)
    assert others == [1]
    assert result.pending == 0
    assert result.delivered == len(endpoint.delivered_uuids()) == 2


# -- check, metrics, path -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "code", "level"),
    [
        (["--max-pending-age", "15m,1h", "--max-dead", "5,100"], 0, "OK"),
        (["--max-dead", "0,100"], 1, "WARNING"),
        (["--max-pending-age", "30s,90s"], 2, "CRITICAL"),
        (["--max-full", "0%,95%"], 1, "WARNING"),
    ],
)
def test_check_exit_codes(
    spool_path: Path, spool: Spool, flags: list[str], code: int, level: str
) -> None:
    add_events(spool, ["a"], at=time.time() - 120)  # two minutes old
    with Spool(spool_path) as s:
        batch = s.claim(time.time(), max_events=1, max_bytes=1 << 20, lease_ttl=60)
        assert batch is not None
        s.release(batch.token)
    if level == "WARNING" and "--max-dead" in flags:
        add_events(spool, ["dead"], at=time.time())
        with Spool(spool_path) as s:
            batch = s.claim(time.time(), max_events=2, max_bytes=1 << 20, lease_ttl=60)
            assert batch is not None
            s.dead_letter(batch.token, batch.ids[1:], time.time(), "rejected", 400, "bad")
            s.release(batch.token)
    result = run("check", spool_path, *flags)
    assert result.exit_code == code, result.stdout
    assert result.stdout.startswith(f"SPOOLPOST {level} - healthy; oldest pending ")
    assert result.stdout.count("\n") == 1


def test_check_unknown_when_the_spool_cannot_be_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.spool"
    bad.write_bytes(b"SQLite format 3\x00" + b"\xff" * 8000)
    result = run("check", bad, "--max-dead", "0")
    assert result.exit_code == 3
    assert result.stdout.startswith(f"SPOOLPOST UNKNOWN - spool {bad} is corrupt")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-dead", "x", "'x' is not a number"),
        ("--max-dead", "5,1", "critical 1 is below warning 5"),
        ("--max-full", "80%,90%,95%", "'80%,90%,95%' is not WARNING[,CRITICAL]"),
        ("--max-pending-age", "soon", "'soon' is not a duration"),
    ],
)
def test_check_refuses_bad_thresholds(
    spool_path: Path, spool: Spool, flag: str, value: str, message: str
) -> None:
    result = run("check", spool_path, flag, value)
    assert result.exit_code == 2
    assert message in result.stderr


def test_metrics_parse_with_prometheus_clients_own_parser(
    spool_path: Path, spool: Spool, tmp_path: Path
) -> None:
    add_events(spool, ["a", "b", "c"], at=time.time() - 30)
    batch = spool.claim(time.time(), max_events=1, max_bytes=1 << 20, lease_ttl=60)
    assert batch is not None
    spool.ack(batch.token, batch.ids)
    spool.add_counter("dropped", 4)

    text = run("metrics", spool_path).stdout
    target = tmp_path / "out" / "spoolpost.prom"
    target.parent.mkdir()
    assert run("metrics", spool_path, "--textfile", target).exit_code == 0

    for exposition in (text, target.read_text()):
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if not sample.name.endswith("_created")
        }
        assert values["spoolpost_pending"] == 2
        assert values["spoolpost_leased"] == 0
        assert values["spoolpost_dead"] == 0
        assert values["spoolpost_bytes"] > 0
        assert 25 < values["spoolpost_oldest_pending_age_seconds"] < 120
        assert values["spoolpost_paused"] == 0
        assert values["spoolpost_delivered_total"] == 1
        assert values["spoolpost_dead_lettered_total"] == 0
        assert values["spoolpost_dropped_total"] == 4
    assert [p.name for p in target.parent.iterdir()] == ["spoolpost.prom"]  # no temp left


def test_client_stats_is_the_spools(make_client: object) -> None:
    client = make_client(send=False)  # type: ignore[operator]
    client.capture("e", distinct_id="u")
    assert client.stats().counts == {"pending": 1, "leased": 0, "dead": 0}


def test_path_prints_the_librarys_default_and_commands_fall_back_to_it(
    tmp_path: Path,
) -> None:
    expected = default_spool_path(CRASH_API_KEY)
    assert expected.is_relative_to(tmp_path / "state")
    result = run("path", "--api-key", CRASH_API_KEY)
    assert (result.exit_code, result.stdout) == (0, f"{expected}\n")
    assert run("path").stderr == "Error: no API key: pass --api-key or set SPOOLPOST_API_KEY\n"

    with Spool(expected) as s:
        add_events(s, ["a"])
    inspected = run("inspect", "--json", env={"SPOOLPOST_API_KEY": CRASH_API_KEY})
    assert inspected.exit_code == 0
    assert json.loads(inspected.stdout)["path"] == str(expected)


@pytest.mark.parametrize("command", ["tail", "replay", "purge", "export"])
def test_reason_accepts_only_known_reasons(spool_path: Path, spool: Spool, command: str) -> None:
    result = run(command, spool_path, "--reason", "rejectd")
    assert result.exit_code == 2
    assert "Invalid value for '--reason': 'rejectd' is not one of" in result.stderr


@pytest.mark.parametrize("reason", DEAD_REASONS)
def test_reason_accepts_every_reason_the_spool_writes(
    spool_path: Path, spool: Spool, reason: str
) -> None:
    """v1's per-event verdicts (dropped, limited, …) included: replay --reason dropped
    is how an operator resends what a quota refused."""
    (uuid,) = add_events(spool, ["e"])
    kill(spool, [uuid], reason=reason)
    result = run("replay", spool_path, "--reason", reason, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["replayed"] == 1


def test_a_spool_past_its_recorded_bound_is_stuck_and_critical(
    spool_path: Path, spool: Spool
) -> None:
    add_events(spool, ["a"] * 20, at=time.time())
    record = {"owner_host": "elsewhere", "pid": 1, "start": "x", "updated_at": time.time()}
    spool.save_endpoint_state(
        "endpoint:elsewhere:1:x", json.dumps(record | {"max_spool_bytes": 8192})
    )

    data = inspect_json(spool_path)
    checked = run("check", spool_path, "--max-full", "80%,95%")

    assert data["state"] == "stuck" and str(data["summary"]).startswith("stuck: the spool is ")
    assert data["max_spool_bytes"] == 8192 and data["bound_source"] == "recorded"
    assert checked.exit_code == 2
    assert "(CRITICAL)" in checked.stdout
    with pytest.raises(ValueError, match="starts with 'endpoint:'"):
        spool.save_endpoint_state("host", "{}")


def test_a_full_capture_only_spool_is_stuck_and_critical(spool_path: Path) -> None:
    """README's cron pattern: an app that only captures (send=False) never delivers,
    so no endpoint record carries its bound; the client keeps it in the spool."""
    client = Client(API_KEY, spool=spool_path, send=False, max_spool_bytes=1 << 20)
    try:
        stored = [client.capture("e", distinct_id="u", properties={"pad": "x" * 2000})]
        while stored[-1] is not None:  # until on_full (drop_newest) drops one
            stored.append(client.capture("e", distinct_id="u", properties={"pad": "x" * 2000}))
    finally:
        client.shutdown()

    data = inspect_json(spool_path)
    checked = run("check", spool_path, "--max-full", "80%,95%")

    assert data["max_spool_bytes"] == 1 << 20 and data["bound_source"] == "recorded"
    assert data["state"] == "stuck" and "the spool is" in str(data["summary"])
    assert checked.exit_code == 2 and "(CRITICAL)" in checked.stdout
    assert data["counters"]["dropped"] >= 1  # type: ignore[index]


def test_a_spool_keeps_only_the_newest_endpoint_records(spool: Spool) -> None:
    for pid in range(20):
        record = {"owner_host": "h", "pid": pid, "start": "s", "updated_at": 1000.0 + pid}
        spool.save_endpoint_state(f"endpoint:h:{pid}:s", json.dumps(record))
    kept = sorted(k for k in spool.meta() if k.startswith("endpoint:"))
    assert kept == sorted(f"endpoint:h:{pid}:s" for pid in range(4, 20))


def test_the_dispatcher_records_episodes_not_requests(
    make_rig: MakeRig, endpoint: LocalEndpoint
) -> None:
    rig = make_rig(clock=ManualClock())

    def records() -> list[str]:
        return [v for k, v in rig.spool.meta().items() if k.startswith("endpoint:")]

    rig.step()
    assert records() == []  # nothing happened yet: nothing recorded
    rig.capture(1)
    rig.step()
    rig.step()
    (first,) = records()
    for _ in range(5):  # more successes within a minute: no new write
        rig.capture(1)
        rig.step()
        rig.clock.advance(1)
        rig.step()
    assert records() == [first]
    endpoint.respond(Response(503))
    rig.capture(1)
    rig.step()
    rig.step()
    (closed,) = records()
    assert json.loads(closed)["gate_failures"] == 1
    assert json.loads(closed)["last_error"].startswith("HTTP 503")


def test_capture_with_a_key_and_no_spool_uses_the_keys_default_spool() -> None:
    result = run("capture", "e", "--distinct-id", "u", "--api-key", CRASH_API_KEY)
    assert result.exit_code == 0, result.stderr
    with Spool(default_spool_path(CRASH_API_KEY)) as s:
        assert s.stats(time.time()).counts["pending"] == 1
