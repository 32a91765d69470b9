"""The search page in a real headless Chromium (Debian's), against the real stack."""

from __future__ import annotations

import io
import shutil
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

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


def _require_browser() -> None:
    import os

    if not Path(CHROMIUM).exists():
        if os.environ.get("DEEPLENS_REQUIRE_BROWSER"):
            pytest.fail("chromium missing: apt-get install chromium (.ci/run does)")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, broker, ray_session):
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
        api_keys="acme:key-acme-0123456789ab", serve=ServeSettings(port=free_port(), num_cpus=0.25),
        ingestion=IngestionSettings(rate_limit_per_minute=100_000, rate_limit_burst=10_000))
    serve.shutdown()
    try:
        with LocalStack(settings) as running:
            yield running
    finally:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})


@pytest.fixture
def page(stack, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.goto(stack.url + "/")
        yield tab
        browser.close()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def drop_file(page, name: str, data: bytes, mime: str) -> None:
    """A real drop event on the drop zone, carrying a File built in the page."""
    transfer = page.evaluate_handle(
        """([name, bytes, mime]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, { type: mime }));
            return dt;
        }""", [name, list(data), mime])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def wait_rows(page, count: int, timeout_s: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout_s
    states: list[str] = []
    while time.monotonic() < deadline:
        states = page.locator("#uploads .file .state").all_inner_texts()
        done = [s for s in states if s in ("indexed", "already uploaded") or s.startswith("failed")]
        if len(states) >= count and len(done) == len(states):
            return states
        time.sleep(0.5)
    return states


def test_upload_search_open_and_duplicates(page, tmp_path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.fill("#key", "not-a-key")
    page.click("#save-key")
    page.wait_for_selector("#error:has-text('not accepted')")

    page.fill("#key", "key-acme-0123456789ab")
    page.click("#save-key")
    page.wait_for_selector("#who:has-text('key accepted')")
    assert page.locator("#error").is_hidden()

    photos = [jpeg_bytes(scene(4000 + i)) for i in range(4)]
    drop_file(page, "dropped.jpg", photos[0], "image/jpeg")
    page.set_input_files("#files", [write(tmp_path / f"p{i}.jpg", p)
                                    for i, p in enumerate(photos[1:], start=1)])
    copy = io.BytesIO()
    Image.open(io.BytesIO(photos[2])).save(copy, "PNG")  # same pixels: an exact duplicate
    page.set_input_files("#files", [write(tmp_path / "copy.png", copy.getvalue()),
                                    write(tmp_path / "notes.jpg", b"plain text, not an image")])
    states = wait_rows(page, 6)
    assert states.count("indexed") == 5, states
    assert any("unsupported file type" in s for s in states), states

    page.set_input_files("#query-image", write(tmp_path / "query.jpg", photos[2]))
    page.wait_for_selector("#results .card")
    first = page.locator("#results .card").first
    assert "1.000" in first.inner_text()
    assert "p2.jpg" in first.inner_text() or "copy.png" in first.inner_text()

    page.fill("#query", "a sunny day")
    page.click("#search-text")
    page.wait_for_selector("#search-info:has-text('deeplens-tiny/random-init-seed0')")
    assert page.locator("#results .card").count() == 5

    page.locator("#results .card", has_text="p2.jpg").first.click()
    page.wait_for_selector("#detail-status-line:has-text('indexed')")
    page.wait_for_selector("#detail-dups .dup")
    dups = page.locator("#detail-dups").inner_text()
    assert "exact" in dups and "Tiers checked: exact, near" in dups
    page.wait_for_selector("#detail-similar .card")
    assert page.locator("#detail-similar .card").count() == 4  # the image itself excluded

    page.wait_for_selector("#pipeline tr[data-stage='indexing']", timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=True)


def test_service_down_is_shown_plainly(page) -> None:
    page.fill("#key", "key-acme-0123456789ab")
    page.click("#save-key")
    page.wait_for_selector("#who:has-text('key accepted')")
    page.route("**/v1/search", lambda route: route.abort())
    page.fill("#query", "anything")
    page.click("#search-text")
    page.wait_for_selector("#error:has-text('not reachable')")
