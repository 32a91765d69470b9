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
from typing import Any

import httpx

from deeplens.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


class ClientError(Exception):
    """An expected failure of a client command (API down, key refused, no such file):
    one plain line on stderr and exit code 2, never a traceback."""


def api_url(settings: Settings, api: str | None) -> str:
    """The API URL: flag, then DEEPLENS_API_URL, then a running local stack, then the default."""
    from deeplens.runtime import recorded_url

    url = api or os.environ.get("DEEPLENS_API_URL") or recorded_url(settings)
    return url or f"http://127.0.0.1:{settings.serve.port}"


def api_target(settings: Settings, api: str | None, key: str | None) -> tuple[str, str]:
    """The API URL and key: flags, then DEEPLENS_API_URL/KEY, then a running local stack."""
    from deeplens.runtime import locate

    url = api_url(settings, api)
    key = key or os.environ.get("DEEPLENS_API_KEY")
    demo_key = locate(settings).data_dir / "demo-api-key"
    if not key and demo_key.exists():
        key = demo_key.read_text().strip()
    if not key:
        raise ClientError("no API key: pass --key or set DEEPLENS_API_KEY (a local "
                          "`deeplens up` without configured keys makes a demo key)")
    return url, key


def connect(url: str, key: str, concurrency: int = 4) -> tuple[httpx.Client, str]:
    """A client for the API and the tenant its key belongs to; ClientError if the API is
    not there or refuses the key, before anything is sent."""
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          limits=httpx.Limits(max_connections=concurrency))
    try:
        answer = client.get("/v1/usage", params={"hours": 1})
    except httpx.HTTPError as exc:
        raise ClientError(f"no DeepLens answering at {url} ({type(exc).__name__}); is "
                          "`deeplens up` running? (--api URL to use another)") from None
    if answer.status_code == 401:
        raise ClientError(f"the API key was refused by {url} (401): check --key or "
                          "DEEPLENS_API_KEY")
    if answer.status_code != 200:
        raise ClientError(f"{url} answered {answer.status_code}: {_detail(answer)}")
    return client, str(answer.json()["tenant_id"])


def _detail(answer: httpx.Response) -> str:
    try:
        detail = answer.json().get("detail", "")
    except ValueError:
        return answer.text[:200]
    return detail if isinstance(detail, str) else json.dumps(detail)[:200]


def image_files(paths: list[str], out=sys.stderr) -> Iterator[Path]:
    """Files named on the command line as they are; folders walked for image suffixes."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            yield path
        else:
            print(f"skipped {raw}: no such file or folder", file=out)


class IngestState:
    """Files already accepted, to resume from: sha256 -> image_id, kept per target (API URL
    and tenant), so a resume file never skips files for another server or tenant."""

    VERSION = 2

    def __init__(self, path: Path) -> None:
        self.path = path
        self.target = ""
        self._targets: dict[str, dict[str, str]] = {}
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = {}
            if isinstance(saved, dict) and saved.get("version") == self.VERSION:
                self._targets = saved.get("targets", {})
            # an older file recorded no target: nothing in it can be trusted to resume from
        self._lock = threading.Lock()

    def bind(self, url: str, tenant: str) -> None:
        self.target = f"{url.rstrip('/')}|{tenant}"

    @property
    def done(self) -> dict[str, str]:
        return self._targets.setdefault(self.target, {})

    def add(self, sha: str, image_id: str) -> None:
        with self._lock:
            self.done[sha] = image_id
            self._save()

    def forget(self, shas: list[str]) -> None:
        with self._lock:
            for sha in shas:
                self.done.pop(sha, None)
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": self.VERSION, "targets": self._targets}))
        tmp.replace(self.path)


def _statuses(client: httpx.Client, ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        for _attempt in range(8):
            answer = client.post("/v1/images/statuses", json={"image_ids": ids[start:start + 500]})
            if answer.status_code != 429:
                break
            time.sleep(float(answer.headers.get("Retry-After", 1)))
        if answer.status_code != 200:
            raise ClientError(f"status look-up failed: {answer.status_code} {_detail(answer)}")
        found |= answer.json()["statuses"]
    return found


def ingest(url: str, key: str, files: list[Path], state: IngestState, concurrency: int,
           wait: bool, timeout_s: float, out=sys.stdout) -> dict[str, Any]:
    """Upload ``files``, skipping those this server and tenant already accepted, and wait
    until every one is indexed or failed. The result counts what happened and names each
    file that was refused or failed, with why."""
    client, tenant = connect(url, key, concurrency)
    state.bind(url, tenant)
    shas = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    remembered = {sha: state.done[sha] for sha in shas.values() if sha in state.done}
    if remembered:  # the server may have lost them (a fresh stack): check before skipping
        known = _statuses(client, list(remembered.values()))
        state.forget([sha for sha, image_id in remembered.items() if image_id not in known])
    ids: dict[Path, str] = {}
    tally = {"skipped": 0, "uploaded": 0, "rejected": 0}
    problems: dict[Path, str] = {}
    lock = threading.Lock()
    refused = threading.Event()  # the key stopped working: stop at once

    def one(path: Path) -> None:
        sha = shas[path]
        if sha in state.done:
            with lock:
                tally["skipped"] += 1
                ids[path] = state.done[sha]
            return
        if refused.is_set():
            return
        data = path.read_bytes()
        answer = None
        for attempt in range(8):
            answer = client.post("/v1/images", files={"file": (path.name, data)})
            if answer.status_code not in (429, 503):
                break
            time.sleep(float(answer.headers.get("Retry-After", 2 ** min(attempt, 4))))
        assert answer is not None
        with lock:
            if answer.status_code == 202:
                image_id = answer.json()["image_id"]
                state.add(sha, image_id)
                ids[path] = image_id
                tally["uploaded"] += 1
            elif answer.status_code == 401:
                refused.set()
            else:
                tally["rejected"] += 1
                problems[path] = f"refused: {answer.status_code} {_detail(answer)}"

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, f) for f in files]
        while any(not f.done() for f in futures):
            progress(out, len(files), tally, {})
            time.sleep(0.3)
        for f in futures:
            f.result()
    if refused.is_set():
        raise ClientError(f"the API key was refused by {url} (401) during the upload; "
                          f"{tally['uploaded']} files were accepted before that")
    statuses: dict[str, int] = {}
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while wait and ids and time.monotonic() < deadline:
        found = _statuses(client, list(ids.values()))
        statuses = {}
        for status in found.values():
            statuses[status] = statuses.get(status, 0) + 1
        missing = len(ids) - len(found)  # deleted meanwhile: nothing to wait for
        if missing:
            statuses["missing"] = missing
        progress(out, len(files), tally, statuses)
        if statuses.get("indexed", 0) + statuses.get("failed", 0) + missing >= len(ids):
            break
        time.sleep(1)
    progress(out, len(files), tally, statuses)
    print(file=out)
    for path, image_id in ids.items():
        if wait and found.get(image_id) == "failed":
            row = client.get(f"/v1/images/{image_id}").json()
            problems[path] = (f"failed in {row.get('stage')}: {row.get('failure_reason')} "
                              f"({(row.get('failure_message') or '')[:120]})")
    return tally | {f"status_{k}": v for k, v in statuses.items()} | {
        "failed_files": {str(p): why for p, why in sorted(problems.items())}}


def progress(out, total: int, tally: dict[str, int], statuses: dict[str, int]) -> None:
    sent = tally["uploaded"] + tally["skipped"] + tally["rejected"]
    width = 30
    filled = int(width * sent / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    line = (f"\r[{bar}] {sent}/{total} sent (new {tally['uploaded']}, already "
            f"{tally['skipped']}, refused {tally['rejected']})")
    if statuses:
        line += "  " + " ".join(f"{k} {statuses.get(k, 0)}" for k in
                                ("uploaded", "validated", "processed", "indexed", "failed",
                                 "missing") if k != "missing" or statuses.get(k))
    print(line, end="", file=out, flush=True)


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: every file indexed (or already there); 1: some refused or failed; 2: usage
    or connection errors (nothing to ingest, API down, key refused)."""
    url, key = api_target(settings, args.api, args.key)
    files = list(image_files(args.paths))
    if not files:
        raise ClientError("nothing to ingest: no image files in " + " ".join(args.paths))
    state = IngestState(Path(args.state))
    result = ingest(url, key, files, state, args.concurrency, not args.no_wait, args.timeout)
    failed = result.pop("failed_files")
    print("summary: " + ", ".join(f"{k} {v}" for k, v in result.items()))
    for path, why in failed.items():
        print(f"  {path}: {why}")
    return 1 if failed else 0


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    if not args.image and not (args.text or "").strip():
        raise ClientError("give a text query or --image FILE")
    if args.image and not Path(args.image).is_file():
        raise ClientError(f"no such file: {args.image}")
    url, key = api_target(settings, args.api, args.key)
    client, _tenant = connect(url, key)
    if args.image:
        path = Path(args.image)
        answer = client.post("/v1/search/image", files={"file": (path.name, path.read_bytes())},
                             data={"k": str(args.k)})
    else:
        answer = client.post("/v1/search", json={"text": args.text, "k": args.k})
    if answer.status_code != 200:
        print(f"search refused: {answer.status_code} {_detail(answer)}", file=sys.stderr)
        return 1
    body = answer.json()
    print(f"model {body['model']}")
    for rank, hit in enumerate(body["hits"], start=1):
        print(f"{rank:3}. {hit['score']:+.4f}  {hit['image_id']}  {hit['original_file_name']}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Per stage: lag, handled, failed, error rate, seconds per event; per tenant: counts."""
    from prometheus_client.parser import text_string_to_metric_families

    from deeplens.runtime import locate

    settings = locate(settings)
    url = api_url(settings, args.api)
    token = settings.ops.metrics_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.get(url + "/metrics", timeout=30, headers=headers)
    except httpx.HTTPError as exc:
        raise ClientError(f"no DeepLens answering at {url} ({type(exc).__name__}); is "
                          "`deeplens up` running?") from None
    if answer.status_code != 200:
        raise ClientError(f"{url}/metrics answered {answer.status_code}: {_detail(answer)} "
                          "(set DEEPLENS_OPS__METRICS_TOKEN to the operator token)")
    text = answer.text
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


def client_command(func: Any) -> Any:
    """Expected failures become one line on stderr and exit code 2; Ctrl-C exits 130."""
    import functools

    @functools.wraps(func)
    def run(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return int(func(settings, args))
        except ClientError as exc:
            print(f"deeplens {args.command}: {exc}", file=sys.stderr)
            return 2
        except httpx.HTTPError as exc:
            print(f"deeplens {args.command}: the API stopped answering ({type(exc).__name__}: "
                  f"{exc})", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\ndeeplens {args.command}: interrupted", file=sys.stderr)
            return 130

    return run


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ingest", help="bulk upload files and folders, with progress")
    p.add_argument("paths", nargs="+")
    p.add_argument("--api", help="API URL (default: the running local stack)")
    p.add_argument("--key", help="API key (default: DEEPLENS_API_KEY or the demo key)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--state", default=".deeplens-ingest.json",
                   help="resume file: files this server and tenant already accepted are "
                   "skipped (by sha256, checked with the server first)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for indexing")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for indexing")
    p.set_defaults(func=client_command(cmd_ingest))

    p = sub.add_parser("status", help="per-stage lag, error rate; per-tenant counts")
    p.add_argument("--api", help="API URL (default: the running local stack)")
    p.set_defaults(func=client_command(cmd_status))

    p = sub.add_parser("search", help="search by text or by image")
    p.add_argument("text", nargs="?")
    p.add_argument("--image")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--api")
    p.add_argument("--key")
    p.set_defaults(func=client_command(cmd_search))
