"""Listing a large tenant page by page counts its images once, not once per page."""

from __future__ import annotations

from ingestion.catalog import Catalog
from ingestion.routes_images import TenantCounts
from tests.ingestion.test_catalog import row


def test_paging_through_a_tenant_counts_it_once(tmp_path, monkeypatch) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    for i in range(30):
        catalog.insert(row(f"img{i:02d}"))
    counted = []
    real = catalog.counts
    monkeypatch.setattr(catalog, "counts", lambda t=None: counted.append(t) or real(t))
    counts = TenantCounts(max_age_s=3600)
    after, pages = None, 0
    while True:
        page = catalog.list("acme", limit=5, after=after)
        assert counts.get(catalog, "acme") == {"uploaded": 30}
        pages += 1
        if len(page) < 5:
            break
        after = page[-1].image_id
    assert pages == 7 and counted == ["acme"]
    assert counts.get(catalog, "other") == {} and counted == ["acme", "other"]


def test_counts_follow_the_tenant_once_they_are_older_than_their_bound(tmp_path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    counts = TenantCounts(max_age_s=0)
    catalog.insert(row("a"))
    assert counts.get(catalog, "acme") == {"uploaded": 1}
    catalog.insert(row("b"))
    assert counts.get(catalog, "acme") == {"uploaded": 2}
