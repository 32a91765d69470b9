"""``make demo``: bring the stack up, push a sample set through it, show the outcome."""

from __future__ import annotations

import logging
import threading

import httpx

from cluster.client_http import wait_until_settled
from cluster.samples import sample_set
from cluster.stack import LocalStack
from deeplens.settings import Settings

log = logging.getLogger(__name__)

# How far the demo waits for each sample to get; grows as the pipeline grows.
TARGET_STATUS = "indexed"

BANNER = """
************************************************************************
  No pretrained weights for {name}/{tag} in the local cache.
  This demo runs with RANDOM weights (DEEPLENS_MODEL__PRETRAINED=random):
  the pipeline works end to end, but vectors carry the id
  '{name}/random-init-seed0' and similarity scores mean nothing.
  For real results fetch the weights once:
      DEEPLENS_MODEL__ALLOW_DOWNLOAD=true make demo
  or point DEEPLENS_MODEL__PRETRAINED at a weights file.
************************************************************************
"""


def demo_settings(settings: Settings) -> Settings:
    """The demo's one liberty: random weights, asked for explicitly, when none are cached."""
    from serve_apps.model import weights_available

    model = settings.model
    if weights_available(model):
        return settings
    print(BANNER.format(name=model.name, tag=model.pretrained), flush=True)
    return settings.model_copy(
        update={"model": model.model_copy(update={"pretrained": "random"})})


def run_demo(settings: Settings, smoke: bool = False, samples: int = 24,
             timeout_s: float = 300) -> int:
    settings = demo_settings(settings)
    with LocalStack(settings, announce=True) as stack:
        stack.stop_on_signals()
        stack.print_banner()
        key = stack.demo_key or next(iter(stack.settings.tenant_keys()))
        ok = push_samples(stack.url, key, samples, timeout_s, stop=stack._done)
        if ok:
            # A sample must find itself first, on this start as on every earlier one on this
            # data dir (the vectors of earlier starts are still there).
            ok = show_searches(stack.url, key)
        if smoke:
            return 0 if ok else 1
        print("The stack keeps running; Ctrl-C stops it.", flush=True)
        stack.wait()
    return 0


def push_samples(url: str, key: str, count: int, timeout_s: float,
                 stop: threading.Event | None = None) -> bool:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    ids: dict[str, str] = {}
    for name, data in sample_set(count):
        answer = client.post("/v1/images", files={"file": (name, data)})
        answer.raise_for_status()
        ids[answer.json()["image_id"]] = name
    print(f"demo: uploaded {len(ids)} sample images; waiting for them to be {TARGET_STATUS}",
          flush=True)
    def report(counts: dict[str, int]) -> None:
        done = counts.get(TARGET_STATUS, 0) + counts.get("failed", 0)
        print(f"\r  {done}/{len(ids)} done  {counts}", end="", flush=True)

    by_status, _ = wait_until_settled(client, list(ids), timeout_s, report, stop)
    print()
    print(f"demo: {by_status}", flush=True)
    return by_status.get(TARGET_STATUS, 0) == len(ids)


def show_searches(url: str, key: str) -> bool:
    """A few searches, printed as a user would see them; whether an uploaded sample,
    searched by its own bytes, comes back first (scored ~1)."""
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    for text in ("a sunset over the hills", "a city skyline"):
        body = client.post("/v1/search", json={"text": text, "k": 3}).json()
        print(f"search {text!r} ({body['model']}):")
        for hit in body["hits"]:
            print(f"   {hit['score']:+.3f}  {hit['original_file_name']}  {hit['image_id']}")
    name, data = sample_set(1)[0]
    body = client.post("/v1/search/image", files={"file": (name, data)}, data={"k": "3"}).json()
    print(f"search by image {name}:")
    for hit in body["hits"]:
        print(f"   {hit['score']:+.3f}  {hit['original_file_name']}  {hit['image_id']}")
    hits = body["hits"]
    found_itself = bool(hits) and hits[0]["original_file_name"] == name and hits[0]["score"] > 0.99
    if not found_itself:
        print(f"demo: PROBLEM: {name} did not find itself first; vectors of this data dir may "
              "come from other weights under the same model id", flush=True)
    print(f"search page: {url}/  API spec: {url}/openapi.json", flush=True)
    return found_itself
