"""Pipeline metrics for Prometheus, gathered when ``/metrics`` is scraped.

A collector, registered in the gateway process, that reads the truth where it
lives instead of mirroring it: end offsets and committed offsets from the broker
(throughput per topic, lag per group and partition), counters from every stage
actor and Embedder replica through Ray, and the upload-to-indexed latency from
the catalog. Every gateway replica answers the same numbers, so it does not matter
which replica the scrape reaches.

Broker disk usage is not exported here: a Kafka broker's disk is measured on its
host (node_exporter), and the local tansu broker keeps no disk at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from cluster.lag import offsets_and_lag
from deeplens.events import utcnow
from deeplens.settings import Settings
from deeplens.topics import TOPICS, TopicNames

log = logging.getLogger(__name__)

LATENCY_CACHE_S = 15.0
LATENCY_BUCKETS = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]

# Every metric name this module exports (the alert rules are checked against it).
EXPORTED = {
    "deeplens_topic_messages_total", "deeplens_consumer_lag", "deeplens_stage_consumed_total",
    "deeplens_stage_handled_total", "deeplens_stage_failed_total",
    "deeplens_stage_retried_total", "deeplens_stage_dead_lettered_total",
    "deeplens_stage_batch_retries_total", "deeplens_stage_processing_seconds_total",
    "deeplens_stage_in_flight", "deeplens_stage_actors", "deeplens_embedder_batches_total",
    "deeplens_embedder_items_total", "deeplens_embedder_busy_seconds_total",
    "deeplens_gpu_utilization_ratio", "deeplens_upload_to_indexed_seconds",
    "deeplens_embedder_phase_busy_seconds_total", "deeplens_embedder_busy_ratio",
    "deeplens_stage_stats_age_seconds", "deeplens_embedder_replicas",
    "deeplens_oldest_unfinished_image_seconds", "deeplens_reconcile_republished_total",
    "deeplens_reconcile_deferred_total", "deeplens_scaling_target", "deeplens_scaling_wanted",
    "deeplens_scaling_bound", "deeplens_scaling_pinned", "deeplens_scaling_rate",
    "deeplens_scaling_decision", "deeplens_scaling_actors", "deeplens_scaling_steps_total",
    "deeplens_embedder_queued_images", "deeplens_embedder_cold_start_seconds",
}

_STAGE_COUNTERS = {
    "consumed": ("deeplens_stage_consumed_total", "Messages consumed"),
    "handled": ("deeplens_stage_handled_total", "Events handled"),
    "failed_out": ("deeplens_stage_failed_total", "Events sent to images.failed"),
    "retried": ("deeplens_stage_retried_total", "Events sent to a retry topic"),
    "dead_lettered": ("deeplens_stage_dead_lettered_total", "Events dead-lettered"),
    "batch_retries": ("deeplens_stage_batch_retries_total", "Failed batch attempts"),
    "busy_s": ("deeplens_stage_processing_seconds_total", "Seconds spent in the handler"),
}


class PipelineCollector:
    def __init__(self, settings: Settings, catalog: Any, stage_names: dict[str, int]) -> None:
        self.settings = settings
        self.catalog = catalog
        self.stage_names = stage_names  # stage -> actor count
        self.names = TopicNames(settings.kafka.topic_prefix)
        self._admin: Any = None
        self._consumer: Any = None
        self._latency_cache: tuple[float, Any] | None = None
        self._unfinished_cache: tuple[float, float] | None = None
        from cluster.pipeline_health import PipelineWatch

        self.watch = PipelineWatch(settings, stage_names)

    def describe(self) -> list[Any]:
        return []  # collected on scrape only; nothing to pre-register

    def collect(self) -> Iterator[Any]:
        for part in (self._kafka, self._stages, self._embedder, self._latency,
                     self._unfinished, self._sweeper, self._scaling):
            try:
                yield from part()
            except Exception as exc:  # noqa: BLE001 - one source down must not hide the rest
                log.warning("metrics: %s failed: %s", part.__name__, exc)

    # -- broker ---------------------------------------------------------------------
    def _kafka(self) -> Iterator[Any]:
        from deeplens.kafka import admin_client, make_consumer

        if self._admin is None:
            self._admin = admin_client(self.settings.kafka)
            self._consumer = make_consumer(self.settings.kafka, "deeplens-metrics-reader")
        ends, lags = offsets_and_lag(self._admin, self._consumer, self.names,
                                     set(self.stage_names))
        messages = CounterMetricFamily("deeplens_topic_messages",
                                       "Messages ever written to the topic (rate = msgs/s)",
                                       labels=["topic"])
        for logical in TOPICS:
            topic = self.names.physical(logical)
            if any(t == topic for t, _ in ends):
                messages.add_metric([logical], sum(max(h, 0) for (t, _), h in ends.items()
                                                   if t == topic))
        yield messages
        lag = GaugeMetricFamily("deeplens_consumer_lag", "Messages not yet committed by the group",
                                labels=["group", "topic", "partition"])
        for (stage, logical, partition), behind in sorted(lags.items()):
            lag.add_metric([stage, logical, str(partition)], behind)
        yield lag

    # -- stage actors ---------------------------------------------------------------
    def _stages(self) -> Iterator[Any]:
        # Each actor on its own deadline (cluster.pipeline_health): a stage whose node is
        # gone shows 0 live actors and its last known counters with their age; the other
        # stages are not touched by it. The counters live in the actors, so they start
        # again when one restarts: ``<name>_created`` moves to that restart.
        families = {key: CounterMetricFamily(name.removesuffix("_total"), text, labels=["stage"])
                    for key, (name, text) in _STAGE_COUNTERS.items()}
        in_flight = GaugeMetricFamily("deeplens_stage_in_flight", "Batches in flight",
                                      labels=["stage"])
        actors = GaugeMetricFamily("deeplens_stage_actors", "Live actors of the stage",
                                   labels=["stage"])
        age = GaugeMetricFamily("deeplens_stage_stats_age_seconds", "Age of the stage's "
                                "counters (they are the last answer while no actor answers)",
                                labels=["stage"])
        for stage, state in sorted(self.watch.poll_stages().items()):
            for key, family in families.items():  # _created: when these counters restarted
                family.add_metric([stage], sum(float(s.get(key, 0)) for s in state.stats),
                                  created=state.reset_at)
            in_flight.add_metric([stage], sum(s.get("in_flight", 0) for s in state.stats))
            actors.add_metric([stage], state.live)
            if state.answered_at is not None:
                age.add_metric([stage], time.monotonic() - state.answered_at)
        yield from families.values()
        yield from (in_flight, actors, age)
        replicas = self.watch.poll_embedder()
        if replicas is not None:
            running = GaugeMetricFamily("deeplens_embedder_replicas",
                                        "Running Embedder replicas")
            running.add_metric([], replicas)
            yield running

    # -- stuck-image sweep ------------------------------------------------------------
    def _sweeper(self) -> Iterator[Any]:
        import ray

        from cluster.sweeper import sweeper_name

        try:
            stats = ray.get(ray.get_actor(sweeper_name(self.settings)).stats.remote(), timeout=5)
        except ValueError:
            return  # not started (a stack without Ray)
        republished = CounterMetricFamily(
            "deeplens_reconcile_republished", "Images the periodic sweep re-published because "
            "they had not moved for DEEPLENS_OPS__STUCK_AFTER_S")
        republished.add_metric([], stats["republished"])
        yield republished
        deferred = CounterMetricFamily(
            "deeplens_reconcile_deferred", "Sweeps that left a status alone: its stage was behind")
        deferred.add_metric([], stats["deferred"])
        yield deferred

    # -- scaling controller -----------------------------------------------------------
    def _scaling(self) -> Iterator[Any]:
        import ray

        from cluster.scaling_ops import find_controller

        try:
            stats = ray.get(find_controller(self.settings).stats.remote(), timeout=5)
        except ValueError:
            return  # not started (scaling off, or a stack without Ray)
        yield from scaling_families(stats)

    # -- Embedder -------------------------------------------------------------------
    def _embedder(self) -> Iterator[Any]:
        from deeplens.serve_names import embedder_handle

        handle = embedder_handle()
        stats = handle.stats.remote().result(timeout_s=5)  # one replica answers per scrape
        batches = CounterMetricFamily("deeplens_embedder_batches", "Batches formed by @serve.batch",
                                      labels=["model"])
        items = CounterMetricFamily("deeplens_embedder_items", "Images embedded (items / batches "
                                    "= mean formed batch)", labels=["model"])
        busy = CounterMetricFamily("deeplens_embedder_busy_seconds", "Seconds decoding + encoding",
                                   labels=["model"])
        model = stats["model_id"]
        phase = CounterMetricFamily("deeplens_embedder_phase_busy_seconds",
                                    "Seconds in each phase of a batch (decode, model)",
                                    labels=["model", "phase"])
        fraction = GaugeMetricFamily("deeplens_embedder_busy_ratio",
                                     "Model-busy seconds / wall seconds over the last 30 s",
                                     labels=["model"])
        batches.add_metric([model], stats["batches"])
        items.add_metric([model], stats["items"])
        busy.add_metric([model], stats["busy_s"])
        phase.add_metric([model, "decode"], stats.get("decode_busy_s", 0.0))
        phase.add_metric([model, "model"], stats.get("model_busy_s", 0.0))
        fraction.add_metric([model], stats.get("busy_fraction", 0.0))
        decoder = GaugeMetricFamily("deeplens_embedder_decoder", "The replica's decoder "
                                    "(serve_apps.decoder_choice), always 1", labels=["model", "decoder"])
        decoder.add_metric([model, str(stats.get("decoder", "unknown"))], 1.0)
        yield from (batches, items, busy, phase, fraction, decoder)
        if stats.get("gpu_utilization") is not None:
            gpu = GaugeMetricFamily("deeplens_gpu_utilization_ratio", "GPU busy share (NVML)",
                                    labels=["model"])
            gpu.add_metric([model], stats["gpu_utilization"])
            yield gpu

    # -- catalog --------------------------------------------------------------------
    def _latency(self) -> Iterator[Any]:
        # A whole-table aggregate: computed at most once per LATENCY_CACHE_S, however
        # often (or by however many scrapers) /metrics is read.
        now = time.monotonic()
        if self._latency_cache is None or now - self._latency_cache[0] > LATENCY_CACHE_S:
            self._latency_cache = (now, self.catalog.latency_buckets(LATENCY_BUCKETS))
        counts, total, seconds = self._latency_cache[1]
        buckets = [(str(b), c) for b, c in zip(LATENCY_BUCKETS, counts, strict=True)]
        buckets.append(("+Inf", total))
        family = HistogramMetricFamily("deeplens_upload_to_indexed_seconds",
                                       "Time from upload to indexed", labels=[])
        family.add_metric([], buckets=buckets, sum_value=seconds)
        yield family

    def _unfinished(self) -> Iterator[Any]:
        # Cached like the latency aggregate; an index on (status, uploaded_at) keeps it
        # a look-up however many images are stored.
        now = time.monotonic()
        if self._unfinished_cache is None or now - self._unfinished_cache[0] > LATENCY_CACHE_S:
            oldest = self.catalog.oldest_unfinished()
            age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
            self._unfinished_cache = (now, age)
        family = GaugeMetricFamily("deeplens_oldest_unfinished_image_seconds",
                                   "Age of the oldest image not yet indexed or failed")
        family.add_metric([], self._unfinished_cache[1])
        yield family


def scaling_families(stats: dict[str, Any]) -> list[Any]:
    """The controller's report as metrics: per stage (and ``embedder``) what runs, what is
    wanted, between which bounds, the last decision's action and cause."""
    def gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=labels)

    target = gauge("deeplens_scaling_target", "Actors (replicas) the controller runs", ["name"])
    wanted = gauge("deeplens_scaling_wanted", "Actors (replicas) the signal asks for", ["name"])
    bound = gauge("deeplens_scaling_bound", "Automatic range", ["name", "bound"])
    pinned = gauge("deeplens_scaling_pinned", "1 while `deeplens scale` holds it", ["name"])
    rate = gauge("deeplens_scaling_rate", "Messages the stage committed per second", ["name"])
    decision = gauge("deeplens_scaling_decision", "The last decision (value: seconds a "
                     "wanted change still waits)", ["name", "action", "cause"])
    actors = gauge("deeplens_scaling_actors", "Live actors per node", ["name", "node"])
    steps = CounterMetricFamily("deeplens_scaling_steps", "Scale steps taken", labels=["name"])
    for name, row in sorted(stats.get("scalers", {}).items()):
        if row.get("target") is not None:
            target.add_metric([name], row["target"])
            wanted.add_metric([name], row["wanted"])
        bound.add_metric([name, "min"], row["min"])
        bound.add_metric([name, "max"], row["max"])
        pinned.add_metric([name], 0 if row.get("pinned") is None else 1)
        decision.add_metric([name, row.get("action", "none"), row.get("cause", "")],
                            row.get("wait_s", 0.0))
        if "rate" in row:
            rate.add_metric([name], row["rate"])
        for node, count in (row.get("nodes") or {}).items():
            actors.add_metric([name, node], count)
        steps.add_metric([name], stats.get("step_counts", {}).get(name, 0))
    out: list[Any] = [target, wanted, bound, pinned, rate, decision, actors, steps]
    embedder = stats.get("scalers", {}).get("embedder", {})
    if "queued" in embedder:
        queued = gauge("deeplens_embedder_queued_images", "Images waiting for the Embedder "
                       "(the embedding stage's lag)", [])
        queued.add_metric([], embedder["queued"])
        out.append(queued)
    if stats.get("cold_starts_s"):
        cold = gauge("deeplens_embedder_cold_start_seconds", "Last added replica: seconds "
                     "from asking Serve to it running", [])
        cold.add_metric([], stats["cold_starts_s"][-1])
        out.append(cold)
    return out


def register_pipeline_metrics(settings: Settings, catalog: Any,
                              stage_names: dict[str, int]) -> PipelineCollector:
    from prometheus_client import REGISTRY

    collector = PipelineCollector(settings, catalog, stage_names)
    REGISTRY.register(collector)  # type: ignore[arg-type]
    return collector
