"""One real stack and one Debian Chromium for every browser test of the search page.

The stack (broker topics, Ray Serve apps, API) starts once for the package; each test
gets its own browser context, and tests that need a clean library use their own tenant
(``key_for``), so no test sees another's images.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster.samples import jpeg_bytes, scene
from cluster.stack import LocalStack
from deeplens.broker import free_port
from deeplens.kafka import admin_client
from deeplens.settings import (
    IngestionSettings,
    KafkaSettings,
    ModelSettings,
    ServeSettings,
    Settings,
)
from deeplens.topics import TopicNames, ensure_topics

ARTIFACTS = Path(__file__).parent.parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background traffic, no first-run work.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Tenants of the stack: acme for the original page tests, one per test that needs a
# library of its own.
TENANTS = ("acme", "kb", "axe", "bomb", "shelf", "forget", "stale", "twins", "words")


def key_for(tenant: str) -> str:
    return f"key-{tenant}-0123456789ab"


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("DEEPLENS_REQUIRE_BROWSER"):
            pytest.fail("chromium missing: apt-get install chromium (.ci/run does)")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="package")
def stack(tmp_path_factory, broker, ray_session) -> Iterator[LocalStack]:
    from ray import serve

    _require_browser()
    prefix = f"web{uuid.uuid4().hex[:6]}."
    kafka = KafkaSettings(bootstrap_servers=broker,
                          one_record_per_batch=True, topic_prefix=prefix, poll_timeout_s=0.2,
                          session_timeout_ms=6000, batch_size=16)
    ensure_topics(admin_client(kafka), TopicNames(prefix))
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("web"), kafka=kafka,
        model=ModelSettings(name="deeplens-tiny", pretrained="random"),
        api_keys=",".join(f"{t}:{key_for(t)}" for t in TENANTS),
        serve=ServeSettings(port=free_port(), num_cpus=0.25),
        ingestion=IngestionSettings(rate_limit_per_minute=100_000, rate_limit_burst=10_000))
    serve.shutdown()
    try:
        with LocalStack(settings) as running:
            yield running
    finally:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})


@pytest.fixture(scope="package")
def browser(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        running = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield running
        running.close()


def open_page(browser, stack, width: int = 1280, height: int = 900, **options):
    """A fresh context (no storage shared with other tests) on the page, recording the
    page's own script errors on ``tab.script_errors``."""
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    tab = context.new_page()
    tab.script_errors = []
    tab.on("pageerror", lambda error: tab.script_errors.append(str(error)))
    tab.goto(stack.url + "/")
    return tab


@pytest.fixture
def page(browser, stack):
    tab = open_page(browser, stack)
    yield tab
    errors = tab.script_errors
    tab.context.close()
    assert not errors, f"the page's script threw: {errors}"


def use_key(page, tenant: str = "acme") -> None:
    page.fill("#key", key_for(tenant))
    page.press("#key", "Enter")  # Enter applies the key, like the button
    page.wait_for_selector("#who:has-text('key accepted')")


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def wait_rows(page, count: int, timeout_s: float = 120) -> list[str]:
    """The upload rows' states once ``count`` rows have all settled."""
    deadline = time.monotonic() + timeout_s
    states: list[str] = []
    while time.monotonic() < deadline:
        states = page.locator("#uploads .file .state").all_inner_texts()
        done = [s for s in states if s in ("indexed", "already uploaded")
                or s.startswith(("failed", "same file as"))]
        if len(states) >= count and len(done) == len(states):
            return states
        time.sleep(0.5)
    return states


def seed(stack, tenant: str, count: int, first_seed: int, names: str = "img{:02}.jpg",
         indexed: bool = True) -> list[str]:
    """Upload ``count`` small photos straight to the API (no page); their ids, oldest
    first, once all are indexed (or just accepted, with ``indexed=False``)."""
    headers = {"Authorization": f"Bearer {key_for(tenant)}"}
    ids = []
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        for i in range(count):
            data = jpeg_bytes(scene(first_seed + i, 96))
            answer = client.post("/v1/images",
                                 files={"file": (names.format(i), data, "image/jpeg")})
            answer.raise_for_status()
            ids.append(answer.json()["image_id"])
        deadline = time.monotonic() + 120
        while indexed and time.monotonic() < deadline:
            statuses = client.post("/v1/images/statuses",
                                   json={"image_ids": ids}).json()["statuses"]
            if all(statuses.get(i) == "indexed" for i in ids):
                break
            time.sleep(0.5)
    return ids
