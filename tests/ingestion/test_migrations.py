"""The catalog schema comes from Alembic migrations, on SQLite and on PostgreSQL: a fresh
database, one made before migrations, and several processes starting at once."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import sqlalchemy as sa

from deeplens.db import current_revision, make_engine
from ingestion.catalog import Catalog
from ingestion.lifecycle import Changes

HEAD = "0008"


def test_a_fresh_database_gets_every_table_and_hot_index(catalog_url) -> None:
    Catalog(catalog_url)
    engine = make_engine(catalog_url)
    assert current_revision(engine) == HEAD
    inspector = sa.inspect(engine)
    assert {"images", "duplicates", "usage_hourly", "usage_seen", "image_hashes",
            "deleted_images"} <= set(inspector.get_table_names())
    indexes = {i["name"] for t in ("images", "duplicates", "image_hashes", "deleted_images")
               for i in inspector.get_indexes(t)}
    assert {"ix_images_tenant_uploaded", "ix_images_tenant_status", "ix_duplicates_tenant_other",
            "ix_hashes_tenant_seq", "ix_deleted_at"} <= indexes


def test_the_mapped_classes_describe_the_migrated_schema(catalog_url) -> None:
    from ingestion.tables import metadata

    Catalog(catalog_url)
    inspector = sa.inspect(make_engine(catalog_url))
    for table in metadata.sorted_tables:
        migrated = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(migrated) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert migrated[column.name]["nullable"] == (column.nullable and not column.primary_key), \
                (table.name, column.name)
        assert set(inspector.get_pk_constraint(table.name)["constrained_columns"]) == \
            {c.name for c in table.primary_key.columns}, table.name


def test_a_catalog_from_before_migrations_is_upgraded_in_place(catalog_url) -> None:
    old = sa.create_engine(catalog_url)
    with old.begin() as conn:  # the shape an early DeepLens made with create_all
        conn.execute(sa.text(
            "CREATE TABLE images (image_id VARCHAR(64) PRIMARY KEY, tenant_id VARCHAR(64) NOT "
            "NULL, sha256 VARCHAR(64) NOT NULL, original_file_name VARCHAR(512) NOT NULL, "
            "storage_provider VARCHAR(16) NOT NULL, storage_path VARCHAR(512) NOT NULL, "
            "file_size BIGINT NOT NULL, mime_type VARCHAR(64) NOT NULL, status VARCHAR(16) NOT "
            "NULL, stage VARCHAR(16), failure_reason VARCHAR(32), failure_message TEXT, "
            "width INTEGER, height INTEGER, format VARCHAR(8), feature_model VARCHAR(128), "
            "uploaded_at TIMESTAMP WITH TIME ZONE NOT NULL, validated_at TIMESTAMP WITH TIME "
            "ZONE, processed_at TIMESTAMP WITH TIME ZONE, indexed_at TIMESTAMP WITH TIME ZONE, "
            "failed_at TIMESTAMP WITH TIME ZONE, "
            "CONSTRAINT uq_images_tenant_sha256 UNIQUE (tenant_id, sha256))"))
        conn.execute(sa.text(
            "INSERT INTO images (image_id, tenant_id, sha256, original_file_name, "
            "storage_provider, storage_path, file_size, mime_type, status, uploaded_at) VALUES "
            "('kept', 'acme', 'x', 'k.jpg', 'local', 'acme/k.jpg', 1, 'image/jpeg', 'indexed', "
            ":at)"), {"at": datetime(2026, 1, 1, tzinfo=UTC)})
    old.dispose()
    catalog = Catalog(catalog_url)
    assert current_revision(catalog.engine) == HEAD
    row = catalog.get("acme", "kept")
    assert row is not None and row.status == "indexed"
    assert row.dedup_tiers is None and row.pending is None  # the columns added since
    catalog.apply(Changes(links=[("acme", "kept", ["exact"], [])]))
    assert catalog.get("acme", "kept").dedup_tiers == "exact"


def test_processes_starting_at_once_migrate_once(catalog_url) -> None:
    script = ("import sys; from ingestion.catalog import Catalog; "
              "from deeplens.hash_index import HashIndex; from deeplens.tombstones import "
              "Tombstones; u = sys.argv[1]; Catalog(u); HashIndex(u); Tombstones(u); "
              "print('ok')")
    runs = [subprocess.Popen([sys.executable, "-c", script, catalog_url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
    outcomes = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], [err[-800:] for _, err in outcomes]
    assert current_revision(make_engine(catalog_url)) == HEAD
