"""``make demo``: bring the stack up, push a sample set through it, show the outcome."""

from __future__ import annotations

import logging
import time

import httpx

from cluster.samples import sample_set
from cluster.stack import LocalStack
from deeplens.settings import Settings

log = logging.getLogger(__name__)

# How far the demo waits for each sample to get; grows as the pipeline grows.
TARGET_STATUS = "validated"


def run_demo(settings: Settings, smoke: bool = False, samples: int = 24,
             timeout_s: float = 300) -> int:
    with LocalStack(settings) as stack:
        stack.print_banner()
        key = stack.demo_key or next(iter(stack.settings.tenant_keys()))
        ok = push_samples(stack.url, key, samples, timeout_s)
        if smoke:
            return 0 if ok else 1
        print("The stack keeps running; Ctrl-C stops it.", flush=True)
        stack.wait()
    return 0


def push_samples(url: str, key: str, count: int, timeout_s: float) -> bool:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    ids: dict[str, str] = {}
    for name, data in sample_set(count):
        answer = client.post("/v1/images", files={"file": (name, data)})
        answer.raise_for_status()
        ids[answer.json()["image_id"]] = name
    print(f"demo: uploaded {len(ids)} sample images; waiting for them to be {TARGET_STATUS}",
          flush=True)
    deadline = time.monotonic() + timeout_s
    rows: dict[str, dict] = {}
    while time.monotonic() < deadline:
        rows = {i: client.get(f"/v1/images/{i}").json() for i in ids}
        done = [r for r in rows.values() if r["status"] in (TARGET_STATUS, "failed")]
        print(f"\r  {len(done)}/{len(ids)} done", end="", flush=True)
        if len(done) == len(ids):
            break
        time.sleep(1)
    print()
    by_status: dict[str, int] = {}
    for row in rows.values():
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    print(f"demo: {by_status}", flush=True)
    return by_status.get(TARGET_STATUS, 0) == len(ids)
