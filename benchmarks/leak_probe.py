"""What grows per image in the stages and the Gateway app, by tracemalloc, in one process.

    python -m benchmarks.leak_probe [--rounds 6] [--images 300] [--warmup-rounds 2]

Runs, in this process and without Ray: the upload/search app (``create_app`` with the
search routes, served by uvicorn in a thread), and every consumer stage of the stack
(``cluster.stages.STAGES``) as a :class:`ConsumerLoop` over a local broker. The Embedder
is a stand-in that answers at once (a 64-d random vector, hashes, a small thumbnail),
so what is measured is the stages' and the app's own memory. Each round uploads
``--images`` JPEGs, waits until all are indexed, then searches and reads each. After
warm-up, tracemalloc snapshots are compared (by line and by traceback); RSS is read too
(native memory: librdkafka, LanceDB, SQLite). Prints per-1,000-image growth.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import unlimited_ingestion

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KEY = "probe-key-0123456789ab"
MODEL_ID = "deeplens-tiny/random-init-seed0"


class _Call:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout_s: float = 0) -> Any:
        return self.value


class FakeEmbedder:
    """``handle.embed_images.remote(list).result()`` answered in-process."""

    def __init__(self) -> None:
        self.embed_images = self
        self.rng = np.random.default_rng(0)

    def remote(self, images: list[bytes]) -> _Call:
        from serve_apps.embed_batch import Embedding

        out = []
        for data in images:
            v = self.rng.standard_normal(64).astype(np.float32)
            out.append(Embedding(vector=v / np.linalg.norm(v), model_id=MODEL_ID,
                                 phash=int(self.rng.integers(0, 2**63)), windows=None,
                                 fingerprint=f"jc1:{hash(data) & 0xFFFFFFFF:08x}",
                                 thumbnail=data[:2000]))
        return _Call(out)


class FakeEncoder:
    def __init__(self) -> None:
        self.rng = np.random.default_rng(1)

    async def model_id(self) -> str:
        return MODEL_ID

    async def text(self, text: str) -> np.ndarray:
        return await self.image(b"")

    async def image(self, data: bytes) -> np.ndarray:
        v = self.rng.standard_normal(64).astype(np.float32)
        return v / np.linalg.norm(v)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def malloc_mb() -> dict[str, float]:
    """glibc's heap: bytes in use, and bytes free but kept in its arenas."""
    import ctypes

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    info = libc.mallinfo2()
    return {"malloc_used_mb": round((info.uordblks + info.hblkhd) / 2**20, 1),
            "malloc_free_mb": round(info.fordblks / 2**20, 1)}


def sqlite_mb() -> float:
    """Memory SQLite holds in this process (its page caches above all)."""
    import ctypes
    import sqlite3  # noqa: F401 - loads the library this process uses

    lib = ctypes.CDLL("libsqlite3.so.0")
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lib.sqlite3_memory_used() / 2**20


def sqlite_cache(kib: int) -> None:
    """Every SQLite connection opened from now on with a page cache of ``kib`` KiB."""
    import sqlalchemy as sa
    from sqlalchemy import event

    @event.listens_for(sa.engine.Engine, "connect")
    def _small(dbapi_conn: Any, _record: Any) -> None:
        if type(dbapi_conn).__module__.startswith("sqlite3"):
            dbapi_conn.execute(f"PRAGMA cache_size=-{kib}")


def sa_caches() -> dict[str, int]:
    """Entries in every SQLAlchemy engine's compiled-statement cache."""
    import sqlalchemy as sa

    found: dict[str, int] = {}
    for i, obj in enumerate(o for o in gc.get_objects() if isinstance(o, sa.engine.Engine)):
        cache = getattr(obj, "_compiled_cache", None)
        found[f"engine{i}"] = len(cache) if cache is not None else -1
        found[f"engine{i}_conns"] = obj.pool.checkedin() + obj.pool.checkedout()
    return found


def start_stages(settings: Any) -> list[Any]:
    from actors import embedding_feeder
    from cluster.stages import STAGES
    from deeplens.consumer_loop import ConsumerLoop
    from deeplens.stage_actor import load_factory

    loops = []
    for stage in STAGES:
        spec = stage.spec(settings)
        if stage.name == "embedding":
            handler = embedding_feeder.build_handler(settings, embedder=FakeEmbedder())
        else:
            handler = load_factory(spec.handler_factory)(settings)
        loops.append(ConsumerLoop(settings=settings.kafka, stage=spec.stage, topics=spec.topics,
                                  handler=handler, max_in_flight=spec.max_in_flight).start())
    return loops


def report(label: str, old: Any, new: Any, per: float, key: str, top: int) -> None:
    print(f"--- {label} (by {key}), KB per 1,000 images ---")
    for stat in new.compare_to(old, key)[:top]:
        if key == "traceback":
            frames = [f"{f.filename.split('site-packages/')[-1].split('/main/')[-1]}:{f.lineno}"
                      for f in stat.traceback[-6:]]
            where = " <- ".join(reversed(frames))
        else:
            f = stat.traceback[0]
            where = f"{f.filename.split('site-packages/')[-1].split('/main/')[-1]}:{f.lineno}"
        print(f"{stat.size_diff / 1024 / per:9.1f} KB  {stat.count_diff / per:8.0f} blocks  "
              f"{where}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--warmup-rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sqlite-cache-kib", type=int, default=0,
                        help="set every SQLite connection's page cache (0: SQLite's 2 MB)")
    args = parser.parse_args()

    import httpx
    from pydantic import SecretStr

    from cluster.samples import scene
    from deeplens.broker import start_local_broker
    from deeplens.kafka import admin_client
    from deeplens.settings import KafkaSettings, ModelSettings, Settings
    from deeplens.topics import TopicNames, ensure_topics
    from deeplens.vectors.factory import make_search_store
    from ingestion.api import create_app
    from serve_apps.search import mount_search
    from tests import images
    from tests.http_server import serve_app

    def jpeg(seed: int) -> bytes:
        return images.encode(scene(seed, 320), "JPEG", quality=85)

    if args.sqlite_cache_kib:
        sqlite_cache(args.sqlite_cache_kib)
    tracemalloc.start(args.frames)
    broker = start_local_broker()
    with tempfile.TemporaryDirectory() as tmp:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="probe.")
        assert ensure_topics(admin_client(kafka), TopicNames("probe.")).ok
        settings = Settings(
            data_dir=Path(tmp), api_keys=SecretStr(f"probe:{KEY}"), kafka=kafka,
            model=ModelSettings(name="deeplens-tiny", pretrained="random"),
            ingestion=unlimited_ingestion())
        app = create_app(settings)
        mount_search(app, make_search_store(settings), FakeEncoder(),
                     producer=app.state.services.producer)
        loops = start_stages(settings)
        snaps: dict[int, Any] = {}
        rows = []
        with serve_app(app) as url, ThreadPoolExecutor(args.clients) as pool:
            client = httpx.Client(base_url=url, timeout=120,
                                  headers={"Authorization": f"Bearer {KEY}"})

            def upload(seed: int) -> str:
                answer = client.post("/v1/images", files={"file": ("p.jpg", jpeg(seed))})
                assert answer.status_code == 202, answer.text
                return str(answer.json()["image_id"])

            def search(seed: int) -> None:
                answer = client.post("/v1/search/image", data={"k": "10"},
                                     files={"file": ("q.jpg", jpeg(seed))})
                assert answer.status_code == 200, answer.text

            def finished(ids: list[str]) -> bool:
                statuses: dict[str, str] = {}
                for start in range(0, len(ids), 500):
                    statuses.update(client.post("/v1/images/statuses", json={
                        "image_ids": ids[start:start + 500]}).json()["statuses"])
                return all(s in ("indexed", "failed") for s in statuses.values())

            for n in range(args.rounds):
                began = time.perf_counter()
                seeds = range(100_000 + n * args.images, 100_000 + (n + 1) * args.images)
                ids = list(pool.map(upload, seeds))
                while not finished(ids):
                    time.sleep(0.5)
                list(pool.map(search, seeds))
                list(pool.map(lambda i: client.get(f"/v1/images/{i}"), ids))
                time.sleep(1.0)
                gc.collect()
                traced, _ = tracemalloc.get_traced_memory()
                row = {"round": n + 1, "stored": (n + 1) * args.images,
                       "s": round(time.perf_counter() - began, 1),
                       "traced_mb": round(traced / 2**20, 2), "rss_mb": round(rss_mb(), 1),
                       "sqlite_mb": round(sqlite_mb(), 2), **malloc_mb(),
                       "sa_cache": sa_caches()}
                rows.append(row)
                print(row, flush=True)
                # Only two snapshots: each is a C-side copy of every trace (~100+ MB of
                # RSS), so one per round would be most of the RSS growth measured.
                if n + 1 in (args.warmup_rounds, args.rounds):
                    snaps[n + 1] = tracemalloc.take_snapshot().filter_traces(
                        [tracemalloc.Filter(False, tracemalloc.__file__)])
            client.close()
        for loop in loops:
            loop.stop(10)
    broker.stop()
    first, last = args.warmup_rounds, args.rounds
    per = (last - first) * args.images / 1000
    for a, b in zip(rows[first - 1:], rows[first:], strict=False):
        kb = {k: (b[k] - a[k]) * 1024 / args.images for k in ("traced_mb", "rss_mb", "sqlite_mb")}
        print(f"round {b['round']}: KB per image: " + ", ".join(
            f"{k.removesuffix('_mb')} {v:+.2f}" for k, v in kb.items()))
    report("lines", snaps[first], snaps[last], per, "lineno", args.top)
    report("tracebacks", snaps[first], snaps[last], per, "traceback", args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
