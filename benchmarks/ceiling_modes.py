"""How ``ceiling_bench --mode`` sends a round's images into the stack: one upload per
request, ``POST /v1/images/batch``, or an import of a folder (``deeplens import``'s
code, in the bench process, so its CPU is counted as the importer's)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

Send = Callable[[list[bytes], int, int], list[str]]
CLIENTS = "bench driver (clients)"  # the bench's own process: clients, polling, the sampler


def outside_embedder(ms_by_role: dict[str, float]) -> float:
    """Host CPU ms per image outside the Embedder: every role but the Embedder's and the
    bench driver's (its clients are not DeepLens; in import mode the import, which runs
    in the driver, is counted under its own role)."""
    return round(sum(ms for role, ms in ms_by_role.items()
                     if "Embedder" not in role and role != CLIENTS), 2)


def summarize(paths: list[str]) -> dict[str, Any]:
    """The modes side by side from their ``ceiling_bench --mode`` results files."""
    import json

    modes = {}
    for path in paths:
        run = json.loads(Path(path).read_text())
        whole = run["cpu_ms_per_image_by_role"]
        modes[run["mode"]] = {
            "file": Path(path).name, "images": run["images"],
            "edge_per_s": run["uploads_per_s"],
            "end_to_end_images_per_s": run["end_to_end_images_per_s"],
            "outside_embedder_ms": outside_embedder(whole),
            "outside_embedder_net_ms": outside_embedder(run["marginal_cpu_ms_per_image_by_role"]),
            "embedder_ms": whole.get("Serve Embedder", 0.0),
            "by_role_ms": {r: ms for r, ms in whole.items() if r != CLIENTS}}
    return {"modes": modes}


def main() -> None:
    from benchmarks.common import bench_parser, record

    parser = bench_parser("python -m benchmarks.ceiling_modes RESULTS.json...: the "
                          "modes of ceiling_bench runs side by side", repeat=False)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    figures = summarize(args.files)
    print("| mode | edge /s | end to end images/s | host CPU ms/image outside the Embedder "
          "| net of fixed | Embedder ms |\n|---|---|---|---|---|---|")
    for mode, f in figures["modes"].items():
        print(f"| {mode} | {f['edge_per_s']} | {f['end_to_end_images_per_s']} | "
              f"{f['outside_embedder_ms']} | {f['outside_embedder_net_ms']} | {f['embedder_ms']} |")
    print(f"recorded in {record('ceiling_modes', figures)}")


if __name__ == "__main__":
    main()


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
