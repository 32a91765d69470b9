"""Client commands against a running DeepLens: bulk ingest, search, status."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from deeplens.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def api_url(settings: Settings, api: str | None) -> str:
    """The API URL: flag, then DEEPLENS_API_URL, then a running local stack, then the default."""
    url = api or os.environ.get("DEEPLENS_API_URL")
    runtime = settings.data_dir / "stack.json"
    if not url and runtime.exists():
        url = json.loads(runtime.read_text())["url"]
    return url or f"http://127.0.0.1:{settings.serve.port}"


def api_target(settings: Settings, api: str | None, key: str | None) -> tuple[str, str]:
    """The API URL and key: flags, then DEEPLENS_API_URL/KEY, then a running local stack."""
    url = api_url(settings, api)
    key = key or os.environ.get("DEEPLENS_API_KEY")
    demo_key = settings.data_dir / "demo-api-key"
    if not key and demo_key.exists():
        key = demo_key.read_text().strip()
    if not key:
        raise SystemExit("no API key: pass --key or set DEEPLENS_API_KEY")
    return url, key


def image_files(paths: list[str]) -> Iterator[Path]:
    """Files named on the command line as they are; folders walked for image suffixes."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            yield path
        else:
            print(f"skipped {raw}: no such file or folder", file=sys.stderr)


class IngestState:
    """sha256 -> image_id of files already accepted, kept in a JSON file to resume from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        self._lock = threading.Lock()

    def add(self, sha: str, image_id: str) -> None:
        with self._lock:
            self.done[sha] = image_id
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.done))
            tmp.replace(self.path)


def ingest(url: str, key: str, files: list[Path], state: IngestState, concurrency: int,
           wait: bool, timeout_s: float, out=sys.stdout) -> dict[str, int]:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          limits=httpx.Limits(max_connections=concurrency))
    ids: dict[str, str] = {}
    tally = {"skipped": 0, "uploaded": 0, "rejected": 0}
    lock = threading.Lock()

    def one(path: Path) -> None:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha in state.done:
            with lock:
                tally["skipped"] += 1
                ids[str(path)] = state.done[sha]
            return
        for attempt in range(5):
            answer = client.post("/v1/images", files={"file": (path.name, data)})
            if answer.status_code in (429, 503):
                time.sleep(float(answer.headers.get("Retry-After", 2 ** attempt)))
                continue
            break
        with lock:
            if answer.status_code == 202:
                image_id = answer.json()["image_id"]
                state.add(sha, image_id)
                ids[str(path)] = image_id
                tally["uploaded"] += 1
            else:
                tally["rejected"] += 1
                print(f"\n{path}: {answer.status_code} {answer.json().get('detail', '')}",
                      file=out)

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, f) for f in files]
        while any(not f.done() for f in futures):
            progress(out, len(files), tally, {})
            time.sleep(0.3)
        for f in futures:
            f.result()
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while wait and ids and time.monotonic() < deadline:
        found: dict[str, str] = {}
        id_list = list(ids.values())
        for start in range(0, len(id_list), 500):
            found |= client.post("/v1/images/statuses",
                                 json={"image_ids": id_list[start:start + 500]}
                                 ).json()["statuses"]
        statuses = {}
        for status in found.values():
            statuses[status] = statuses.get(status, 0) + 1
        progress(out, len(files), tally, statuses)
        if statuses.get("indexed", 0) + statuses.get("failed", 0) >= len(ids):
            break
        time.sleep(1)
    progress(out, len(files), tally, statuses)
    print(file=out)
    return tally | {f"status_{k}": v for k, v in statuses.items()}


def progress(out, total: int, tally: dict[str, int], statuses: dict[str, int]) -> None:
    sent = tally["uploaded"] + tally["skipped"] + tally["rejected"]
    width = 30
    filled = int(width * sent / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    line = (f"\r[{bar}] {sent}/{total} sent (new {tally['uploaded']}, already "
            f"{tally['skipped']}, rejected {tally['rejected']})")
    if statuses:
        line += "  " + " ".join(f"{k} {statuses.get(k, 0)}" for k in
                                ("uploaded", "validated", "processed", "indexed", "failed"))
    print(line, end="", file=out, flush=True)


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    url, key = api_target(settings, args.api, args.key)
    files = list(image_files(args.paths))
    if not files:
        print("nothing to ingest", file=sys.stderr)
        return 1
    state = IngestState(Path(args.state))
    result = ingest(url, key, files, state, args.concurrency, not args.no_wait, args.timeout)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in result.items()))
    return 0 if result["rejected"] == 0 else 1


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    url, key = api_target(settings, args.api, args.key)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    if args.image:
        path = Path(args.image)
        answer = client.post("/v1/search/image", files={"file": (path.name, path.read_bytes())},
                             data={"k": str(args.k)})
    elif args.text:
        answer = client.post("/v1/search", json={"text": args.text, "k": args.k})
    else:
        raise SystemExit("give a text query or --image FILE")
    if answer.status_code != 200:
        print(f"search failed: {answer.status_code} {answer.text}", file=sys.stderr)
        return 1
    body = answer.json()
    print(f"model {body['model']}")
    for rank, hit in enumerate(body["hits"], start=1):
        print(f"{rank:3}. {hit['score']:+.4f}  {hit['image_id']}  {hit['original_file_name']}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Per stage: lag, handled, failed, error rate, seconds per event; per tenant: counts."""
    from prometheus_client.parser import text_string_to_metric_families

    url = api_url(settings, args.api)
    try:
        text = httpx.get(url + "/metrics", timeout=30).text
    except httpx.HTTPError as exc:
        print(f"no DeepLens answering at {url}: {exc}", file=sys.stderr)
        return 1
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = sample.labels.get("stage") or sample.labels.get("group")
            if stage:
                key = (sample.name, stage)
                values[key] = values.get(key, 0.0) + sample.value
    stages = sorted({stage for (_, stage) in values})
    print(f"{'stage':12} {'lag':>8} {'handled':>9} {'failed':>7} {'error %':>8} "
          f"{'ms/event':>9} {'actors':>6}")
    for stage in stages:
        handled = values.get(("deeplens_stage_handled_total", stage), 0.0)
        failed = values.get(("deeplens_stage_failed_total", stage), 0.0)
        busy = values.get(("deeplens_stage_processing_seconds_total", stage), 0.0)
        print(f"{stage:12} {values.get(('deeplens_consumer_lag', stage), 0):>8.0f} "
              f"{handled:>9.0f} {failed:>7.0f} {100 * failed / max(handled, 1):>7.1f}% "
              f"{1000 * busy / max(handled, 1):>9.1f} "
              f"{values.get(('deeplens_stage_actors', stage), 0):>6.0f}")
    print("(throughput: the rate of deeplens_stage_handled_total; see the Grafana dashboard)")
    if settings.catalog_url or (settings.data_dir / "catalog.db").exists():
        import sqlalchemy as sa

        from ingestion.catalog import Catalog, images

        catalog = Catalog(settings.effective_catalog_url)
        query = (sa.select(images.c.tenant_id, images.c.status, sa.func.count())
                 .group_by(images.c.tenant_id, images.c.status))
        per_tenant: dict[str, dict[str, int]] = {}
        with catalog.engine.connect() as conn:
            for tenant, status, n in conn.execute(query):
                per_tenant.setdefault(tenant, {})[status] = n
        print(f"\n{'tenant':16} " + " ".join(f"{s:>9}" for s in
              ("uploaded", "validated", "processed", "indexed", "failed")))
        for tenant, counts in sorted(per_tenant.items()):
            print(f"{tenant:16} " + " ".join(f"{counts.get(s, 0):>9}" for s in
                  ("uploaded", "validated", "processed", "indexed", "failed")))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ingest", help="bulk upload files and folders, with progress")
    p.add_argument("paths", nargs="+")
    p.add_argument("--api", help="API URL (default: the running local stack)")
    p.add_argument("--key", help="API key (default: DEEPLENS_API_KEY or the demo key)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--state", default=".deeplens-ingest.json",
                   help="resume file: files already uploaded are skipped by sha256")
    p.add_argument("--no-wait", action="store_true", help="do not wait for indexing")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for indexing")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("status", help="per-stage lag, error rate; per-tenant counts")
    p.add_argument("--api", help="API URL (default: the running local stack)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("search", help="search by text or by image")
    p.add_argument("text", nargs="?")
    p.add_argument("--image")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--api")
    p.add_argument("--key")
    p.set_defaults(func=cmd_search)
