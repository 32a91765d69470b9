"""Duplicate tiers on real images and transformed copies; the hash index's concurrency rule."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from actors.dedup import content_hashes, find_duplicates
from cluster.samples import jpeg_bytes, scene
from deeplens.events import ImageProcessed
from deeplens.hash_index import HashIndex
from deeplens.settings import DedupThresholds, VectorStoreSettings
from deeplens.vectors.lancedb import LanceStore

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def processed(image_id: str, data: bytes, vector, model: str = "m/random-init",
              tenant: str = "alpha") -> ImageProcessed:
    import hashlib

    return ImageProcessed(
        tenant_id=tenant, image_id=image_id, original_file_name=f"{image_id}.jpg",
        storage_provider="local", storage_path=f"{tenant}/{image_id}.jpg", file_size=len(data),
        mime_type="image/jpeg", sha256=hashlib.sha256(data).hexdigest(), uploaded_at=NOW,
        width=256, height=256, format="JPEG", validated_at=NOW,
        schema_version=1, features=[float(x) for x in vector], feature_model=model,
        processed_at=NOW)


def resave_without_metadata(data: bytes) -> bytes:
    """Same pixels, different bytes: the JPEG's coded picture with other metadata (a JPEG's
    fingerprint is of its coded data; a PNG of its decoded pixels is near, not exact)."""
    return data[:2] + b"\xff\xfe\x00\x0eresaved copy" + data[2:]  # a COM segment


def test_pixel_identical_copies_share_the_pixel_hash() -> None:
    original = jpeg_bytes(scene(1))
    assert content_hashes(original)[0] == content_hashes(resave_without_metadata(original))[0]
    assert content_hashes(original)[0] != content_hashes(jpeg_bytes(scene(2)))[0]


def test_phash_is_close_for_a_reencoded_copy_and_far_for_another_picture() -> None:
    original = jpeg_bytes(scene(3))
    _, a, _ = content_hashes(original)
    _, b, _ = content_hashes(jpeg_bytes(Image.open(io.BytesIO(original)), quality=40))
    _, c, _ = content_hashes(jpeg_bytes(scene(4)))
    assert bin(a ^ b).count("1") <= 4
    assert bin(a ^ c).count("1") > 16


def test_tiers_and_random_model_turns_similar_off(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    store = LanceStore(tmp_path / "v", VectorStoreSettings())
    limits = DedupThresholds()
    original = jpeg_bytes(scene(5))
    copy = resave_without_metadata(original)
    near = jpeg_bytes(Image.open(io.BytesIO(original)), quality=35)
    vec = np.ones(8) / np.sqrt(8)
    first = find_duplicates(processed("a", original, vec), content_hashes(original), index,
                            store, limits)
    assert first.matches == [] and first.tiers == ["exact", "near"]
    second = find_duplicates(processed("b", copy, vec), content_hashes(copy), index, store,
                             limits)
    assert [(m.image_id, m.kind) for m in second.matches] == [("a", "exact")]
    third = find_duplicates(processed("c", near, vec), content_hashes(near), index, store,
                            limits)
    assert {(m.image_id, m.kind) for m in third.matches} == {("a", "near"), ("b", "near")}
    other_tenant = find_duplicates(processed("z", original, vec, tenant="beta"),
                                   content_hashes(original), index, store, limits)
    assert other_tenant.matches == []


def test_similar_tier_runs_for_a_real_model(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    store = LanceStore(tmp_path / "v", VectorStoreSettings())
    limits = DedupThresholds(similar_min_score=0.9)
    v1 = np.array([1.0, 0, 0, 0])
    v2 = np.array([0.97, 0.24, 0, 0])
    a, b = jpeg_bytes(scene(6)), jpeg_bytes(scene(7))
    find_duplicates(processed("a", a, v1, model="m/real"), content_hashes(a), index, store,
                    limits)
    found = find_duplicates(processed("b", b, v2, model="m/real"), content_hashes(b), index,
                            store, limits)
    assert found.tiers == ["exact", "near", "similar"]
    assert [(m.image_id, m.kind) for m in found.matches] == [("a", "similar")]


def test_two_actors_at_the_same_moment_still_link(tmp_path) -> None:
    """Write-then-look: whichever looks second sees the other, in any interleaving."""
    url = f"sqlite:///{tmp_path}/h.db"
    actor_1, actor_2 = HashIndex(url), HashIndex(url)
    original = jpeg_bytes(scene(8))
    near = jpeg_bytes(Image.open(io.BytesIO(original)), quality=50)
    (p1, h1, _), (p2, h2, _) = content_hashes(original), content_hashes(near)
    actor_1.near("alpha", "x", h1, 10)  # both caches warm and empty
    actor_2.near("alpha", "y", h2, 10)
    actor_1.add("alpha", "a", "s1", p1, h1)
    actor_2.add("alpha", "b", "s2", p2, h2)
    seen_by_1 = actor_1.near("alpha", "a", h1, 10)
    seen_by_2 = actor_2.near("alpha", "b", h2, 10)
    assert [i for i, _ in seen_by_1] == ["b"] and [i for i, _ in seen_by_2] == ["a"]


def test_an_image_forgotten_by_another_actor_is_not_reported(tmp_path) -> None:
    """Deletes reach one dedup actor; the others must not link to the deleted image."""
    url = f"sqlite:///{tmp_path}/h.db"
    actor_1, actor_2 = HashIndex(url), HashIndex(url)
    original = jpeg_bytes(scene(9))
    near = jpeg_bytes(Image.open(io.BytesIO(original)), quality=50)
    (p1, h1, _), (p2, h2, _) = content_hashes(original), content_hashes(near)
    actor_1.add("alpha", "a", "s1", p1, h1)
    assert [i for i, _ in actor_2.near("alpha", "x", h2, 10)] == ["a"]  # actor 2 cached "a"
    actor_1.forget("alpha", "a")  # the delete went to actor 1
    actor_2.add("alpha", "b", "s2", p2, h2)
    assert actor_2.near("alpha", "b", h2, 10) == []


def test_a_row_committed_out_of_sequence_order_is_still_seen(tmp_path, monkeypatch) -> None:
    """A writer that took a lower seq but committed after a refresh is not skipped: the
    next overlap sweep (at most SWEEP_EVERY_S later) picks it up."""
    import time

    import deeplens.hash_index as hash_index
    from deeplens.hash_index import image_hashes, to_signed

    monkeypatch.setattr(hash_index, "SWEEP_EVERY_S", 0.2)

    url = f"sqlite:///{tmp_path}/h.db"
    reader = HashIndex(url)
    original = jpeg_bytes(scene(10))
    _, h, _ = content_hashes(original)
    reader.add("alpha", "later", "s2", "p2", h ^ 0xFF00)  # far enough to be no match
    with reader.engine.begin() as conn:  # a row numbered above it, then the refresh
        conn.execute(image_hashes.insert().values(seq=50, tenant_id="alpha", image_id="high",
                                                  sha256="s3", pixel_sha256="p3",
                                                  phash=to_signed(h ^ 0xFFFFFFFF)))
    reader.near("alpha", "q", h, 4)
    with reader.engine.begin() as conn:  # a row with a lower seq commits only now
        conn.execute(image_hashes.insert().values(seq=20, tenant_id="alpha", image_id="slow",
                                                  sha256="s1", pixel_sha256="p1",
                                                  phash=to_signed(h)))
    time.sleep(0.25)
    assert [i for i, _ in reader.near("alpha", "q", h, 4)] == ["slow"]


def test_one_undecodable_image_fails_alone_and_deleted_images_leave_nothing(tmp_path) -> None:
    from actors.dedup import dedup_batch
    from deeplens.settings import Settings
    from deeplens.stage_sdk import Envelope
    from deeplens.storage import LocalStorage
    from deeplens.tombstones import Tombstones

    url = f"sqlite:///{tmp_path}/catalog.db"
    index, tombstones = HashIndex(url), Tombstones(url)
    store = LanceStore(tmp_path / "v", VectorStoreSettings())
    storage = LocalStorage(tmp_path / "images")
    good, gone = jpeg_bytes(scene(11)), jpeg_bytes(scene(12))
    events = [processed("good", good, np.ones(4)), processed("bad", b"\xff\xd8garbage", np.ones(4)),
              processed("gone", gone, np.ones(4))]
    for event, data in zip(events, (good, b"\xff\xd8garbage", gone), strict=True):
        storage.put(event.storage_path, data)
    tombstones.bury("alpha", "gone")
    batch = [Envelope(topic="images.processed", partition=0, offset=i, key=e.image_id,
                      timestamp=None, event=e) for i, e in enumerate(events)]
    out = dedup_batch(Settings(data_dir=tmp_path), storage, index, store, tombstones, batch)
    by_id = {o.event.image_id: o for o in out}
    assert set(by_id) == {"good", "bad"}
    assert by_id["good"].topic == "duplicates.found"
    assert by_id["bad"].topic == "images.failed"
    assert by_id["bad"].event.reason == "dedup_error" and by_id["bad"].event.stage == "dedup"
    assert index.exact("alpha", "q", events[2].sha256, content_hashes(gone)[0]) == []


def test_hashes_from_the_embedder_give_the_same_tiers_and_dedup_reads_no_bytes(tmp_path) -> None:
    """The decode-once path: the Embedder's DALI decode yields the hashes, version-2 events
    carry them, and dedup answers exact for a pixel-identical re-save, near for a re-encode
    and a resize, nothing for another picture, without touching storage."""
    from actors.dedup import dedup_batch
    from actors.embedding_feeder import processed_event
    from deeplens.settings import ModelSettings, Settings
    from deeplens.stage_sdk import Envelope
    from deeplens.tombstones import Tombstones
    from serve_apps.decode import make_decoder
    from serve_apps.embed_batch import embed_items
    from serve_apps.model import load_clip

    class NoReads:
        def get(self, path):
            raise AssertionError(f"dedup read {path}")

    clip = load_clip(ModelSettings(name="deeplens-tiny", pretrained="random"), device="cpu")
    decoder = make_decoder("dali", clip=clip, max_batch_size=8)
    original = jpeg_bytes(scene(13))
    half = io.BytesIO()
    Image.open(io.BytesIO(original)).resize((128, 128)).save(half, "JPEG", quality=85)
    uploads = {"a": original, "b": resave_without_metadata(original),
               "c": jpeg_bytes(Image.open(io.BytesIO(original)), quality=35),
               "d": half.getvalue(), "e": jpeg_bytes(scene(14))}
    results = embed_items(clip, decoder, list(uploads.values()), [True] * len(uploads))
    url = f"sqlite:///{tmp_path}/catalog.db"
    index, tombstones = HashIndex(url), Tombstones(url)
    store = LanceStore(tmp_path / "v", VectorStoreSettings())
    found = {}
    for offset, ((image_id, data), result) in enumerate(zip(uploads.items(), results, strict=True)):
        event = processed_event(processed(image_id, data, np.ones(4)), result, None)
        assert event.schema_version == 2 and event.phash and event.pixel_fingerprint
        env = Envelope(topic="images.processed", partition=0, offset=offset, key=image_id,
                       timestamp=None, event=event)
        [out] = dedup_batch(Settings(data_dir=tmp_path), NoReads(), index, store, tombstones,
                            [env])
        found[image_id] = {(m.image_id, m.kind) for m in out.event.matches}
    assert found["b"] == {("a", "exact")}
    assert ("a", "near") in found["c"] and ("a", "near") in found["d"]
    assert found["e"] == set()


def test_crops_and_rotations_of_a_real_photo_are_near_and_other_photos_are_not(tmp_path) -> None:
    """Hashes as the Embedder makes them (its DALI decode): copies cropped by up to 15 % a
    side or rotated by up to 5 degrees link as near; the photo's own quarters, different
    pictures of the same scene, link to nothing."""
    from deeplens.image_hashes import window_hashes
    from deeplens.settings import ModelSettings
    from serve_apps.decode import make_decoder
    from serve_apps.model import load_clip
    from tests.images import encode, quadrants, real_photos

    photo = real_photos()["china"]
    w, h = photo.size
    copies = {
        "crop 15% left and top": photo.crop((int(0.15 * w), int(0.15 * h), w, h)),
        "crop 12% all round": photo.crop((int(0.12 * w), int(0.12 * h),
                                          w - int(0.12 * w), h - int(0.12 * h))),
        "rotate 5": photo.rotate(5, Image.Resampling.BICUBIC),
        "rotate -4": photo.rotate(-4, Image.Resampling.BICUBIC),
    }
    others = dict(enumerate(quadrants(photo)))
    uploads = {"original": photo, **copies, **{f"quarter {k}": q for k, q in others.items()}}
    clip = load_clip(ModelSettings(name="deeplens-tiny", pretrained="random"), device="cpu")
    decoded = make_decoder("dali", clip=clip, max_batch_size=16).decode(
        [encode(img, "JPEG", quality=90) for img in uploads.values()])
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    limits = DedupThresholds()
    found, plain_hits = {}, set()
    for name, d in zip(uploads, decoded, strict=True):
        windows = window_hashes(d.hash_image)
        index.add("alpha", name, name, name, int(windows[0]), windows)
        found[name] = {other for other, _ in index.near(
            "alpha", name, int(windows[0]), limits.near_max_distance, windows,
            limits.near_window_max_distance)}
        plain = index.near("alpha", name, int(windows[0]), limits.near_max_distance)
        if "original" in {o for o, _ in plain}:
            plain_hits.add(name)
    assert not {n for n in copies if n.startswith("crop")} <= plain_hits, \
        "the whole-image pHash alone already caught every crop: the test shows nothing"
    for name in copies:
        assert "original" in found[name], (name, found[name])
    for k in others:
        assert found[f"quarter {k}"] == set(), (k, found[f"quarter {k}"])


def test_matches_per_image_are_capped_strongest_first(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    store = LanceStore(tmp_path / "v", VectorStoreSettings())
    original = jpeg_bytes(scene(15))
    vec = np.ones(8) / np.sqrt(8)
    copies = {"b": resave_without_metadata(original),
              "c": jpeg_bytes(Image.open(io.BytesIO(original)), quality=40),
              "d": jpeg_bytes(Image.open(io.BytesIO(original)), quality=60)}
    for image_id, data in copies.items():
        find_duplicates(processed(image_id, data, vec), content_hashes(data), index, store,
                        DedupThresholds())
    found = find_duplicates(processed("a", original, vec), content_hashes(original), index,
                            store, DedupThresholds(max_matches=2))
    assert len(found.matches) == 2
    assert found.matches[0].image_id == "b" and found.matches[0].kind == "exact"


def test_an_image_with_malformed_window_hashes_fails_alone_in_a_batched_look_up(tmp_path) -> None:
    """The batch's near look-ups run in one pass; an event whose window hashes have the
    wrong count fails by itself, and the rest of its batch still link."""
    import base64

    from actors.dedup import dedup_batch
    from deeplens.settings import Settings
    from deeplens.stage_sdk import Envelope
    from deeplens.tombstones import Tombstones

    original = jpeg_bytes(scene(21))
    copy = jpeg_bytes(Image.open(io.BytesIO(original)), quality=35)
    events = []
    for image_id, data, count in (("a", original, None), ("b", copy, None),
                                  ("bad", jpeg_bytes(scene(22)), 3)):
        fingerprint, phash, windows = content_hashes(data)
        windows = windows[:count] if count else windows
        events.append(processed(image_id, data, np.ones(4)).model_copy(update={
            "pixel_fingerprint": fingerprint, "phash": f"{phash:016x}",
            "window_hashes": base64.b64encode(windows.astype(">u8").tobytes()).decode()}))
    url = f"sqlite:///{tmp_path}/catalog.db"
    batch = [Envelope(topic="images.processed", partition=0, offset=i, key=e.image_id,
                      timestamp=None, event=e) for i, e in enumerate(events)]
    out = dedup_batch(Settings(data_dir=tmp_path), None, HashIndex(url),
                      LanceStore(tmp_path / "v", VectorStoreSettings()), Tombstones(url), batch)
    by_id = {o.event.image_id: o for o in out}
    assert by_id["bad"].topic == "images.failed"
    assert "3 window hashes" in by_id["bad"].event.message
    assert [(m.image_id, m.kind) for m in by_id["b"].event.matches] == [("a", "near")]
    assert [(m.image_id, m.kind) for m in by_id["a"].event.matches] == [("b", "near")]
