"""Is the pipeline moving? Per stage and for the Embedder, with the reason when not.

Read where the truth is, each part on its own deadline, so one unreachable stage (its
node gone) never blanks the others:

- each stage actor's ``stats()``, every actor with its own short timeout; the last
  answer of a stage is kept with its age, and how long the stage has had no live actor;
- the Embedder's replicas from the Serve controller (``serve.status()``);
- the resources the stage actors and the Embedder ask for (``ACTORS__RESOURCES``,
  ``SERVE__RESOURCES``) against the nodes alive: "waiting for a node with resource
  gpu_pool" when none provides them.

``PipelineWatch.report()`` is what ``/readyz``, ``deeplens status`` and the metrics show.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from deeplens.settings import Settings

log = logging.getLogger(__name__)

ACTOR_TIMEOUT_S = 2.0
DEGRADED_AFTER_S = 30.0  # the default of DEEPLENS_OPS__STAGE_DOWN_AFTER_S
NOTE_MAX_AGE_S = 5.0  # an upload answer's pipeline state is at most this old (+ a poll)


@dataclass
class StageState:
    wanted: int
    live: int = 0
    # Last answer of each actor (name -> (monotonic time, stats)): an actor that does not
    # answer keeps its last counters; one that is gone from the namespace is dropped.
    answers: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    dead_since: float | None = None  # monotonic time since when no actor answered alive
    nodes: list[str] = field(default_factory=list)
    reset_at: float | None = None  # wall time the stage's counters last restarted
    # Since when every live actor has held no partition (a consumer group that stopped
    # assigning: on tansu a member leaving mid-join wedges the group for good).
    unassigned_since: float | None = None

    @property
    def stats(self) -> list[dict[str, Any]]:
        return [answer for _, answer in self.answers.values()]

    @property
    def answered_at(self) -> float | None:
        """When the oldest answer in the counters came (their age)."""
        return min((t for t, _ in self.answers.values()), default=None)

    def take(self, answers: dict[str, dict[str, Any]], listed: set[str], now: float) -> None:
        """Fold one poll in: ``answers`` from the actors that answered, ``listed`` every
        actor of the stage in the namespace. A member that restarted (a later
        ``started_at``) or left makes the summed counters start again: ``reset_at``."""
        for name in set(self.answers) - listed:
            del self.answers[name]
            self.reset_at = max(self.reset_at or 0.0, time.time())
        for name, answer in answers.items():
            self.answers[name] = (now, answer)
        starts = [a.get("started_at") or 0.0 for a in self.stats]
        self.reset_at = max([self.reset_at or 0.0, *starts]) or None
        self.live = sum(1 for a in answers.values() if a.get("alive"))
        if answers:
            self.nodes = sorted({a["node"] for a in answers.values() if a.get("node")})
        if self.live:
            self.dead_since = None
        elif self.dead_since is None:
            self.dead_since = now
        if answers:
            idle = self.live and not any(a.get("assigned", True) for a in self.stats
                                         if a.get("alive"))
            self.unassigned_since = (self.unassigned_since or now) if idle else None


def missing_resources(wanted: dict[str, float], nodes: list[dict[str, Any]]) -> list[str]:
    """The custom resources in ``wanted`` that no alive node offers (pure)."""
    offered: set[str] = set()
    for node in nodes:
        if node.get("Alive"):
            offered |= {name for name, amount in node.get("Resources", {}).items() if amount}
    return sorted(name for name, amount in wanted.items() if amount and name not in offered)


def wanted_resources(settings: Settings) -> dict[str, dict[str, float]]:
    """The node resources the stage actors and the Embedder need (pure): their custom
    resources, and GPU where the Embedder asks for one (no GPU node left: it waits)."""
    embedder = dict(settings.serve.resources or {})
    if settings.serve.num_gpus:
        embedder["GPU"] = settings.serve.num_gpus
    return {"stage actors": dict(settings.actors.resources or {}), "Embedder": embedder}


def verdict(stages: dict[str, StageState], replicas: int | None, missing: dict[str, list[str]],
            now: float, degraded_after_s: float = DEGRADED_AFTER_S) -> tuple[str, list[str]]:
    """("ok" | "degraded", reasons) from what was observed (pure)."""
    reasons = []
    for name, state in sorted(stages.items()):
        if state.live == 0 and state.dead_since is not None \
                and now - state.dead_since >= degraded_after_s:
            reasons.append(f"stage {name} has no live actor for {now - state.dead_since:.0f} s")
        elif state.live and state.unassigned_since is not None and \
                now - state.unassigned_since >= degraded_after_s:
            reasons.append(f"stage {name} has been assigned no partition for "
                           f"{now - state.unassigned_since:.0f} s: its consumer group is "
                           "not assigning (on the local broker, restart the stack)")
    if replicas == 0:
        reasons.append("no Embedder replica is running")
    for what, names in sorted(missing.items()):
        for resource in names:
            reasons.append(f"waiting for a node with resource {resource} (for the {what})")
    return ("degraded" if reasons else "ok"), reasons


class PipelineWatch:
    """Observes stage actors and Embedder replicas; thread-safe; one per Gateway replica."""

    def __init__(self, settings: Settings, stage_counts: dict[str, int]) -> None:
        self.settings = settings
        self.degraded_after_s = settings.ops.stage_down_after_s
        started = time.monotonic()
        self.stages = {name: StageState(wanted=count, dead_since=started)
                       for name, count in stage_counts.items()}
        self.replicas: int | None = None
        self._lock = threading.Lock()
        self._note: tuple[float, dict[str, Any]] | None = None  # (monotonic, state+reasons)
        self._refreshing = False

    def note(self) -> dict[str, Any] | None:
        """The last verdict, ``{"state", "reasons"}``, without waiting for a poll (what an
        upload answer carries): refreshed in the background once older than
        NOTE_MAX_AGE_S; None until the first poll has answered."""
        with self._lock:
            last = self._note
            start = not self._refreshing and (
                last is None or time.monotonic() - last[0] > NOTE_MAX_AGE_S)
            self._refreshing = self._refreshing or start
        if start:
            threading.Thread(target=self._refresh, name="pipeline-note", daemon=True).start()
        return None if last is None else last[1]

    def _refresh(self) -> None:
        try:
            self.report()
        except Exception as exc:  # noqa: BLE001 - the note stays as it was
            log.warning("pipeline state: %s", exc)
        finally:
            with self._lock:
                self._refreshing = False

    def poll_stages(self) -> dict[str, StageState]:
        """Ask every stage actor for its stats, each on its own deadline."""
        import ray

        calls: dict[Any, tuple[str, str]] = {}
        listed: dict[str, set[str]] = {stage: set() for stage in self.stages}
        for name, stage in self._actor_names():
            try:
                handle = ray.get_actor(name)
            except ValueError:
                continue  # gone since it was listed
            listed[stage].add(name)
            calls[handle.stats.remote()] = (name, stage)
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=ACTOR_TIMEOUT_S) \
            if calls else ([], [])
        answers: dict[str, dict[str, dict[str, Any]]] = {stage: {} for stage in self.stages}
        for ref in ready:
            name, stage = calls[ref]
            try:
                answers[stage][name] = ray.get(ref, timeout=0)
            except Exception as exc:  # noqa: BLE001 - a dead actor answers with its death
                log.debug("stage actor stats: %s", exc)
        now = time.monotonic()
        with self._lock:
            for stage, got in answers.items():
                self.stages[stage].take(got, listed[stage], now)
            return dict(self.stages)

    def _actor_names(self) -> list[tuple[str, str]]:
        """(actor name, stage) of every stage actor alive in this namespace, those the
        scaling controller added above the configured counts included."""
        import ray

        prefix = self.settings.kafka.topic_prefix
        out = []
        for name in ray.util.list_named_actors():
            stage, dash, index = name.removeprefix(prefix).rpartition("-")
            if name.startswith(prefix) and dash and index.isdigit() and stage in self.stages:
                out.append((name, stage))
        return out

    def poll_embedder(self) -> int | None:
        """Running Embedder replicas (None if Serve cannot be asked)."""
        from ray import serve

        from deeplens.serve_names import EMBEDDER_APP, EMBEDDER_DEPLOYMENT

        try:
            app = serve.status().applications.get(EMBEDDER_APP)
        except Exception as exc:  # noqa: BLE001 - controller unreachable: unknown, not zero
            log.debug("serve status: %s", exc)
            return self.replicas
        deployment = app.deployments.get(EMBEDDER_DEPLOYMENT) if app else None
        states = deployment.replica_states if deployment else {}
        self.replicas = int(sum(n for state, n in states.items() if str(state).endswith(
            "RUNNING")))
        return self.replicas

    def missing(self) -> dict[str, list[str]]:
        import ray

        nodes = ray.nodes()
        out = {}
        for what, wanted in wanted_resources(self.settings).items():
            names = missing_resources(wanted, nodes)
            if names:
                out[what] = names
        return out

    def report(self) -> dict[str, Any]:
        stages = self.poll_stages()
        replicas = self.poll_embedder()
        missing = self.missing()
        now = time.monotonic()
        state, reasons = verdict(stages, replicas, missing, now, self.degraded_after_s)
        with self._lock:
            self._note = (now, {"state": state, "reasons": reasons})
        return {
            "state": state, "reasons": reasons, "embedder_replicas": replicas,
            "stages": {name: {
                "live": s.live, "wanted": s.wanted, "nodes": s.nodes,
                "no_live_actor_for_s": None if s.dead_since is None else round(
                    now - s.dead_since, 1),
                "stats_age_s": None if s.answered_at is None else round(now - s.answered_at, 1),
            } for name, s in sorted(stages.items())},
        }
