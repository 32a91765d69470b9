"""Usage counted per tenant per batch: the folded events bill exactly what the
per-image events billed, and a redelivered batch of another composition bills nothing
twice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from deeplens.settings import Settings
from deeplens.stage_sdk import envelope_of, usage_event
from deeplens.usage_batch import fold_usage
from ingestion.catalog import Catalog
from ingestion.usage import build_handler

NS = uuid.UUID("6f1c1f3e-3a0f-4d8e-9d7e-4d6c2b1a0f11")
AT = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)


def per_image(ids: range, tenant: str = "acme") -> list:
    return [usage_event(tenant, metric, quantity, image_id=f"{tenant}{i}", namespace=NS,
                        occurred_at=AT)
            for i in ids for metric, quantity in (("uploads", 1), ("upload_bytes", 1000 + i),
                                                  ("images_embedded", 1))]


def count(tmp_path, name: str, batches: list[list]) -> dict:
    settings = Settings(data_dir=tmp_path / name)
    settings.data_dir.mkdir()
    handle = build_handler(settings)
    for outputs in batches:
        handle([envelope_of(out.event, topic="tenant.usage", partition=0, offset=n, key=None,
                            timestamp=None, headers={}) for n, out in enumerate(outputs)])
    return Catalog(settings.effective_catalog_url).usage("acme", AT.replace(minute=0))


def test_folded_usage_has_the_same_totals_and_never_bills_twice(tmp_path) -> None:
    folded = fold_usage(per_image(range(10)) + per_image(range(3), tenant="other"))
    assert len(folded) == 6  # three metrics for each of two tenants
    expected = {AT.replace(minute=0): {"uploads": 10, "upload_bytes": 10045,
                                       "images_embedded": 10}}
    assert count(tmp_path, "one-by-one", [per_image(range(10))]) == expected
    # folded, then redelivered in batches of another composition (a rebalance)
    again = [fold_usage(per_image(range(0, 6))), fold_usage(per_image(range(4, 10)))]
    assert count(tmp_path, "folded", [folded, *again]) == expected


def test_an_image_deleted_before_its_embedding_is_not_billed_for_it(tmp_path) -> None:
    from deeplens.tombstones import Tombstones

    settings = Settings(data_dir=tmp_path / "d")
    settings.data_dir.mkdir()
    Tombstones(settings.effective_catalog_url).bury("acme", "acme2")
    handle = build_handler(settings)
    folded = fold_usage(per_image(range(4)))
    handle([envelope_of(out.event, topic="tenant.usage", partition=0, offset=n, key=None,
                        timestamp=None, headers={}) for n, out in enumerate(folded)])
    totals = Catalog(settings.effective_catalog_url).usage("acme", AT.replace(minute=0))
    assert totals[AT.replace(minute=0)] == {"uploads": 4, "upload_bytes": 4006,
                                            "images_embedded": 3}
