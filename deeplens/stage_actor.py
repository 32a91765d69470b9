"""Running a stage's consumer loop inside Ray actors.

A stage is named by an import path to its handler factory
(``"actors.validator:build_handler"``), so actor processes import only what
their stage needs. Each actor runs one :class:`ConsumerLoop` in a thread and
members of a stage share one consumer group, so Kafka spreads partitions over
them. Actors restart on failure (``max_restarts``); a restarted actor rejoins
the group and resumes from the committed offsets.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from deeplens.consumer_loop import ConsumerLoop
from deeplens.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    stage: str  # a Stage literal: also the consumer group's name
    topics: tuple[str, ...]
    handler_factory: str  # "module:function" taking Settings, returning a BatchHandler
    batch_size: int | None = None
    max_in_flight: int = 1
    # "module:function" taking Settings and returning a before-commit hook: fault
    # injection for tests (a hook that kills the process between produce and commit).
    before_commit: str | None = None


def _node() -> str:
    """The node this actor runs on, as ``ip/node-id-prefix`` ('' outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return ""
        return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:  # noqa: BLE001 - only for display
        return ""


def load_factory(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class StageWorker:
    """The body of a stage actor; also usable in-process (tests, one-off tools)."""

    def __init__(self, settings: Settings, spec: StageSpec) -> None:
        logging.basicConfig(level=settings.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.spec = spec
        # Wall time this actor (re)started: its counters count from here, and the metrics
        # mark a stage's counters as reset with it (``_created``).
        self.started_at = time.time()
        handler = load_factory(spec.handler_factory)(settings)
        hook = load_factory(spec.before_commit)(settings) if spec.before_commit else None
        self.loop = ConsumerLoop(
            settings=settings.kafka, stage=spec.stage, topics=spec.topics,  # type: ignore[arg-type]
            handler=handler, batch_size=spec.batch_size, max_in_flight=spec.max_in_flight,
            before_commit=hook, bulk_share=settings.imports.bulk_share,
            # A loop that cannot go on takes the actor down, so Ray restarts it.
            on_fatal=lambda: os._exit(1),
        ).start()

    def ready(self) -> bool:
        return self.loop.alive

    def stats(self) -> dict[str, Any]:
        return {"stage": self.spec.stage, "alive": self.loop.alive, "node": _node(),
                "started_at": self.started_at, **asdict(self.loop.stats)}

    def pid(self) -> int:
        """The actor's process id (benchmarks attribute CPU time to stages by it)."""
        return os.getpid()

    def hold(self, timeout_s: float = 30.0) -> bool:
        """Let go of the broker (commit, close the consumer) until :meth:`release` or the
        hold's lease ends; True once let go. The local broker's topic recycling asks
        this before it deletes a topic this stage reads."""
        return self.loop.hold.request(timeout_s)

    def release(self) -> None:
        self.loop.hold.release()

    def stop(self) -> None:
        self.loop.stop()


def launch_stage(settings: Settings, spec: StageSpec, count: int,
                 first_index: int = 0, start_timeout_s: float = 180.0) -> list[Any]:
    """Start ``count`` actors for a stage and wait until each has started its loop."""
    import ray

    remote_cls = ray.remote(StageWorker)
    actors = [
        remote_cls.options(  # type: ignore[attr-defined]
            num_cpus=settings.actors.num_cpus,
            resources=settings.actors.resources or None,
            max_restarts=-1,
            max_concurrency=4,  # stats()/stop() answer while the loop thread runs
            name=stage_actor_name(settings, spec.stage, i),
            get_if_exists=False,
        ).remote(settings, spec)
        for i in range(first_index, first_index + count)
    ]
    try:
        ray.get([a.ready.remote() for a in actors], timeout=start_timeout_s)
    except ray.exceptions.GetTimeoutError:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        raise RuntimeError(
            f"{spec.stage}: {count} actor(s) did not start within {start_timeout_s:.0f}s; most "
            f"likely Ray has no CPU left for them (each asks DEEPLENS_ACTORS__NUM_CPUS="
            f"{settings.actors.num_cpus}; see `ray status`)") from None
    return actors


def stage_actor_name(settings: Settings, stage: str, index: int) -> str:
    """``<prefix><stage>-<i>``: the stack, the scaling controller and the health watch
    find a stage's actors by these names."""
    return f"{settings.kafka.topic_prefix}{stage}-{index}"


def live_stage_actors(settings: Settings, stage: str) -> dict[int, Any]:
    """A stage's running actors by index, looked up by name (whoever started them)."""
    import ray

    found: dict[int, Any] = {}
    misses, i = 0, 0
    while misses < 3:  # names are dense from 0; a gap or two may be mid-restart
        try:
            found[i] = ray.get_actor(stage_actor_name(settings, stage, i))
            misses = 0
        except ValueError:
            misses += 1
        i += 1
    return found


def stop_stage(actors: list[Any], timeout_s: float = 20.0) -> None:
    """Stop loops cleanly (each finishes its batches in flight, commits and leaves the
    group), then end the actors. Each actor gets the whole deadline: one already dead
    does not cut the others' clean stop short."""
    import ray

    calls = [a.stop.remote() for a in actors]
    done, pending = ray.wait(calls, num_returns=len(calls), timeout=timeout_s) if calls \
        else ([], [])
    for ref in done:
        try:
            ray.get(ref, timeout=0)
        except Exception as exc:  # noqa: BLE001 - an actor already dead still gets killed
            log.warning("stopping a stage actor: %s", exc)
    if pending:
        log.warning("%d stage actor(s) did not stop within %.0f s", len(pending), timeout_s)
    for actor in actors:
        ray.kill(actor, no_restart=True)
