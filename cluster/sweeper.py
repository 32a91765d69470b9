"""Images left in flight are picked up again by themselves.

- **At start on the local broker** (``resume_in_flight``): tansu keeps topics in
  memory, so every event queued when the stack stopped is gone, while the bytes and
  catalog rows are safe. Every image in a non-terminal state is re-published at once.
- **Periodically** (``StuckSweeper``, an actor of its own): on a durable Kafka an event
  can still be lost (a producer that died between the catalog write and the send, a
  topic deleted by hand). An image that has not moved for ``ops.stuck_after_s`` is
  re-published, but only while the stage that should move it has caught up on its
  topic: behind a backlog an old image is queued, not stuck, and re-publishing the
  backlog would only double it.

Re-publishing is idempotent: the event keeps the image id, so every sink overwrites.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from deeplens.events import utcnow
from deeplens.settings import Settings
from ingestion.catalog import ImageRow
from ingestion.reconcile import STUCK, ReconcileReport, republish

log = logging.getLogger(__name__)

# status -> the (stage group, topic) pairs that must have caught up before an image
# left in that status counts as stuck: the groups that move it to its next status.
WAITS_ON: dict[str, tuple[tuple[str, str], ...]] = {
    "uploaded": (("validation", "images.uploaded"), ("validation", "images.uploaded.bulk")),
    "validated": (("embedding", "images.validated"), ("projection", "images.validated"),
                  ("embedding", "images.validated.bulk"), ("projection", "images.validated.bulk")),
    "processed": (("indexing", "images.processed"), ("projection", "images.processed"),
                  ("projection", "images.indexed")),
}
assert set(WAITS_ON) == set(STUCK)


def last_moved(row: ImageRow) -> datetime:
    """When the image last changed status."""
    stamps = [row.uploaded_at, row.validated_at, row.processed_at]
    return max(s for s in stamps if s is not None)


def resume_in_flight(settings: Settings, started_at: datetime) -> ReconcileReport:
    """Re-publish every image left in a non-terminal state before ``started_at`` (the
    local broker forgot their events)."""
    return republish(settings, STUCK, started_at)


def caught_up(lags: dict[tuple[str, str, int], int], running: set[str]) -> set[str]:
    """The statuses whose moving stages (those running) have no lag on their topics."""
    ready = set()
    for status, waits in WAITS_ON.items():
        behind = sum(n for (stage, topic, _), n in lags.items()
                     if (stage, topic) in waits and stage in running)
        if behind == 0:
            ready.add(status)
    return ready


@dataclass
class SweepStats:
    sweeps: int = 0
    republished: int = 0
    missing_bytes: int = 0
    deferred: int = 0  # sweeps that left a status alone because its stage was behind
    last_error: str = ""


class StuckSweeper:
    """Runs :meth:`sweep` every ``ops.sweep_interval_s`` in a thread; a Ray actor in the
    stack (its ``stats`` feed the Gateway's metrics)."""

    def __init__(self, settings: Settings, running: list[str], start: bool = True) -> None:
        self.settings = settings
        self.running = set(running)
        self.stats_ = SweepStats()
        self._stop = threading.Event()
        self._admin: Any = None
        self._consumer: Any = None
        if start and settings.ops.sweep_interval_s > 0:
            threading.Thread(target=self._loop, daemon=True, name="stuck-sweeper").start()

    def _lags(self) -> dict[tuple[str, str, int], int]:
        from cluster.lag import offsets_and_lag
        from deeplens.kafka import admin_client, make_consumer
        from deeplens.topics import TopicNames

        if self._admin is None:
            self._admin = admin_client(self.settings.kafka)
            self._consumer = make_consumer(self.settings.kafka, "deeplens-sweeper-reader")
        _, lags = offsets_and_lag(self._admin, self._consumer,
                                  TopicNames(self.settings.kafka.topic_prefix), self.running)
        return lags

    def sweep(self, now: datetime | None = None) -> ReconcileReport:
        """One pass: re-publish what is stuck where the pipeline has caught up."""
        now = now or utcnow()
        ready = caught_up(self._lags(), self.running)
        self.stats_.sweeps += 1
        if ready != set(STUCK):
            self.stats_.deferred += 1
        cutoff = now - timedelta(seconds=self.settings.ops.stuck_after_s)
        report = republish(self.settings, tuple(sorted(ready)), cutoff,
                           keep=lambda row: last_moved(row) < cutoff)
        self.stats_.republished += len(report.republished)
        self.stats_.missing_bytes += len(report.missing_bytes)
        if report.republished or report.missing_bytes:
            log.warning("stuck-image sweep: re-published %d image(s), %d with bytes gone",
                        len(report.republished), len(report.missing_bytes))
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.ops.sweep_interval_s):
            try:
                self.sweep()
            except Exception as exc:  # noqa: BLE001 - the broker or catalog may be busy
                self.stats_.last_error = str(exc)[:500]
                log.warning("stuck-image sweep failed: %s", exc)

    def stats(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self.stats_)

    def ready(self) -> bool:
        return True

    def stop(self) -> None:
        self._stop.set()


def launch_sweeper(settings: Settings, running: list[str]) -> Any:
    """The sweeper as a Ray actor named ``<prefix>sweeper`` (restarted if it dies)."""
    import ray

    actor = ray.remote(StuckSweeper).options(  # type: ignore[attr-defined]
        num_cpus=0, resources=settings.actors.resources or None, max_restarts=-1,
        max_concurrency=2, name=sweeper_name(settings), get_if_exists=False,
    ).remote(settings, running)
    ray.get(actor.ready.remote(), timeout=120)
    return actor


def sweeper_name(settings: Settings) -> str:
    return f"{settings.kafka.topic_prefix}sweeper"
