"""Bulk ingest: upload files (resumable, concurrent, retried on 429/503) and wait until
each is indexed or failed, with a progress line."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from cluster.client_http import ClientError, connect, detail, wait_until_settled
from cluster.client_http import statuses as statuses_of

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


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


BATCH_FILES = 100  # what POST /v1/images/batch takes at most
BATCH_BYTES = 90 * 1024 * 1024  # under its 100 MB, with room for the framing


class _Uploader:
    """Uploads files in batches (``POST /v1/images/batch``) on concurrent threads,
    skipping what the server already has; a file answered 429/503 is sent again."""

    def __init__(self, client: httpx.Client, state: IngestState, shas: dict[Path, str]) -> None:
        self.client, self.state, self.shas = client, state, shas
        self.ids: dict[Path, str] = {}
        self.tally = {"skipped": 0, "uploaded": 0, "rejected": 0}
        self.problems: dict[Path, str] = {}
        self.refused = threading.Event()  # the key stopped working: stop at once
        self._lock = threading.Lock()

    def batch(self, paths: list[Path]) -> None:
        todo = []
        for path in paths:
            sha = self.shas[path]
            if sha in self.state.done:
                with self._lock:
                    self.tally["skipped"] += 1
                    self.ids[path] = self.state.done[sha]
            else:
                todo.append(path)
        for attempt in range(8):
            if not todo or self.refused.is_set():
                return
            answer = self.client.post("/v1/images/batch", files=[
                ("files", (p.name, p.read_bytes())) for p in todo])
            if answer.status_code in (429, 503):
                time.sleep(float(answer.headers.get("Retry-After", 2 ** min(attempt, 4))))
                continue
            if answer.status_code == 401:
                self.refused.set()
                return
            if answer.status_code != 200:
                self._reject(todo, f"refused: {answer.status_code} {detail(answer)}")
                return
            todo = self._settle(todo, answer.json()["results"])
            if todo:
                time.sleep(min(2 ** attempt, 16))
        self._reject(todo, "refused: still busy after 8 attempts (429/503)")

    def _settle(self, paths: list[Path], results: list[dict[str, Any]]) -> list[Path]:
        """Record a batch's answers; the files to send again."""
        again = []
        with self._lock:
            for path, result in zip(paths, results, strict=True):
                if result["status_code"] == 202:
                    self.state.add(self.shas[path], result["image_id"])
                    self.ids[path] = result["image_id"]
                    self.tally["uploaded"] += 1
                elif result["status_code"] in (429, 503):
                    again.append(path)
                else:
                    self.tally["rejected"] += 1
                    self.problems[path] = (f"refused: {result['status_code']} "
                                           f"{result.get('detail') or ''}")
        return again

    def _reject(self, paths: list[Path], why: str) -> None:
        with self._lock:
            for path in paths:
                self.tally["rejected"] += 1
                self.problems[path] = why

    def run(self, files: list[Path], concurrency: int, out) -> None:
        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(self.batch, b) for b in batches(files, concurrency)]
            while any(not f.done() for f in futures):
                progress(out, len(files), self.tally, {})
                time.sleep(0.3)
            for f in futures:
                f.result()


def batches(files: list[Path], concurrency: int) -> list[list[Path]]:
    """Batches of at most BATCH_FILES files and BATCH_BYTES, enough for every thread."""
    per = max(1, min(BATCH_FILES, -(-len(files) // max(concurrency, 1))))
    out: list[list[Path]] = [[]]
    size = 0
    for path in files:
        length = path.stat().st_size
        if out[-1] and (len(out[-1]) >= per or size + length > BATCH_BYTES):
            out.append([])
            size = 0
        out[-1].append(path)
        size += length
    return [b for b in out if b]


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
        known = statuses_of(client, list(remembered.values()))
        state.forget([sha for sha, image_id in remembered.items() if image_id not in known])
    up = _Uploader(client, state, shas)
    up.run(files, concurrency, out)
    if up.refused.is_set():
        raise ClientError(f"the API key was refused by {url} (401) during the upload; "
                          f"{up.tally['uploaded']} files were accepted before that")
    statuses: dict[str, int] = {}
    found: dict[str, str] = {}
    if wait:
        statuses, found = wait_until_settled(
            client, list(up.ids.values()), timeout_s,
            lambda counts: progress(out, len(files), up.tally, counts))
    progress(out, len(files), up.tally, statuses)
    print(file=out)
    for path, image_id in up.ids.items():
        if found.get(image_id) == "failed":
            row = client.get(f"/v1/images/{image_id}").json()
            up.problems[path] = (f"failed in {row.get('stage')}: {row.get('failure_reason')} "
                                 f"({(row.get('failure_message') or '')[:120]})")
    return up.tally | {f"status_{k}": v for k, v in statuses.items()} | {
        "failed_files": {str(p): why for p, why in sorted(up.problems.items())}}


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
