"""The local stack behind ``deeplens up``: broker, topics, Ray, stage actors, HTTP API."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import SecretStr

from deeplens.broker import LocalBroker, start_local_broker
from deeplens.kafka import admin_client
from deeplens.settings import Settings
from deeplens.stage_actor import StageSpec, launch_stage, stop_stage
from deeplens.topics import TopicNames, ensure_topics

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"


def stage_specs(settings: Settings) -> list[tuple[StageSpec, int]]:
    """Every consumer stage the stack runs, with its actor count from settings."""
    from actors import validator
    from ingestion import projection

    return [
        (StageSpec(validator.STAGE, validator.TOPICS, "actors.validator:build_handler"),
         settings.actors.validators),
        (StageSpec(projection.STAGE, projection.TOPICS, "ingestion.projection:build_handler"),
         settings.actors.projectors),
    ]


def ensure_demo_key(settings: Settings) -> tuple[Settings, str | None]:
    """With no API keys configured, a ``demo`` tenant with a key kept in the data dir."""
    if settings.tenant_keys():
        return settings, None
    key_file: Path = settings.data_dir / "demo-api-key"
    if not key_file.exists():
        key_file.write_text(f"dl-{secrets.token_urlsafe(18)}\n")
        key_file.chmod(0o600)
    key = key_file.read_text().strip()
    return settings.model_copy(update={"api_keys": SecretStr(f"{DEMO_TENANT}:{key}")}), key


class LocalStack:
    """Everything DeepLens runs, on one machine; a context manager that cleans up."""

    def __init__(self, settings: Settings, with_ray: bool = True) -> None:
        self.settings = settings
        self.with_ray = with_ray
        self.broker: LocalBroker | None = None
        self.demo_key: str | None = None
        self.actors: list[Any] = []
        self.topics_created: list[str] = []
        self._ray_started = False
        self._serve_started = False
        self._done = threading.Event()

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
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = self.settings.model_copy(
            update={"data_dir": self.settings.data_dir.resolve()})
        self._start_broker()
        if not self.with_ray:
            return
        self.settings, self.demo_key = ensure_demo_key(self.settings)
        self._start_ray()
        for spec, count in stage_specs(self.settings):
            self.actors += launch_stage(self.settings, spec, count)
        self._start_serve()

    def _start_broker(self) -> None:
        kafka = self.settings.kafka
        if not kafka.bootstrap_servers:
            log_path = str(self.settings.data_dir / "broker.log")
            self.broker = start_local_broker(kafka.local_broker_port, log_path=log_path)
            kafka = kafka.model_copy(update={"bootstrap_servers": self.broker.bootstrap})
            self.settings = self.settings.model_copy(update={"kafka": kafka})
        report = ensure_topics(admin_client(kafka), TopicNames(kafka.topic_prefix))
        for line in report.drift:
            log.warning("topic drift: %s", line)
        self.topics_created = report.created

    def _start_ray(self) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0",
                                               "HF_HUB_OFFLINE": "1"}})
            self._ray_started = True

    def _start_serve(self) -> None:
        from ray import serve

        from cluster.gateway import build_gateway

        serve.start(http_options={"host": self.settings.serve.host,
                                  "port": self.settings.serve.port})
        self._serve_started = True
        serve.run(build_gateway(self.settings), name="gateway", route_prefix="/")

    def print_banner(self) -> None:
        kafka = self.settings.kafka
        where = "local tansu broker, in memory" if self.broker else "configured Kafka"
        lines = [
            "DeepLens is up",
            f"  API:    {self.url}  (docs at {self.url}/docs)",
            f"  broker: {kafka.bootstrap_servers} ({where})",
            f"  data:   {self.settings.data_dir}",
            f"  stages: {len(self.actors)} consumer actors",
        ]
        if self.demo_key:
            lines.append(f"  tenant 'demo', API key: {self.demo_key}")
            lines.append(f"  try:    curl -H 'Authorization: Bearer {self.demo_key}' "
                         f"-F file=@photo.jpg {self.url}/v1/images")
        lines.append("Ctrl-C stops everything.")
        print("\n".join(lines), flush=True)

    def wait(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._done.set())
        self._done.wait()

    def close(self) -> None:
        if self.actors:
            stop_stage(self.actors)
            self.actors = []
        if self._serve_started:
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
