"""One file of every variant cameras and editors write goes all the way to ``indexed``
through the real stack (issue 23, item 1): broker, stage actors, Embedder, catalog."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests import images
from tests.cluster.test_end_to_end import client, stack, wait_indexed  # noqa: F401 - fixture

KINDS = sorted(images.camera_formats())
MIME = {"png": "image/png", "webp": "image/webp"}
# Mean absolute difference in 8-bit levels between the served thumbnail and the picture:
# lossy encodings, a palette and the thumbnail's own JPEG stay under it; another picture
# (an MPO's second), a channel mix-up or a 16-bit grey clipped to white are far over.
LEVELS = 16


def test_every_camera_variant_is_indexed_with_a_true_thumbnail(stack) -> None:  # noqa: F811
    acme = client(stack, "key-acme-0123456789ab")
    uploads: dict[str, str] = {}
    pictures: dict[str, np.ndarray] = {}
    for seed, kind in enumerate(KINDS, start=500):  # a different picture for each kind
        data = images.camera_formats(seed, 160, 120)[kind]
        answer = acme.post("/v1/images", files={"file": (f"{kind}.img", data)})
        assert answer.status_code == 202, (kind, answer.text)
        uploads[kind] = answer.json()["image_id"]
        picture = images.photo(160, 120, seed)
        pictures[kind] = np.asarray(picture.convert("L").convert("RGB") if "grey" in kind
                                    else picture, dtype=np.float64)

    rows = wait_indexed(acme, list(uploads.values()))
    by_kind = {kind: rows[image_id] for kind, image_id in uploads.items()}
    assert {k: r["status"] for k, r in by_kind.items()} == dict.fromkeys(KINDS, "indexed"), \
        {k: (r["status"], r["failure_reason"], r["failure_message"]) for k, r in by_kind.items()}
    for kind, row in by_kind.items():
        assert row["mime_type"] == next((v for k, v in MIME.items() if k in kind),
                                        "image/jpeg"), kind
        thumb = acme.get(f"/v1/images/{uploads[kind]}/thumbnail")
        assert thumb.status_code == 200, kind
        shown = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB"), np.float64)
        assert shown.shape == pictures[kind].shape, kind  # upright, first picture, RGB
        assert np.abs(shown - pictures[kind]).mean() < LEVELS, kind

    # Each one is found by its own picture.
    query = images.camera_formats(500 + KINDS.index("mpo"), 160, 120)["progressive_jpeg"]
    hits = acme.post("/v1/search/image", files={"file": ("q.jpg", query)}).json()["hits"]
    assert hits[0]["image_id"] == uploads["mpo"]
