"""The operator's side of a model change without a stack: the admin routes (token,
states as 409), ``deeplens model`` output, the Prometheus figures and the status lines,
on SQLite and on PostgreSQL."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cluster.model_metrics import ModelChangeCollector, print_model_change
from deeplens.migration_settings import MigrationSettings
from deeplens.model_catalog import ModelCatalog
from deeplens.settings import Settings
from deeplens.vectors.base import VectorRecord
from deeplens.vectors.factory import make_vector_store

A, B = "deeplens-tiny/random-init-seed0", "deeplens-tiny/random-init-seed1"
ADMIN = {"Authorization": "Bearer admin-0123456789"}


@pytest.fixture
def settings(tmp_path, catalog_url) -> Settings:
    return Settings(data_dir=tmp_path, catalog_url=catalog_url,
                    ops={"admin_token": "admin-0123456789"},
                    migration=MigrationSettings(finish_grace_s=0))


@pytest.fixture
def http(settings) -> TestClient:
    from cluster.model_routes import router

    app = FastAPI()
    app.state.services = SimpleNamespace(settings=settings)
    app.include_router(router)
    return TestClient(app)


def test_admin_routes_walk_a_change_and_refuse_what_does_not_apply(settings, http) -> None:
    assert http.get("/ops/model").status_code == 403
    assert http.get("/ops/model", headers={"Authorization": "Bearer key-of-a-tenant"}
                    ).status_code == 403
    assert http.get("/ops/model", headers=ADMIN).json()["migration"] is None
    assert http.post("/ops/model/cutover", headers=ADMIN).status_code == 409
    assert http.post("/ops/model/migrations", headers=ADMIN,
                     json={"to": "no-slash"}).status_code == 422
    catalog = ModelCatalog(settings.effective_catalog_url)
    mid = catalog.start(A, B, "deeplens-tiny", "random", 1).migration_id
    catalog.mark_deployed(mid)
    catalog.advance(mid, "acme", done=3, failed=0, total=10, cursor=None, complete=False)
    body = http.get("/ops/model", headers=ADMIN).json()
    assert body["migration"]["state"] == "backfilling"
    assert body["migration"]["tenants"][0] | {"rate_per_s": 0, "eta_s": 0} == {
        "tenant": "acme", "done": 3, "left": 7, "failed": 0, "percent": 30.0,
        "rate_per_s": 0, "eta_s": 0, "complete": False}
    refused = http.post("/ops/model/cutover", headers=ADMIN)
    assert refused.status_code == 409 and "not complete" in refused.json()["detail"]
    catalog.mark_ready(mid)
    assert http.post("/ops/model/cutover", headers=ADMIN).json()["active_model"] == B
    assert http.post("/ops/model/rollback", headers=ADMIN).json()["active_model"] == A
    assert http.post("/ops/model/cutover", headers=ADMIN).json()["active_model"] == B
    store = make_vector_store(settings)
    store.upsert(A, [VectorRecord("acme", "img1", np.ones(4, dtype="f4"), "a.jpg",
                                  catalog.get(mid).created_at)])  # type: ignore[union-attr]
    done = http.post("/ops/model/finish", headers=ADMIN).json()
    assert done["deleted_model"] == A and done["active_model"] == B
    assert make_vector_store(settings).count(A, "acme") == 0


def test_metrics_status_lines_and_the_cli(settings, monkeypatch, capsys) -> None:
    from deeplens.cli import main

    catalog = ModelCatalog(settings.effective_catalog_url)
    mid = catalog.start(A, B, "deeplens-tiny", "random", 1).migration_id
    catalog.mark_deployed(mid)
    catalog.advance(mid, "acme", done=4, failed=1, total=10, cursor=None, complete=False)
    families = {f.name: f for f in ModelChangeCollector(settings).collect()}
    assert families["deeplens_active_model"].samples[0].labels == {"model": A}
    assert families["deeplens_model_migration_percent"].samples[0].value == 50.0
    assert families["deeplens_model_migration_left"].samples[0].value == 5
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(ModelChangeCollector(settings))  # type: ignore[arg-type]
    print_model_change(generate_latest(registry).decode())
    lines = capsys.readouterr().out
    assert f"active model: {A}" in lines and "re-indexing 50.0 %" in lines
    assert "acme" in lines and "left 5" in lines

    monkeypatch.setenv("DEEPLENS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DEEPLENS_CATALOG_URL", settings.effective_catalog_url)
    assert main(["model", "status"]) == 0
    out = capsys.readouterr().out
    assert "backfilling" in out and "50.0 %" in out and "left 5" in out
    assert main(["model", "cutover"]) == 2  # not complete yet
    assert "not complete" in capsys.readouterr().err
    catalog.mark_ready(mid)
    assert main(["model", "cutover"]) == 0 and catalog.view().active == B
