"""``spoolpost metrics``: a spool's state as Prometheus metrics.

Built with ``prometheus_client`` (a :class:`CollectorRegistry` holding one
collector that yields metric families from one :class:`Observation`), printed
with ``generate_latest`` or written atomically with ``write_to_textfile`` for
node_exporter's textfile collector.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spoolpost.ops.status import quarantine, verdict
from spoolpost.spool.reader import Observation

#: The persisted counters exposed, with their help text.
COUNTERS = {
    "delivered": "Events delivered (acknowledged by the endpoint).",
    "dead": "Events dead-lettered.",
    "dropped": "Events dropped by on_full.",
}


class SpoolCollector(Collector):
    """Metric families for one spool, labelled ``spool`` (its path):
    ``spoolpost_up`` (1 when the spool could be read, 0 when it is missing or
    corrupt: then only it and ``spoolpost_quarantined_files`` are given),
    gauges ``spoolpost_pending``, ``_leased``, ``_dead`` (events),
    ``spoolpost_bytes`` (used bytes of the file), ``spoolpost_oldest_pending_age_seconds``
    (0 when none is pending), ``spoolpost_paused`` (1 when the latest delivering
    process is paused by a configuration fault), ``spoolpost_quarantined_files``
    (files set aside beside it: corrupt spools, orphaned side files); counters
    ``spoolpost_delivered_total``, ``spoolpost_dead_lettered_total``,
    ``spoolpost_dropped_total``. ``obs`` None: the spool at ``path`` cannot be read."""

    def __init__(self, obs: Observation | None, path: Path | None = None) -> None:
        self.obs = obs
        self.path = Path(obs.stats.path) if obs is not None else Path(path or "")

    def collect(self) -> Iterator[Metric]:
        obs, labels = self.obs, ["spool"]
        path = [str(self.path)]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"spoolpost_{name}", doc, labels=labels)
            family.add_metric(path, value)
            return family

        yield gauge(
            "up",
            "1 when the spool could be read; 0 when missing or corrupt.",
            0.0 if obs is None else 1.0,
        )
        yield gauge(
            "quarantined_files",
            "Files set aside beside the spool (corrupt spools, orphaned -wal/-shm).",
            len(quarantine(self.path)),
        )
        if obs is None:
            return
        for state in ("pending", "leased", "dead"):
            yield gauge(state, f"Events {state} in the spool.", obs.stats.counts[state])
        yield gauge("bytes", "Used bytes of the spool file.", obs.used_bytes)
        yield gauge(
            "oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none).",
            obs.stats.oldest_pending_age or 0.0,
        )
        yield gauge(
            "paused",
            "1 when delivery is paused by a configuration fault.",
            1.0 if verdict(obs).state == "paused" else 0.0,
        )
        names = {"delivered": "delivered", "dead": "dead_lettered", "dropped": "dropped"}
        for counter, doc in COUNTERS.items():
            family = CounterMetricFamily(f"spoolpost_{names[counter]}", doc, labels=labels)
            family.add_metric(path, obs.stats.counters.get(counter, 0))
            yield family


def metrics_registry(obs: Observation | None, path: Path | None = None) -> CollectorRegistry:
    """A registry holding only :class:`SpoolCollector` for ``obs`` (None: the
    spool at ``path`` cannot be read)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpoolCollector(obs, path))
    return registry


def metrics_text(obs: Observation | None, path: Path | None = None) -> str:
    """The Prometheus text exposition of ``obs`` (None: ``spoolpost_up 0`` for
    the spool at ``path``, which cannot be read)."""
    return generate_latest(metrics_registry(obs, path)).decode("utf-8")


def write_textfile(obs: Observation | None, path: Path, spool: Path | None = None) -> None:
    """Write the exposition of ``obs`` (None: the spool at ``spool`` cannot be
    read) to ``path`` atomically (a temporary file renamed over it). Raises
    ``OSError``."""
    write_to_textfile(str(path), metrics_registry(obs, spool))
