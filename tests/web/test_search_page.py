"""The search page in a real headless Chromium (Debian's), against the real stack."""

from __future__ import annotations

import time

from cluster.samples import jpeg_bytes, scene
from tests.web.conftest import ARTIFACTS, use_key, wait_rows, write


def drop_file(page, name: str, data: bytes, mime: str) -> None:
    """A real drop event on the drop zone, carrying a File built in the page."""
    transfer = page.evaluate_handle(
        """([name, bytes, mime]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, { type: mime }));
            return dt;
        }""", [name, list(data), mime])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def test_upload_search_open_and_duplicates(page, tmp_path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
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
    # Other bytes, the same compressed picture (a comment added): an exact duplicate.
    note = b"tagged elsewhere"
    copy = photos[2][:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + photos[2][2:]
    page.set_input_files("#files", [write(tmp_path / "copy.jpg", copy),
                                    write(tmp_path / "notes.jpg", b"plain text, not an image")])
    states = wait_rows(page, 6)
    assert states.count("indexed") == 5, states
    assert any("unsupported file type" in s for s in states), states

    page.set_input_files("#query-image", write(tmp_path / "query.jpg", photos[2]))
    page.wait_for_selector("#results .card")
    first = page.locator("#results .card").first
    assert "1.000" in first.inner_text()
    assert "p2.jpg" in first.inner_text() or "copy.jpg" in first.inner_text()

    page.fill("#query", "a sunny day")
    page.click("#search-text")
    page.wait_for_selector("#search-info:has-text('deeplens-tiny/random-init-seed0')")
    assert page.locator("#results .card").count() == 5

    # Dedup runs beside indexing: the link appears once the later of p2 and its copy is
    # deduplicated, which may be after both are indexed. Reopen until it is there.
    for _ in range(30):
        if page.locator("#detail").is_visible():
            page.keyboard.press("Escape")  # the detail is a dialog over the results
        page.locator("#results .card", has_text="p2.jpg").first.click()
        page.wait_for_selector("#detail-status-line:has-text('indexed')")
        page.wait_for_selector("#detail-dups p")  # the panel has rendered its answer
        if page.locator("#detail-dups .dup").count():
            break
        time.sleep(1)
    page.wait_for_selector("#detail-dups .dup")
    dups = page.locator("#detail-dups").inner_text()
    assert "exact" in dups and "Tiers checked: exact, near" in dups
    assert "copy.jpg" in dups, "a duplicate is shown by its file name, not a bare id"
    page.wait_for_selector("#detail-dups .card img[src^='blob:']")  # and its thumbnail
    # Cards show the Embedder's thumbnails; no original is downloaded to draw them.
    assert any(url.endswith("/thumbnail") for url in fetched)
    assert not any(url.endswith("/content") for url in fetched), "an original was fetched"
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


def test_plain_errors_and_no_stale_results(page, tmp_path) -> None:
    use_key(page)
    page.fill("#query", "   ")
    page.click("#search-text")
    page.wait_for_selector("#error:has-text('Type a few words')")
    page.fill("#query", "anything at all")
    page.click("#search-text")
    page.wait_for_selector("#search-info:has-text('model')")
    page.set_input_files("#query-image", write(tmp_path / "notes.jpg", b"plain text, really"))
    page.wait_for_selector("#error:has-text('cannot be used as a search image')")
    error = page.locator("#error").inner_text()
    assert "BytesIO" not in error and "[{" not in error, error
    assert "JPEG, PNG or WebP" in error, error  # the reason, in words
    assert page.locator("#results .card").count() == 0, "no stale results under an error"
    assert page.locator("#search-info").inner_text() == ""


def test_random_weights_banner_library_and_delete(page, stack, tmp_path) -> None:
    use_key(page)
    page.wait_for_selector("#random-banner:has-text('Random weights')")
    assert page.locator("#random-banner").is_visible()
    page.set_input_files("#files", [write(tmp_path / f"lib{i}.jpg", jpeg_bytes(scene(5100 + i)))
                                    for i in range(3)])
    wait_rows(page, 3)
    # The library reloads once the uploads settle: newest first, these three among them.
    for name in ("lib0.jpg", "lib1.jpg", "lib2.jpg"):
        page.wait_for_selector(f"#library .card:has-text('{name}')")
    names = page.locator("#library .card .name").all_inner_texts()
    assert {"lib0.jpg", "lib1.jpg", "lib2.jpg"} <= set(names[:3]), names
    page.select_option("#library-status", "failed")
    page.wait_for_selector("#library .card", state="detached")  # none of them failed
    page.select_option("#library-status", "")
    page.wait_for_selector("#library .card:has-text('lib1.jpg')")
    victim = page.locator("#library .card", has_text="lib1.jpg")
    image_id = victim.get_attribute("data-image-id")
    page.once("dialog", lambda dialog: dialog.accept())
    victim.locator("button.delete").click()
    page.wait_for_selector(f"#library .card[data-image-id='{image_id}']", state="detached")
    import httpx

    gone = httpx.get(f"{stack.url}/v1/images/{image_id}",
                     headers={"Authorization": "Bearer key-acme-0123456789ab"})
    assert gone.status_code == 404
    # Upload rows are clickable: they open the image.
    page.locator("#uploads .file", has_text="lib0.jpg").click()
    page.wait_for_selector("#detail-title:has-text('lib0.jpg')")


def test_a_hundred_file_drop_loses_nothing_to_429s(page, tmp_path) -> None:
    """The page polls statuses in bulk and retries uploads answered 429 (here every
    third one, injected) after Retry-After: all 100 end indexed."""
    use_key(page)
    seen = {"posts": 0, "per_image_polls": 0, "bulk_polls": 0}

    def throttle(route) -> None:
        seen["posts"] += 1
        if seen["posts"] % 3 == 0:
            route.fulfill(status=429, headers={"Retry-After": "1"},
                          content_type="application/json",
                          body='{"detail": "rate limit reached"}')
        else:
            route.continue_()

    def count(request) -> None:
        if request.url.endswith("/v1/images/statuses"):
            seen["bulk_polls"] += 1
        elif "/v1/images/" in request.url and request.method == "GET" \
                and not request.url.endswith(("/content", "/thumbnail")):
            seen["per_image_polls"] += 1

    page.route("**/v1/images", lambda route: throttle(route) if route.request.method == "POST"
               else route.continue_())
    page.on("request", count)
    files = [write(tmp_path / f"bulk{i:03}.jpg", jpeg_bytes(scene(6000 + i, 96)))
             for i in range(100)]
    page.set_input_files("#files", files)
    states = wait_rows(page, 100, timeout_s=300)
    assert len(states) == 100
    answers = page.locator("#uploads .file").evaluate_all(
        "rows => rows.filter(r => !r.querySelector('.state.done')).map(r => r.dataset.answers)")
    assert states.count("indexed") == 100, (sorted(set(states)), answers)
    assert seen["posts"] > 100, "some uploads were answered 429 and sent again"
    assert seen["per_image_polls"] == 0 and seen["bulk_polls"] < 150, seen
