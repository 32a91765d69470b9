"""CPU milliseconds per image, stage by stage, from the upload edge to indexed.

    python -m benchmarks.stage_cost [--quick] [--repeat 3]

Every stage runs its real handler over real events with its real dependencies
(local broker, catalog database, local storage, LanceDB), on distinct photos of
four kinds: 0.3, 2 and 12 MP JPEGs and a 2 MP PNG.

- **edge**: the upload API in its own process (uvicorn, the broker ack awaited),
  its CPU time read from /proc before and after the uploads;
- **validation, feeder, dedup, indexer, projection, usage**: each handler called on
  batches of the previous stage's events, with the JSON decode of its input and the
  encode of its output (what its consumer loop does per event; librdkafka's own cost
  is not here: see ``ceiling_bench``), CPU time of this process (all threads);
- **feeder**: with the Embedder called in-process, the request and answer pickled
  and unpickled as Ray's hop would; the Embedder's own CPU is split out as
- **Embedder decode** (DALI CPU decode, hashes, thumbnail) and **Embedder model**
  (the tiny model here: on a GPU replica both run on the device).

"Outside the model" sums every stage but the Embedder's two. Steady state: every
handler (and the DALI pipeline) is built once, as a long-running actor builds it, and
warmed on two images of each kind before anything is measured; the API process's start
is not measured. ``--quick`` runs a quarter of the images and comes out higher per image
(per-batch costs over fewer images): compare it only with other ``--quick`` runs.
Prints a table and writes a results file (benchmarks/common.py: ``--out``, ``--record``).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import unlimited_ingestion

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "bench-key-0123456789ab"
KINDS = {  # name: (width, height, format, images)
    "jpeg 0.3 MP": (640, 480, "JPEG", 48),
    "jpeg 2 MP": (1632, 1224, "JPEG", 24),
    "jpeg 12 MP": (4000, 3000, "JPEG", 8),
    "png 2 MP": (1632, 1224, "PNG", 12),
}
STAGES = ["edge", "validation", "feeder", "embedder decode", "embedder model", "dedup",
          "indexer", "projection", "usage"]
OUTSIDE = [s for s in STAGES if not s.startswith("embedder")]


def photo_bytes(width: int, height: int, fmt: str, seed: int) -> bytes:
    """A distinct photo-like scene (the smoother test pictures look so alike that the
    near tier would link many of them, and the run would measure link writing)."""
    from PIL import Image

    from cluster.samples import scene

    img = scene(seed, 1024).resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve_api(settings: Any, ready: Any) -> None:
    from ingestion.api import create_app
    from tests.http_server import serve_app

    with serve_app(create_app(settings)) as url:
        ready.put(url)
        while True:
            time.sleep(3600)


class CpuPhases:
    """The Embedder's Phases with process CPU time instead of wall time."""

    def __init__(self) -> None:
        from serve_apps.embed_batch import Phases

        self.inner = Phases()
        self.cpu: dict[str, float] = defaultdict(float)

    @contextmanager
    def _timed(self, name: str, context: Any) -> Any:
        with context:
            start = time.process_time()
            try:
                yield
            finally:
                self.cpu[name] += time.process_time() - start

    def decoding(self) -> Any:
        return self._timed("embedder decode", self.inner.decoding())

    def encoding(self) -> Any:
        return self._timed("embedder model", self.inner.encoding())


class LocalEmbedder:
    """Stands in for the Serve handle: ``embed_images.remote(items).result()`` runs the
    Embedder's own code here, after a pickle round trip of what Ray would carry."""

    def __init__(self, clip: Any, decoder: Any, phases: CpuPhases) -> None:
        self.clip, self.decoder, self.phases = clip, decoder, phases
        self.embed_images = self

    def remote(self, items: list[bytes]) -> Any:
        from serve_apps.embed_batch import embed_isolated

        items = pickle.loads(pickle.dumps(items, protocol=5))
        results = embed_isolated(self.clip, self.decoder, items, [True] * len(items),
                                 self.phases)  # type: ignore[arg-type]
        answer = pickle.loads(pickle.dumps(results, protocol=5))
        return type("Answer", (), {"result": lambda _self, timeout_s=None: answer})()


def run_stage(handler: Any, envelopes: list[Any], batch: int) -> tuple[float, list[Any]]:
    """CPU seconds of decode-input + handler + encode-output over every batch, and outputs."""
    from deeplens.events import EVENT_TYPES, decode_event
    from deeplens.stage_sdk import Envelope

    raws = [(e.topic, e.event.to_json()) for e in envelopes]
    outputs: list[Any] = []
    start = time.process_time()
    for i in range(0, len(raws), batch):
        chunk = [Envelope(topic=t, partition=0, offset=i + n, key=None, timestamp=None,
                          event=decode_event(EVENT_TYPES[t], raw))
                 for n, (t, raw) in enumerate(raws[i : i + batch])]
        out = handler(chunk)
        for o in out:
            if hasattr(o, "event"):
                o.event.to_json()
        outputs.extend(out)
    return time.process_time() - start, outputs


def as_envelopes(outbounds: list[Any], topic: str | None = None) -> list[Any]:
    from deeplens.stage_sdk import Envelope

    return [Envelope(topic=o.topic, partition=0, offset=i, key=o.key, timestamp=None,
                     event=o.event)
            for i, o in enumerate(outbounds) if hasattr(o, "topic")
            and (topic is None or o.topic == topic)]


class Handlers:
    """Every stage's handler, built once per process as a long-running actor builds it
    (so their set-up, the DALI pipeline's included, is no per-image cost)."""

    def __init__(self, settings: Any, clip: Any, batch: int) -> None:
        from actors import dedup, embedding_feeder, indexer, validator
        from ingestion import projection, usage
        from serve_apps.decode import make_decoder

        self.phases = CpuPhases()
        decoder = make_decoder("dali", clip=clip, max_batch_size=batch)
        self.validation = validator.build_handler(settings)
        self.feeder = embedding_feeder.build_handler(settings,
                                                     LocalEmbedder(clip, decoder, self.phases))
        self.dedup = dedup.build_handler(settings)
        self.indexer = indexer.build_handler(settings)
        self.projection = projection.build_handler(settings)
        self.usage = usage.build_handler(settings)


def measure_kind(settings: Any, url: str, api_pid: int, payloads: list[bytes],
                 handlers: Handlers, batch: int) -> dict[str, float]:
    import httpx

    from deeplens.stage_sdk import Envelope
    from tests.kafka_helpers import read_topic

    n = len(payloads)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    client.get("/healthz")
    before = _proc_cpu_s(api_pid)
    for i, data in enumerate(payloads):
        answer = client.post("/v1/images", files={"file": (f"p{i}", data)})
        assert answer.status_code == 202, answer.text
    cost = {"edge": _proc_cpu_s(api_pid) - before}
    uploaded = read_topic(settings.kafka, "images.uploaded", expect=len(_seen) + n, timeout_s=60)
    uploaded = [e for e in uploaded if e.image_id not in _seen]
    _seen.update(e.image_id for e in uploaded)
    assert len(uploaded) == n, f"{len(uploaded)} of {n} uploads read back"
    envs = [Envelope(topic="images.uploaded", partition=0, offset=i, key=None, timestamp=None,
                     event=e) for i, e in enumerate(uploaded)]

    cost["validation"], out = run_stage(handlers.validation, envs, batch)
    validated = as_envelopes(out, "images.validated")
    assert len(validated) == n, [o.event for o in out if o.topic == "images.failed"]
    usage_events = as_envelopes(out, "tenant.usage")

    handlers.phases.cpu.clear()
    total, out = run_stage(handlers.feeder, validated, batch)
    cost.update(handlers.phases.cpu)
    cost["feeder"] = total - sum(handlers.phases.cpu.values())
    processed = as_envelopes(out, "images.processed")
    assert len(processed) == n
    usage_events += as_envelopes(out, "tenant.usage")

    cost["dedup"], found = run_stage(handlers.dedup, processed, batch)
    cost["indexer"], indexed = run_stage(handlers.indexer, processed, batch)
    projected = validated + processed + as_envelopes(indexed) + as_envelopes(found)
    cost["projection"], _ = run_stage(handlers.projection, projected, batch)
    cost["usage"], _ = run_stage(handlers.usage, usage_events, batch)
    return {stage: 1000 * seconds / n for stage, seconds in cost.items()}


_seen: set[str] = set()


def main() -> None:
    from benchmarks.common import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a quarter of the images (per-image figures come out higher: "
                             "fewer images to spread the per-batch costs over)")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from benchmarks.common import machine, quietly_closed, record
    from benchmarks.spread import print_spread, repeated
    from deeplens.broker import local_broker
    from deeplens.kafka import admin_client
    from deeplens.settings import KafkaSettings, ModelSettings, Settings
    from deeplens.topics import TopicNames, ensure_topics
    from serve_apps.model import load_clip

    clip = load_clip(ModelSettings(name="deeplens-tiny", pretrained="random"), device="cpu")
    from deeplens.hash_index import near_distances
    from deeplens.image_hashes import WINDOWS

    near_distances(np.zeros((1, len(WINDOWS)), np.uint64), np.zeros(len(WINDOWS), np.uint64))
    # ^ compiles (or loads) the look-up kernel once, as a long-running dedup actor has
    with quietly_closed(local_broker(), "stage_cost") as broker, \
            tempfile.TemporaryDirectory() as tmp:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, one_record_per_batch=True)
        ensure_topics(admin_client(kafka), TopicNames(""))
        settings = Settings(data_dir=Path(tmp), api_keys=f"bench:{KEY}", kafka=kafka,
                            model=ModelSettings(name="deeplens-tiny", pretrained="random"),
                            ingestion=unlimited_ingestion())
        ready: Any = multiprocessing.get_context("fork").Queue()
        api = multiprocessing.get_context("fork").Process(target=_serve_api,
                                                          args=(settings, ready), daemon=True)
        api.start()
        url = ready.get(timeout=60)
        handlers = Handlers(settings, clip, args.batch)
        seed = 0
        try:
            # Warm-up, not measured: two images of every kind through every stage.
            for width, height, fmt, _count in KINDS.values():
                measure_kind(settings, url, api.pid,
                             [photo_bytes(width, height, fmt, 10**6 + seed + i)
                              for i in range(2)], handlers, args.batch)
                seed += 2

            def one_round(r: int) -> dict:
                nonlocal seed
                table: dict[str, dict[str, float]] = {}
                for kind, (width, height, fmt, count) in KINDS.items():
                    count = max(4, count // 4) if args.quick else count
                    payloads = [photo_bytes(width, height, fmt, seed + i) for i in range(count)]
                    seed += count
                    row = measure_kind(settings, url, api.pid, payloads, handlers, args.batch)
                    row["outside the model"] = sum(row[s] for s in OUTSIDE)
                    row["bytes"] = sum(map(len, payloads)) / count / 1000
                    table[kind] = {s: round(v, 3) for s, v in row.items()}
                    print(kind, {k: round(v, 2) for k, v in row.items()}, flush=True)
                return {"cpu_ms_per_image": table}

            figures = repeated(args.repeat, one_round)
        finally:
            api.terminate()
    print_spread(figures)
    table = figures["cpu_ms_per_image"]
    print(f"\nmachine: {machine()}\nCPU ms per image (tiny model; Embedder decode = DALI CPU); "
          "every handler built once and warmed on two images of each kind first")
    if args.quick:
        print("--quick: a quarter of the images; per-image figures come out higher than a "
              "full run's (per-batch costs over fewer images): compare only with --quick runs")
    print("| stage | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for stage in [*STAGES, "outside the model"]:
        print(f"| {stage} | " + " | ".join(f"{table[k][stage]:.2f}" for k in table) + " |")
    print("| KB per image | " + " | ".join(f"{table[k]['bytes']:.0f}" for k in table) + " |")
    path = record("stage_cost", {"batch": args.batch, "quick": args.quick, **figures})
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
