"""How ``ceiling_bench --mode`` sends a round's images into the stack: one upload per
request, ``POST /v1/images/batch``, or an import of a folder (``deeplens import``'s
code, in the bench process, so its CPU is counted as the importer's)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

Send = Callable[[list[bytes], int, int], list[str]]


def sender(mode: str, stack: Any, client: Any, upload: Callable[[bytes], str],
           import_root: Path) -> Send:
    if mode == "batch":
        return lambda payloads, _round, clients: _batches(client, payloads, clients)
    if mode == "import":
        return _Import(stack, import_root)
    return lambda payloads, _round, clients: _singles(upload, payloads, clients)


def _singles(upload: Callable[[bytes], str], payloads: list[bytes], clients: int) -> list[str]:
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(upload, payloads))


def _batches(client: Any, payloads: list[bytes], clients: int) -> list[str]:
    """Batches of up to 100 files, enough of them for every client thread."""
    per = max(1, min(100, -(-len(payloads) // clients)))
    chunks = [payloads[i:i + per] for i in range(0, len(payloads), per)]

    def post(chunk: list[bytes]) -> list[str]:
        answer = client.post("/v1/images/batch", files=[
            ("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(chunk)])
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert all(r["status_code"] == 202 for r in results), results
        return [r["image_id"] for r in results]

    with ThreadPoolExecutor(clients) as pool:
        return [image_id for ids in pool.map(post, chunks) for image_id in ids]


class _Import:
    """Sends a round by importing a folder of its images. ``prepare`` writes the folder
    and lists it beforehand, so the measured call is the import alone."""

    def __init__(self, stack: Any, root: Path) -> None:
        from deeplens.kafka import EventProducer
        from deeplens.storage import make_storage
        from ingestion.bulk_import import Importer
        from ingestion.catalog import Catalog
        from ingestion.import_jobs import JobStore

        self.settings, self.root = stack.settings, root
        catalog = Catalog(self.settings.effective_catalog_url)
        producer = EventProducer(self.settings.kafka, prefix=self.settings.kafka.topic_prefix)
        self.importer = Importer(self.settings, catalog, make_storage(self.settings), producer,
                                 JobStore(catalog.engine))
        self.prepared: dict[int, tuple[Any, list[str]]] = {}

    def prepare(self, payloads: list[bytes], round_no: int) -> None:
        from deeplens.sources import parse_source
        from ingestion.bulk_import import image_id_of
        from ingestion.import_listing import list_source

        folder = self.root / f"round{round_no + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(payloads):
            (folder / f"{i:06d}.jpg").write_bytes(data)
        source = parse_source(str(folder), self.settings.imports.allowed_roots)
        ids = [image_id_of("bench", item) for item in list_source(source, self.settings)]
        self.prepared[round_no] = (source, ids)

    def __call__(self, payloads: list[bytes], round_no: int, _clients: int) -> list[str]:
        if round_no not in self.prepared:
            self.prepare(payloads, round_no)
        source, ids = self.prepared.pop(round_no)
        job = self.importer.jobs.start("bench", source.uri(), False)
        assert job is not None
        done = self.importer.run(job)
        assert done.state == "done" and done.queued == len(payloads), done
        return ids
