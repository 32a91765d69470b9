"""A model change's record in the catalog, on SQLite and on PostgreSQL: states, the
one-row active model, per-tenant progress, and the view a Gateway caches."""

from __future__ import annotations

from datetime import timedelta

import pytest

from deeplens.model_catalog import MigrationRefused, ModelCatalog
from deeplens.model_view import CachedModelView

A, B = "deeplens-tiny/random-init-seed0", "deeplens-tiny/random-init-seed1"


def start(catalog: ModelCatalog):
    return catalog.start(A, B, "deeplens-tiny", "random", 1)


def test_a_migration_walks_its_states_and_switches_the_active_row(catalog_url) -> None:
    catalog = ModelCatalog(catalog_url)
    assert catalog.view().active is None and catalog.view().migration is None
    migration = start(catalog)
    assert (migration.state, catalog.view().active) == ("deploying", A)
    assert catalog.view().embed_with(A) == []  # no dual-write until the target app runs
    with pytest.raises(MigrationRefused):
        start(catalog)  # one at a time
    with pytest.raises(MigrationRefused, match="not complete"):
        catalog.cutover(migration.migration_id)
    assert catalog.mark_deployed(migration.migration_id)
    assert catalog.view().embed_with(A) == [B] and catalog.view().embed_with(B) == [A]
    assert catalog.mark_ready(migration.migration_id)
    assert catalog.cutover(migration.migration_id).state == "cut_over"
    assert catalog.view().active == B
    assert catalog.rollback(migration.migration_id).state == "rolled_back"
    assert catalog.view().active == A
    catalog.cutover(migration.migration_id)
    assert catalog.view().active == B
    with pytest.raises(MigrationRefused, match="grace"):
        catalog.finish(migration.migration_id, grace_s=3600)
    finished, old = catalog.finish(migration.migration_id, grace_s=0)
    assert (finished.state, old) == ("finished", A)
    view = catalog.view()
    assert view.active == B and view.migration is None and view.embed_with(B) == []
    # The next model change starts from the active one.
    with pytest.raises(MigrationRefused, match="already the active"):
        catalog.start(B, B, "deeplens-tiny", "random", 1)
    assert catalog.start(B, A, "deeplens-tiny", "random", 0).state == "deploying"


def test_a_rolled_back_migration_finishes_by_dropping_the_target(catalog_url) -> None:
    catalog = ModelCatalog(catalog_url)
    migration = start(catalog)
    catalog.rollback(migration.migration_id)  # abandoned while deploying
    assert catalog.view().active == A
    _, old = catalog.finish(migration.migration_id, grace_s=0)
    assert old == B


def test_progress_adds_up_and_resumes_from_its_cursor(catalog_url) -> None:
    from datetime import UTC, datetime

    catalog = ModelCatalog(catalog_url)
    mid = start(catalog).migration_id
    at = datetime(2026, 12, 1, 10, tzinfo=UTC)
    catalog.advance(mid, "acme", done=30, failed=2, total=100, cursor=(at, "img31"),
                    complete=False)
    catalog.advance(mid, "acme", done=20, failed=0, total=101,
                    cursor=(at + timedelta(seconds=1), "img51"), complete=False)
    catalog.advance(mid, "globex", done=0, failed=0, total=0, cursor=None, complete=True)
    acme, globex = catalog.progress(mid)
    assert (acme.tenant_id, acme.done, acme.failed, acme.total, acme.left) == (
        "acme", 50, 2, 101, 49)
    assert acme.cursor == (at + timedelta(seconds=1), "img51")
    assert 0 < acme.percent() < 100 and globex.percent() == 100 and globex.left == 0


def test_the_cached_view_is_re_read_once_its_time_is_up(catalog_url) -> None:
    now = [0.0]
    view = CachedModelView(catalog_url, ttl_s=1.0, clock=lambda: now[0])
    catalog = ModelCatalog(catalog_url)
    mid = start(catalog).migration_id
    catalog.mark_deployed(mid)
    catalog.mark_ready(mid)
    assert view().active == A
    catalog.cutover(mid)
    now[0] = 0.5
    assert view().active == A  # still the view of half a second ago
    now[0] = 1.0
    assert view().active == B
