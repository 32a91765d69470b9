"""The local stack behind ``deeplens up``: broker, topics, Ray, stage actors, HTTP API."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any

from cluster.controller import launch_controller, stop_controller
from cluster.model_ops import start_model_apps, stop_model_backfill
from cluster.stack_checks import (
    StackError,
    deployment_error,
    ensure_demo_key,
    from_project_root,
    shared_state_problems,
)
from cluster.stages import stage_specs
from deeplens.broker import LocalBroker, start_local_broker
from deeplens.events import utcnow
from deeplens.kafka import admin_client
from deeplens.runtime import clear_runtime, write_runtime
from deeplens.settings import Settings
from deeplens.stage_actor import launch_stage, stop_stage
from deeplens.topics import TopicNames, ensure_topics, wanted_partitions

log = logging.getLogger(__name__)


class LocalStack:
    """Everything DeepLens runs, on one machine; a context manager that cleans up."""

    def __init__(self, settings: Settings, with_ray: bool = True,
                 stage_overrides: dict[str, dict[str, Any]] | None = None,
                 announce: bool = False) -> None:
        self.settings = settings
        self.announce = announce  # point ~/.deeplens/current-stack.json here (deeplens up)
        self.stage_overrides = stage_overrides or {}  # e.g. fault-injection hooks in tests
        self.with_ray = with_ray
        self.broker: LocalBroker | None = None
        self.demo_key: str | None = None
        self.actors: list[Any] = []
        self.topics_created: list[str] = []
        self._ray_started = self._serve_started = False
        self._done = threading.Event()
        self.ready_s: float | None = None  # seconds from start to ready
        self.resumed = 0  # images an earlier run left in flight, re-published at start
        self.sweeper: Any = None  # cluster.sweeper.StuckSweeper actor
        self.recycler: Any = None  # cluster.topic_recycler.TopicRecycler (local broker)
        self.controller: Any = None  # cluster.controller.ScalingController actor

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://{self.settings.serve.host}:{self.settings.serve.port}"

    def _start(self) -> None:
        import time

        began = time.monotonic()
        began_at = utcnow()  # rows uploaded before this were left by an earlier run
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = self.settings.model_copy(
            update={"data_dir": self.settings.data_dir.resolve()})
        self._check_services()
        if self.with_ray:
            self._start_ray()  # before the broker: a cluster refuses a node-local one
        self._start_broker()
        if not self.with_ray:
            return
        self.settings, self.demo_key = ensure_demo_key(self.settings)
        self._start_serve()
        for spec, count in stage_table(self.settings, self.stage_overrides).values():
            self.actors += launch_stage(self.settings, spec, count)
        self._resume(began_at)
        self._write_runtime()
        self.ready_s = time.monotonic() - began

    def _check_services(self) -> None:
        """Every external service the settings name answers, or one line each on what not."""
        from cluster.preflight import preflight

        problems = preflight(self.settings)
        if problems:
            raise StackError("\n".join(problems))

    def _write_runtime(self) -> None:
        import sqlalchemy as sa

        # The catalog's address without its password: `deeplens status` names it when
        # it cannot read the per-tenant counts from where it runs.
        catalog = (sa.make_url(self.settings.catalog_url).render_as_string(hide_password=True)
                   if self.settings.catalog_url else "")
        write_runtime(self.settings, {
            "bootstrap_servers": self.settings.kafka.bootstrap_servers, "url": self.url,
            "local_broker": self.broker is not None, "pid": os.getpid(),
            "catalog": catalog, **ray_location()}, self.announce)

    def _start_broker(self) -> None:
        kafka = self.settings.kafka
        if not kafka.bootstrap_servers:
            log_path = str(self.settings.data_dir / "broker.log")
            self.broker = start_local_broker(kafka.local_broker_port, log_path=log_path)
            kafka = kafka.model_copy(update={"bootstrap_servers": self.broker.bootstrap,
                                             "one_record_per_batch": True})
            self.settings = self.settings.model_copy(update={"kafka": kafka})
        report = ensure_topics(admin_client(kafka), TopicNames(kafka.topic_prefix),
                               partitions=wanted_partitions(kafka.partitions,
                                                            kafka.min_partitions))
        for line in report.drift:
            log.warning("topic drift: %s", line)
        self.topics_created = report.created

    def _start_ray(self) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not ray.is_initialized():
            offline = "0" if self.settings.model.allow_download else "1"
            local = not self.settings.ray_address
            # Ray's default store takes 30 % of RAM; small messages only here (bytes: Kafka)
            store = self.settings.ray_object_store_mb * 2**20 if local else None
            from ray.exceptions import AuthenticationError

            try:
                with from_project_root():
                    ray.init(address=self.settings.ray_address or None,
                             include_dashboard=False if local else None,
                             object_store_memory=store,
                             log_to_driver=False,
                             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0",
                                                       "HF_HUB_OFFLINE": offline}})
            except AuthenticationError as exc:
                raise StackError(
                    f"the Ray cluster at {self.settings.ray_address} refused this node's "
                    "token: set RAY_AUTH_MODE=token and the cluster's token (~/.ray/auth_token, "
                    "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) here, as on every node (README "
                    "\"Ray token authentication\")") from exc
            self._ray_started = True
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        problems = shared_state_problems(self.settings, nodes)
        if problems:
            raise StackError(f"this Ray cluster has {nodes} nodes, but " + "; ".join(problems)
                             + ". Actors on other nodes would not see this node's files.")

    def _start_serve(self) -> None:
        from ray import serve

        from cluster.gateway import build_gateway
        from deeplens.serve_names import EMBEDDER_APP, GATEWAY_APP
        from serve_apps.embedder import build_embedder

        serve.start(proxy_location=self.settings.serve.proxy_location,
                    http_options={"host": self.settings.serve.host,
                                  "port": self.settings.serve.port})
        self._serve_started = True
        try:
            serve.run(build_embedder(self.settings), name=EMBEDDER_APP, route_prefix=None,
                      external_scaler_enabled=True)  # the scaling controller sets replicas
        except Exception as exc:  # the replica's start-up error, e.g. weights missing
            raise StackError(f"the Embedder did not start: {deployment_error(exc)}") from exc
        start_model_apps(self.settings)  # a model change's apps; its backfill resumed
        serve.run(build_gateway(self.settings), name=GATEWAY_APP, route_prefix="/")

    def _resume(self, began_at: datetime) -> None:
        """Pick up what an earlier run left in flight, now and then periodically."""
        from cluster.sweeper import launch_sweeper, resume_in_flight

        if self.broker is not None:  # the in-memory broker forgot every queued event
            report = resume_in_flight(self.settings, began_at)
            self.resumed = len(report.republished)
            if report.missing_bytes:
                log.warning("%d image(s) left in flight have no stored bytes: failed as "
                            "missing_object", len(report.missing_bytes))
        running = sorted({spec.stage for spec, _ in stage_specs(self.settings)})
        self.sweeper = launch_sweeper(self.settings, running)
        if self.broker is not None and self.settings.kafka.local_broker_recycle_messages:
            from cluster.topic_recycler import TopicRecycler

            self.recycler = TopicRecycler(self.settings, running).start()
        if self.settings.scaling.enabled:
            self.controller = launch_controller(
                self.settings, stage_table(self.settings, self.stage_overrides))

    def print_banner(self) -> None:
        kafka = self.settings.kafka
        where = "local tansu broker, in memory" if self.broker else "configured Kafka"
        lines = [
            "DeepLens is up",
            f"  API:    {self.url}  (search page there; spec at {self.url}/openapi.json)",
            f"  broker: {kafka.bootstrap_servers} ({where})",
            f"  data:   {self.settings.data_dir}",
            f"  stages: {len(self.actors)} consumer actors",
        ]
        if self.resumed:
            lines.append(f"  resuming {self.resumed} images left in flight by the last run")
        if self.ready_s is not None:
            lines.append(f"  ready in {self.ready_s:.0f} s; memory {self.memory_report()}")
        if self.demo_key:
            lines.append(f"  tenant 'demo', API key: {self.demo_key}")
            lines.append(f"  try:    curl -H 'Authorization: Bearer {self.demo_key}' "
                         f"-F file=@photo.jpg {self.url}/v1/images")
        lines.append("Ctrl-C stops everything.")
        print("\n".join(lines), flush=True)

    @property
    def memory_is_local_only(self) -> bool:
        """Whether the footprint counts the driver only: on a Ray it did not start, the
        actors, replicas and Ray's processes are not its descendants."""
        return bool(self.settings.ray_address) or not self._ray_started

    def memory_report(self) -> str:
        """What every process of this stack holds (PSS), by role; '' off Linux."""
        from cluster.footprint import describe, footprint

        try:
            report = describe(*footprint())
        except OSError:
            return "(not measurable here)"
        if self.memory_is_local_only:
            report += (" (this process and its children on this node only: the actors and "
                       "replicas run under the Ray cluster's raylets, see `ray status` or "
                       "the Ray dashboard for memory per node)")
        return report

    def stop_on_signals(self) -> None:
        """From now on Ctrl-C (or SIGTERM) ends :meth:`wait` instead of raising."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._done.set())

    def wait(self) -> None:
        self.stop_on_signals()
        self._done.wait()

    def close(self) -> None:
        clear_runtime(self.settings, self.announce)
        if self.recycler is not None:
            self.recycler.stop()
            self.recycler = None
        if self.sweeper is not None:
            import ray

            ray.kill(self.sweeper, no_restart=True)
            self.sweeper = None
        if self.controller is not None:  # first: it stops the actors it added, cleanly
            stop_controller(self.controller, stage_table(self.settings, self.stage_overrides))
            self.controller = None
        if self.actors:
            stop_stage(self.actors)
            self.actors = []
        stop_model_backfill()  # detached: it would outlive the stack on a shared Ray
        own_local_ray = self._ray_started and not self.settings.ray_address
        if self._serve_started and not own_local_ray:
            # On a Ray not started here (a cluster, a test session) take our apps down; a
            # local Ray ends Serve in ray.shutdown() (serve.shutdown() adds raylet warnings).
            from ray import serve

            serve.shutdown()
        self._serve_started = False
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


def stage_table(settings: Settings, overrides: dict[str, dict[str, Any]]
                ) -> dict[str, tuple[Any, int]]:
    """stage -> (its spec with the stack's overrides, the count started: the minimum)."""
    return {spec.stage: (replace(spec, **overrides.get(spec.stage, {})), count)
            for spec, count in stage_specs(settings)}


def ray_location() -> dict[str, str]:
    """Where `deeplens scale` joins this stack's Ray and finds its named actors."""
    import ray

    if not ray.is_initialized():
        return {}
    context = ray.get_runtime_context()
    return {"ray_address": context.gcs_address, "ray_namespace": context.namespace}
