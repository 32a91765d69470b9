"""The scaling controller: one small Ray actor that turns lag into stage actors and queued
images into Embedder replicas, live, and gives them back when the work is done.

Every ``scaling.interval_s`` it reads each stage's lag and committed offsets (broker),
its live actors and their nodes, the Embedder's busy fraction and replicas, asks
:mod:`cluster.scaling_policy` what to run, and applies it: stage actors are added with
``launch_stage`` under the next free names ``<prefix><stage>-<i>`` and removed highest
index first with ``stop_stage`` (the loop finishes its batches in flight, commits and
leaves the group; cooperative-sticky assignment moves only the freed partitions);
Embedder replicas are set through Serve's external-scaler API. ``pin(name, n)``
(``deeplens scale``) applies at once and holds until ``pin(name, None)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from cluster.lag import offsets_and_lag, wait_until_settled
from cluster.scaling_ops import (
    ACTOR_TIMEOUT_S,
    EMBEDDER,
    controller_name,
    embedder_busy,
    set_embedder_replicas,
)
from cluster.scaling_policy import Hysteresis, Scaler, embedder_signal, partitions_of, runs, stage_signal
from deeplens.serve_names import running_embedder_replicas as running_replicas
from deeplens.settings import Settings
from deeplens.stage_actor import StageSpec, launch_stage, live_stage_actors, stop_stage
from deeplens.topics import TopicNames

log = logging.getLogger(__name__)


class ScalingController:
    """Runs :meth:`tick` every ``scaling.interval_s`` in a thread (a Ray actor in the stack)."""

    def __init__(self, settings: Settings, stages: dict[str, tuple[StageSpec, int]],
                 start: bool = True) -> None:
        cfg = settings.scaling
        self.settings, self.cfg = settings, cfg
        self.names = TopicNames(settings.kafka.topic_prefix)
        self.specs = {name: spec for name, (spec, _) in stages.items()}
        self.scalers = {name: Scaler(name, minimum, minimum,
                                     Hysteresis(cfg.upscale_delay_s, cfg.downscale_delay_s))
                        for name, (_, minimum) in stages.items()}
        serve = settings.serve
        self.scalers[EMBEDDER] = Scaler(
            EMBEDDER, serve.replicas, max(serve.replicas, serve.autoscale_max_replicas),
            Hysteresis(cfg.upscale_delay_s, cfg.downscale_delay_s))
        self.handles: dict[str, dict[int, Any]] = {name: {} for name in stages}
        # The handles of the actors this controller started, kept until it stops them: Ray
        # destroys a named actor (not detached) as soon as its creator drops the handle.
        self.owned: dict[tuple[str, int], Any] = {}
        self.observed: dict[str, dict[str, Any]] = {name: {} for name in self.scalers}
        self.replica_target = serve.replicas
        self.cold_starts: deque[float] = deque(maxlen=20)
        self.steps: deque[dict[str, Any]] = deque(maxlen=50)
        self.step_counts: dict[str, int] = {}
        self.ticks, self.last_error = 0, ""
        self._progress: dict[str, tuple[float, int]] = {}
        self._lock = threading.RLock()  # one resize at a time (the loop or a pin)
        self._stop = threading.Event()
        self._admin: Any = None
        self._consumer: Any = None
        if start:
            threading.Thread(target=self._loop, daemon=True, name="scaling").start()

    # -- reading ----------------------------------------------------------------------
    def _offsets(self) -> tuple[dict[tuple[str, int], int], dict[tuple[str, str, int], int]]:
        return offsets_and_lag(*self._clients(), self.names, set(self.specs))

    def _clients(self) -> tuple[Any, Any]:
        from deeplens.kafka import admin_client, make_consumer

        if self._admin is None:
            self._admin = admin_client(self.settings.kafka)
            self._consumer = make_consumer(self.settings.kafka, "deeplens-scaling-reader")
        return self._admin, self._consumer

    def _settle(self, stage: str, timeout_s: float = 15.0) -> None:
        """Let the stage's group finish a rebalance before a step adds or removes a member."""
        if unsettled := wait_until_settled(self._clients()[0], [self.names.group(stage)],
                                           timeout_s, self._stop):
            log.warning("scaling %s while its group still rebalances: %s", stage, unsettled)

    def live(self, stage: str) -> dict[int, Any]:
        """The stage's actors by index, looked up by name (the stack started some)."""
        self.handles[stage] = found = live_stage_actors(self.settings, stage)
        return found

    def _nodes(self, handles: list[Any]) -> dict[str, int]:
        """Live actors per node (``ip/node-id-prefix``), each asked on a short deadline."""
        import ray

        refs = [h.stats.remote() for h in handles]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=ACTOR_TIMEOUT_S) if refs \
            else ([], [])
        nodes: dict[str, int] = {}
        for ref in ready:
            try:
                node = ray.get(ref, timeout=0).get("node") or "?"
            except Exception:  # noqa: BLE001 - a dying actor: no node to show
                continue
            nodes[node] = nodes.get(node, 0) + 1
        return dict(sorted(nodes.items()))

    def _rate(self, name: str, done: int, now: float) -> float:
        """Messages committed per second since the last tick (0 after a topic recycle)."""
        before = self._progress.get(name)
        self._progress[name] = (now, done)
        if before is None or now <= before[0]:
            return 0.0
        return max(done - before[1], 0) / (now - before[0])

    # -- one pass ---------------------------------------------------------------------
    def tick(self, now: float | None = None) -> dict[str, Any]:
        """Read, decide and apply once for every stage and the Embedder."""
        now = time.monotonic() if now is None else now
        ends, lags = self._offsets()
        for stage, spec in self.specs.items():
            with self._lock:  # a pin in between would be undone by a stale count
                self._stage_tick(stage, spec, ends, lags, now)
        queued = sum(n for (s, _, _), n in lags.items() if s == "embedding")
        with self._lock:
            self._embedder_tick(queued, now)
        self.ticks += 1
        return self.stats()

    def _stage_tick(self, stage: str, spec: StageSpec, ends: dict[tuple[str, int], int],
                    lags: dict[tuple[str, str, int], int], now: float) -> None:
        lag = sum(n for (s, _, _), n in lags.items() if s == stage)
        topics = {self.names.physical(t) for (s, t, _) in lags if s == stage}
        done = sum(end for (t, _), end in ends.items() if t in topics) - lag
        rate = self._rate(stage, done, now)
        scaler = self.scalers[stage]
        partitions = partitions_of(ends, [self.names.physical(t) for t in spec.topics])
        scaler.maximum = max(scaler.minimum, min(partitions, self.cfg.max_actors or
                                                 partitions))
        handles = self.live(stage)
        wanted, cause, detail = stage_signal(lag, rate, len(handles), scaler.minimum,
                                             scaler.maximum, self.cfg)
        decision = scaler.decide(len(handles), wanted, now, cause, detail)
        if decision.target != len(handles):
            self.resize(stage, decision.target, why=decision.reason)
            handles = self.handles[stage]
        self.observed[stage] = {"lag": lag, "rate": round(rate, 2), "actors": len(handles),
                                "nodes": self._nodes(list(handles.values()))}

    def _embedder_tick(self, queued: int, now: float) -> None:
        scaler = self.scalers[EMBEDDER]
        busy, running = embedder_busy(), running_replicas()
        wanted, cause, detail = embedder_signal(queued, busy, self.replica_target,
                                                scaler.minimum, scaler.maximum, self.cfg)
        decision = scaler.decide(self.replica_target, wanted, now, cause, detail)
        if decision.target != self.replica_target:
            self.set_replicas(decision.target, why=decision.reason)
        self.observed[EMBEDDER] = {"queued": queued, "busy": busy, "running": running,
                                   "target": self.replica_target,
                                   "last_cold_start_s": self.cold_starts[-1]
                                   if self.cold_starts else None}

    # -- applying ---------------------------------------------------------------------
    def resize(self, stage: str, count: int, why: str = "") -> int:
        """Run ``count`` actors for ``stage``: start the missing, stop the highest."""
        with self._lock:
            have = self.live(stage)
            if count != len(have):  # a step is due: let a rebalance finish first, look again
                self._settle(stage)
                have = self.live(stage)
            if count > len(have):
                free = [i for i in range(count + len(have)) if i not in have][:count - len(have)]
                for first, n in runs(free):  # each run of free names starts side by side
                    started = launch_stage(self.settings, self.specs[stage], n, first)
                    self.owned.update({(stage, first + k): h for k, h in enumerate(started)})
            elif count < len(have):
                stop_stage([have[i] for i in sorted(have)[count:]])
                for i in sorted(have)[count:]:
                    self.owned.pop((stage, i), None)
            deadline = time.monotonic() + 10  # a killed actor's name goes a moment later
            while len(self.live(stage)) != count and time.monotonic() < deadline:
                time.sleep(0.2)
            after = self.observed.setdefault(stage, {})["actors"] = len(self.handles[stage])
        if after != len(have):
            self._step(stage, len(have), after, why)
        return after

    def set_replicas(self, count: int, why: str = "") -> None:
        """Ask Serve for ``count`` Embedder replicas (new ones are timed until running)."""
        with self._lock:
            before, self.replica_target = self.replica_target, count
            set_embedder_replicas(count)
        self._step(EMBEDDER, before, count, why)
        if count > before:
            threading.Thread(target=self._time_cold_start, args=(count,), daemon=True).start()

    def _time_cold_start(self, count: int, timeout_s: float = 900.0) -> None:
        began = time.monotonic()
        while time.monotonic() - began < timeout_s and not self._stop.is_set():
            if (running_replicas() or 0) >= count:
                self.cold_starts.append(round(time.monotonic() - began, 1))
                log.info("Embedder at %d replicas; cold start %.1f s", count,
                         self.cold_starts[-1])
                return
            time.sleep(1.0)

    def _step(self, name: str, before: int, after: int, why: str) -> None:
        log.info("scaling %s: %d -> %d (%s)", name, before, after, why)
        self.step_counts[name] = self.step_counts.get(name, 0) + 1
        self.steps.append({"at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "name": name, "from": before, "to": after, "why": why})

    def pin(self, name: str, count: int | None) -> dict[str, Any]:
        """``deeplens scale NAME N`` (applied now, held) or ``NAME auto`` (None: released)."""
        if name not in self.scalers:
            raise ValueError(f"unknown stage {name!r}; one of {', '.join(sorted(self.scalers))}")
        if count is not None and count < 1:
            raise ValueError("a count of at least 1")
        if count is not None and name != EMBEDDER:
            ends, _ = self._offsets()
            top = partitions_of(ends, [self.names.physical(t) for t in self.specs[name].topics])
            if count > top:  # a member past the partitions would only idle
                raise ValueError(f"{name} reads {top} partition(s): at most {top} actor(s)")
        scaler = self.scalers[name]
        scaler.pinned = count
        if count is not None:
            why = f"pinned to {count} by `deeplens scale`"
            if name == EMBEDDER:
                self.set_replicas(count, why)
            else:
                self.resize(name, count, why)
        return self.stats()

    # -- the actor's surface ------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ticks": self.ticks, "interval_s": self.cfg.interval_s,
                               "last_error": self.last_error, "steps": list(self.steps)[-10:]}
        for name, scaler in self.scalers.items():
            last = scaler.last
            out.setdefault("scalers", {})[name] = {
                "min": scaler.minimum, "max": scaler.maximum, "pinned": scaler.pinned,
                "target": last.target if last else None, "wanted": last.wanted if last else None,
                "action": last.action if last else "none", "cause": last.cause if last else "",
                "wait_s": last.wait_s if last else 0.0,
                "reason": last.reason if last else "no decision yet",
                **self.observed.get(name, {})}
        out["cold_starts_s"], out["step_counts"] = list(self.cold_starts), dict(self.step_counts)
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.interval_s):
            try:
                self.tick()
                self.last_error = ""
            except Exception as exc:  # noqa: BLE001 - the broker or Ray may be busy
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("scaling tick failed: %s", exc)

    def ready(self) -> bool:
        return True

    def release(self, initial: dict[str, int]) -> None:
        """Stop the loop and the actors it added (those past each stage's first count):
        they belong to this process and would die with it, mid-batch."""
        self._stop.set()
        with self._lock:
            for stage, count in initial.items():
                extra = self.live(stage) if stage in self.handles else {}
                stop_stage([h for i, h in extra.items() if i >= count])


def launch_controller(settings: Settings, stages: dict[str, tuple[StageSpec, int]]) -> Any:
    """The controller as a Ray actor named ``<prefix>scaling-controller`` (in the stack's
    namespace, which ``deeplens up`` records for ``deeplens scale``)."""
    import ray

    actor = ray.remote(ScalingController).options(  # type: ignore[attr-defined]
        num_cpus=0, resources=settings.actors.resources or None, max_restarts=-1,
        max_concurrency=4, name=controller_name(settings), get_if_exists=False,
    ).remote(settings, stages)
    ray.get(actor.ready.remote(), timeout=120)
    return actor


def stop_controller(actor: Any, stages: dict[str, tuple[StageSpec, int]]) -> None:
    """Stop the controller and the stage actors it added (the stack stops its own)."""
    import ray

    try:
        ray.get(actor.release.remote({stage: n for stage, (_, n) in stages.items()}),
                timeout=60)
    except Exception as exc:  # noqa: BLE001 - a dead controller took its actors along
        log.warning("scaling controller: %s", exc)
    ray.kill(actor, no_restart=True)
