"""Every string column of the migrated catalog, on PostgreSQL, is wide enough for the
widest value the code writes to it.

SQLite ignores ``VARCHAR(n)``; PostgreSQL refuses a longer value. A 68-character pixel
fingerprint in a 64-character column made dedup fail every image on PostgreSQL while
every SQLite test stayed green. Here each column's values come from the code that makes
them (the event Literals, the fingerprint function, the id and path builders), and a
string column that nobody declared below fails the test, so a new column must say what
goes into it.
"""

from __future__ import annotations

import typing
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from deeplens.events import DuplicateKind, FailureReason, ImageStatus, Stage, UsageMetric
from deeplens.formats import ALLOWED
from deeplens.image_hashes import fingerprint_of
from deeplens.settings import ModelSettings, StorageSettings
from deeplens.storage import object_path, thumbnail_path
from tests.ingestion.test_migrations import HEAD

LONGEST_TENANT = "t" * 64  # deeplens.api_keys allows up to 64
IMAGE_ID = uuid.uuid4().hex  # ingestion/routes_upload.py


def _literal(kind: object) -> list[str]:
    return list(typing.get_args(kind))


def _widest_values() -> dict[tuple[str, str], list[str]]:
    from deeplens.sources import MAX_SOURCE_LENGTH
    from ingestion.import_jobs import job_id_of
    from serve_apps.model import model_identity

    widest_path = object_path(LONGEST_TENANT, IMAGE_ID, max((f.extension for f in ALLOWED), key=len))
    tiers = ",".join(_literal(DuplicateKind))
    ids = {"tenant_id": [LONGEST_TENANT], "image_id": [IMAGE_ID]}
    return {
        **{(table, column): values for table in ("images", "image_hashes", "deleted_images")
           for column, values in ids.items()},
        ("duplicates", "tenant_id"): [LONGEST_TENANT],
        ("duplicates", "image_id"): [IMAGE_ID],
        ("duplicates", "other_id"): [IMAGE_ID],
        ("duplicates", "kind"): _literal(DuplicateKind),
        ("images", "sha256"): ["f" * 64],
        ("images", "original_file_name"): ["n" * 512],  # routes_upload keeps the first 512
        ("images", "storage_provider"): [*_literal(
            StorageSettings.model_fields["provider"].annotation), "file", "tar"],  # imports
        # an import's reference longer than the column is refused (bulk_import._stage)
        ("images", "storage_path"): [widest_path, thumbnail_path(widest_path)],
        ("images", "mime_type"): [f.mime_type for f in ALLOWED],
        ("images", "status"): _literal(ImageStatus),
        ("images", "stage"): _literal(Stage),
        ("images", "failure_reason"): _literal(FailureReason),
        ("images", "format"): [f.name for f in ALLOWED],
        ("images", "feature_model"): [model_identity(ModelSettings()),
                                      model_identity(ModelSettings(pretrained="random"))],
        ("images", "dedup_tiers"): [tiers, "failed"],
        ("image_hashes", "sha256"): ["f" * 64],
        ("image_hashes", "pixel_sha256"): [
            fingerprint_of(np.zeros((3, 4, 3), dtype=np.uint8))],
        ("usage_hourly", "tenant_id"): [LONGEST_TENANT],
        ("usage_hourly", "metric"): _literal(UsageMetric),
        ("usage_seen", "event_id"): [str(uuid.uuid4())],
        ("import_jobs", "job_id"): [job_id_of(LONGEST_TENANT, "s" * MAX_SOURCE_LENGTH, True)],
        ("import_jobs", "tenant_id"): [LONGEST_TENANT],
        ("import_jobs", "source"): ["s" * MAX_SOURCE_LENGTH],  # parse_source refuses longer
        ("import_jobs", "state"): ["running", "cancelled", "done", "failed"],
        **_model_change_values(),
    }


def _model_change_values() -> dict[tuple[str, str], list[str]]:
    """deeplens/model_catalog.py: migration ids are uuid4 hex, states its own list."""
    from deeplens.model_catalog import SLOT, UNFINISHED
    from serve_apps.model import model_identity

    models = [model_identity(ModelSettings()), "m" * 128]  # model_identity refuses longer
    return {
        ("model_migrations", "migration_id"): [uuid.uuid4().hex],
        ("model_migrations", "source_model"): models,
        ("model_migrations", "target_model"): models,
        ("model_migrations", "target_name"): ["n" * 128],  # the model id holds it
        ("model_migrations", "target_pretrained"): ["laion2b_s34b_b79k"],
        ("model_migrations", "state"): [*UNFINISHED, "finished"],
        ("model_migration_tenants", "migration_id"): [uuid.uuid4().hex],
        ("model_migration_tenants", "tenant_id"): [LONGEST_TENANT],
        ("model_migration_tenants", "cursor_id"): [IMAGE_ID],
        ("active_model", "slot"): [SLOT],
        ("active_model", "model_id"): models,
    }


@pytest.fixture
def postgres_catalog(postgres_server_url) -> str:
    from ingestion.catalog import Catalog
    from tests.postgres import fresh_database

    url = fresh_database(postgres_server_url)
    Catalog(url)  # migrates to head
    return url


def test_every_string_column_fits_what_the_code_writes(postgres_catalog) -> None:
    from deeplens.db import make_engine

    inspector = sa.inspect(make_engine(postgres_catalog))
    widest = _widest_values()
    too_narrow, undeclared = [], []
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        for column in inspector.get_columns(table):
            if not isinstance(column["type"], sa.String) or column["type"].length is None:
                continue  # TEXT and non-string columns have no width to outgrow
            values = widest.get((table, column["name"]))
            if values is None:
                undeclared.append(f"{table}.{column['name']}")
                continue
            longest = max(values, key=len)
            if len(longest) > column["type"].length:
                too_narrow.append(f"{table}.{column['name']} VARCHAR({column['type'].length}) "
                                  f"< {len(longest)} ({longest[:40]!r}...)")
    assert not undeclared, f"say in _widest_values what the code writes to {undeclared}"
    assert not too_narrow, too_narrow


def test_dedup_stores_and_finds_a_pixel_fingerprint_on_postgresql(postgres_catalog) -> None:
    """What failed for every image on PostgreSQL: the hash row of a real fingerprint."""
    from deeplens.hash_index import HashIndex

    pixels = fingerprint_of(np.full((8, 8, 3), 7, dtype=np.uint8))
    assert len(pixels) > 64
    index = HashIndex(postgres_catalog)
    index.add("acme", "first", "a" * 64, pixels, 0x0123456789ABCDEF)
    assert index.exact("acme", "second", "b" * 64, pixels) == ["first"]


def test_a_0003_catalog_on_postgresql_is_widened_in_place(postgres_server_url) -> None:
    """An operator's catalog at 0003 holding hash rows: upgraded to head, its rows kept,
    and a fingerprint that 0003 refused then fits."""
    from alembic import command
    from alembic.config import Config

    from deeplens.db import MIGRATIONS, current_revision, make_engine
    from deeplens.hash_index import HashIndex, image_hashes
    from tests.postgres import fresh_database

    url = fresh_database(postgres_server_url)
    engine = sa.create_engine(url)  # not make_engine: that migrates to head at once
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
        conn.execute(image_hashes.insert().values(
            tenant_id="acme", image_id="old", sha256="c" * 64, pixel_sha256="d" * 64, phash=1))
    with pytest.raises(sa.exc.DataError), engine.begin() as conn:  # what 0003 did to dedup
        conn.execute(image_hashes.insert().values(
            tenant_id="acme", image_id="new", sha256="e" * 64, pixel_sha256="px1:" + "e" * 64,
            phash=2))
    engine.dispose()

    index = HashIndex(url)  # starts the way a dedup actor does: migrates to head
    assert current_revision(make_engine(url)) == HEAD
    index.add("acme", "new", "e" * 64, "px1:" + "e" * 64, 2)
    assert index.exact("acme", "x", "c" * 64, "unrelated") == ["old"]
    assert index.exact("acme", "y", "unrelated", "px1:" + "e" * 64) == ["new"]


def test_a_model_id_longer_than_its_column_is_refused_at_start() -> None:
    from deeplens.settings import ModelSettings
    from serve_apps.model import MODEL_ID_WIDTH, model_identity

    fits = ModelSettings(name="ViT-B-32", pretrained="p" * (MODEL_ID_WIDTH - len("ViT-B-32/")))
    assert len(model_identity(fits)) == MODEL_ID_WIDTH
    with pytest.raises(ValueError, match="DEEPLENS_MODEL__PRETRAINED"):
        model_identity(ModelSettings(name="ViT-B-32", pretrained="p" * MODEL_ID_WIDTH))
