"""Talking to a running DeepLens over HTTP: where it is, its key, the tenant, statuses."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

import httpx

from deeplens.settings import Settings


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
        raise ClientError(f"{url} answered {answer.status_code}: {detail(answer)}")
    return client, str(answer.json()["tenant_id"])


def detail(answer: httpx.Response) -> str:
    """The API's error detail, as one short line."""
    try:
        detail = answer.json().get("detail", "")
    except ValueError:
        return answer.text[:200]
    return detail if isinstance(detail, str) else json.dumps(detail)[:200]


def statuses(client: httpx.Client, ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        for _attempt in range(8):
            answer = client.post("/v1/images/statuses", json={"image_ids": ids[start:start + 500]})
            if answer.status_code != 429:
                break
            time.sleep(float(answer.headers.get("Retry-After", 1)))
        if answer.status_code != 200:
            raise ClientError(f"status look-up failed: {answer.status_code} {detail(answer)}")
        found |= answer.json()["statuses"]
    return found


def wait_until_settled(client: httpx.Client, image_ids: list[str], timeout_s: float,
                       report: Callable[[dict[str, int]], None],
                       stop: threading.Event | None = None) -> tuple[dict[str, int], dict[str, str]]:
    """Poll the images' statuses until each is indexed, failed or gone (deleted meanwhile),
    or ``timeout_s`` passes; ``report`` gets the counts per status after every look.
    Returns the last counts and each found image's status."""
    counts: dict[str, int] = {}
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while image_ids and time.monotonic() < deadline and not (stop and stop.is_set()):
        found = statuses(client, image_ids)
        counts = {}
        for status in found.values():
            counts[status] = counts.get(status, 0) + 1
        missing = len(image_ids) - len(found)
        if missing:
            counts["missing"] = missing
        report(counts)
        if counts.get("indexed", 0) + counts.get("failed", 0) + missing >= len(image_ids):
            break
        time.sleep(1)
    return counts, found
