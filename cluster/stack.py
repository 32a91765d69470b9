"""The local stack behind ``deeplens up``: broker, topics, Ray, actors, HTTP API."""

from __future__ import annotations

import logging
import signal
import threading
from types import TracebackType

from deeplens.broker import LocalBroker, start_local_broker
from deeplens.kafka import admin_client
from deeplens.settings import Settings
from deeplens.topics import TopicNames, ensure_topics

log = logging.getLogger(__name__)


class LocalStack:
    """Everything DeepLens runs, on one machine; a context manager that cleans up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: LocalBroker | None = None
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

    def _start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
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

    def print_banner(self) -> None:
        kafka = self.settings.kafka
        where = "local tansu broker, in memory" if self.broker else "configured Kafka"
        print(f"DeepLens is up\n  broker: {kafka.bootstrap_servers} ({where})\n"
              f"  topics: {len(self.topics_created)} created, table in deeplens/topics.toml\n"
              f"  data:   {self.settings.data_dir.resolve()}\nCtrl-C stops everything.",
              flush=True)

    def wait(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._done.set())
        self._done.wait()

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
