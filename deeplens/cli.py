"""The ``deeplens`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from deeplens.settings import Settings, SettingsError, load_settings

log = logging.getLogger("deeplens")


def _cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.masked(), indent=2, default=str))
    return 0


def _kafka_or_exit(settings: Settings) -> Settings:
    """The settings with a running local stack's broker filled in; exit if there is none."""
    from deeplens.runtime import read_runtime

    settings = read_runtime(settings)
    if not settings.kafka.bootstrap_servers:
        raise SystemExit(
            "no broker configured: set DEEPLENS_KAFKA__BOOTSTRAP_SERVERS=host:port, "
            "or run `deeplens broker` and point the variable at it"
        )
    return settings


def _cmd_topics_ensure(settings: Settings, args: argparse.Namespace) -> int:
    from deeplens.kafka import admin_client
    from deeplens.topics import TopicNames, ensure_topics, wanted_partitions

    settings = _kafka_or_exit(settings)
    kafka = settings.kafka
    report = ensure_topics(admin_client(kafka), TopicNames(kafka.topic_prefix),
                           partitions=wanted_partitions(kafka.partitions, kafka.min_partitions))
    for topic in report.created:
        print(f"created  {topic}")
    for topic in report.existing:
        print(f"exists   {topic}")
    for line in report.drift:
        print(f"DRIFT    {line}")
    return 0 if report.ok else 3


def _cmd_topics_list(settings: Settings, args: argparse.Namespace) -> int:
    from deeplens.kafka import admin_client, make_consumer
    from deeplens.topics import TopicNames, list_topics, wanted_partitions

    settings = _kafka_or_exit(settings)
    kafka = settings.kafka
    consumer = make_consumer(kafka, "deeplens-cli-topics")
    try:
        rows = list_topics(admin_client(kafka), consumer, TopicNames(kafka.topic_prefix),
                           partitions=wanted_partitions(kafka.partitions, kafka.min_partitions))
    finally:
        consumer.close()
    print(f"{'topic':32} {'partitions':>10} {'wanted':>8} {'retention':>10} {'end offsets':>12}")
    for row in rows:
        retention = f"{row.retention_ms / 86_400_000:g}d" if row.retention_ms else "-"
        parts = str(row.partitions) if row.partitions else "missing"
        print(f"{row.name:32} {parts:>10} {row.declared_partitions or '-':>8} "
              f"{retention:>10} {row.end_offsets:>12}")
    return 0


def _cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    from deeplens.broker import start_local_broker
    from deeplens.kafka import admin_client
    from deeplens.settings import KafkaSettings
    from deeplens.topics import TopicNames, ensure_topics, wanted_partitions

    broker = start_local_broker(args.port or settings.kafka.local_broker_port)
    kafka = KafkaSettings(**(settings.kafka.model_dump() | {"bootstrap_servers": broker.bootstrap,
                                                           "one_record_per_batch": True}))
    report = ensure_topics(admin_client(kafka), TopicNames(kafka.topic_prefix),
                           partitions=wanted_partitions(kafka.partitions, kafka.min_partitions))
    print(f"local broker (tansu, in memory) on {broker.bootstrap}; "
          f"{len(report.created)} topics created")
    print(f"  export DEEPLENS_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap} "
          "DEEPLENS_KAFKA__ONE_RECORD_PER_BATCH=true")
    print("Ctrl-C stops it; its topics are kept in memory only.")
    _wait_for_signal()
    broker.stop()
    return 0


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


Command = Callable[[Settings, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deeplens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print the effective settings, secrets masked")
    p.set_defaults(func=_cmd_config)

    topics = sub.add_parser("topics", help="the topic table on the broker")
    tsub = topics.add_subparsers(dest="topics_command", required=True)
    tsub.add_parser("ensure", help="create missing topics; report drift").set_defaults(
        func=_cmd_topics_ensure)
    tsub.add_parser("list", help="partitions, retention, end offsets").set_defaults(
        func=_cmd_topics_list)

    p = sub.add_parser("broker", help="run the local tansu broker in the foreground")
    p.add_argument("--port", type=int, default=0)
    p.set_defaults(func=_cmd_broker)

    _register_more(sub)
    return parser


def _register_more(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Commands the other packages add through the ``deeplens.commands`` entry point.

    The shared core imports none of the pipeline packages; they plug in here.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="deeplens.commands"), key=lambda e: e.name):
        ep.load()(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per HTTP request would break the progress output of client commands, and
    # Alembic's INFO lines (every process that opens the catalog runs the migrations) are
    # noise in `deeplens status` and `up`.
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not settings.model.allow_download:
        # Before anything imports huggingface_hub (it reads this once, at import): no
        # network look-ups, which would retry for a minute on a machine without internet.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    func: Command = args.func
    return func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
