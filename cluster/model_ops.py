"""The operator's steps of a model change, shared by ``deeplens model`` and the admin
routes (``/ops/model``): start (or resume) a migration, cut over, roll back, finish,
and what runs where after a restart (``ensure_model_apps``)."""

from __future__ import annotations

import logging
from typing import Any

from deeplens.model_catalog import Migration, MigrationRefused, ModelCatalog
from deeplens.model_view import summary
from deeplens.settings import ModelSettings, Settings

log = logging.getLogger(__name__)


def _catalog(settings: Settings) -> ModelCatalog:
    return ModelCatalog(settings.effective_catalog_url)


def _require_current(catalog: ModelCatalog) -> Migration:
    migration = catalog.current()
    if migration is None:
        raise MigrationRefused("no model change is under way (`deeplens model migrate`)")
    return migration


def describe(settings: Settings) -> dict[str, Any]:
    """The active model and the migration under way with every tenant's progress."""
    catalog = _catalog(settings)
    view = catalog.view()
    migration = view.migration
    return {"active_model": view.active, "auto_cutover": settings.migration.auto_cutover,
            "migration": summary(migration, catalog.progress(migration.migration_id))
            if migration else None}


def start_migration(settings: Settings, target: ModelSettings) -> dict[str, Any]:
    """Record a migration to ``target`` and set the backfill actor on it (it deploys the
    target's own Serve app first). The same target again resumes an unfinished one.
    Runs where torch may be imported (a Ray task): the model id needs it."""
    from cluster.model_backfill import launch_backfill
    from serve_apps.model import model_identity

    catalog = _catalog(settings)
    target_id = model_identity(target)
    current = catalog.current()
    if current is not None and current.target_model == target_id and \
            current.state in ("deploying", "backfilling"):
        migration = current  # resume: the actor goes on from each tenant's cursor
    else:
        source = catalog.view().active or model_identity(settings.model)
        migration = catalog.start(source, target_id, target.name, target.pretrained,
                                  target.random_seed)
    launch_backfill(settings, migration.migration_id)
    return describe(settings)


def start_remote(settings: Settings, target: ModelSettings) -> dict[str, Any]:
    """``start_migration`` in a Ray task (the caller may be a Gateway or the CLI)."""
    import ray

    task = ray.remote(num_cpus=0)(start_migration)
    try:
        return ray.get(task.remote(settings, target), timeout=120)  # type: ignore[no-any-return]
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, MigrationRefused | ValueError):
            raise MigrationRefused(str(exc.cause)) from None
        raise


def cutover(settings: Settings) -> dict[str, Any]:
    catalog = _catalog(settings)
    catalog.cutover(_require_current(catalog).migration_id)
    return describe(settings)


def rollback(settings: Settings) -> dict[str, Any]:
    catalog = _catalog(settings)
    catalog.rollback(_require_current(catalog).migration_id)
    return describe(settings)


def finish(settings: Settings, store: Any = None) -> dict[str, Any]:
    """End the migration after its grace period and delete the other model's vectors
    (and its own Serve app, unless it is the configured Embedder)."""
    from deeplens.vectors.factory import make_vector_store

    catalog = _catalog(settings)
    migration, old = catalog.finish(_require_current(catalog).migration_id,
                                    settings.migration.finish_grace_s)
    store = store or make_vector_store(settings)
    dropped = store.drop_model(old)
    log.info("model change %s finished; %s vectors deleted (%s)", migration.migration_id,
             old, "dropped" if dropped else "none stored")
    return describe(settings) | {"deleted_model": old}


def ensure_model_apps(settings: Settings, configured_model: str) -> list[str]:
    """After a (re)start: the active model's app when it is not the configured one, a
    migration's target app, and its backfill resumed. Returns the apps deployed."""
    from cluster.model_backfill import launch_backfill
    from serve_apps.model_apps import deploy_model_app, target_settings

    view = _catalog(settings).view()
    deployed = []
    migration = view.migration
    if migration is not None and migration.target_model != configured_model:
        deployed.append(deploy_model_app(settings, target_settings(settings, migration),
                                         settings.migration.target_replicas))
    if migration is not None and migration.state in ("deploying", "backfilling"):
        launch_backfill(settings, migration.migration_id)
    if view.active not in (None, configured_model) and (
            migration is None or view.active != migration.target_model):
        # A finished change to a model the settings do not name yet: its app again.
        earlier = _migration_to(settings, view.active)
        if earlier is not None:
            deployed.append(deploy_model_app(settings, target_settings(settings, earlier),
                                             settings.migration.target_replicas))
    return deployed


def _migration_to(settings: Settings, model_id: str) -> Migration | None:
    import sqlalchemy as sa

    from deeplens.model_catalog import model_migrations

    catalog = _catalog(settings)
    with catalog.engine.connect() as conn:
        found = conn.execute(sa.select(model_migrations.c.migration_id).where(
            model_migrations.c.target_model == model_id)
            .order_by(model_migrations.c.created_at.desc()).limit(1)).scalar()
    return catalog.get(found) if found else None


def start_model_apps(settings: Settings) -> list[str]:
    """``ensure_model_apps`` at a stack's start; nothing recorded, nothing done. A problem
    is logged, never fatal: the configured Embedder still serves."""
    try:
        view = _catalog(settings).view()
        if view.migration is None and view.active is None:
            return []
        from serve_apps.model import model_identity

        return ensure_model_apps(settings, model_identity(settings.model))
    except Exception:  # noqa: BLE001 - the stack starts; `deeplens model status` says more
        log.exception("model change: apps not resumed")
        return []


def stop_model_backfill() -> None:
    """Stop the detached backfill actor (it resumes from its cursor when started again)."""
    import ray

    from cluster.model_backfill import ACTOR_NAME, ACTOR_NAMESPACE

    if not ray.is_initialized():
        return
    try:
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=ACTOR_NAMESPACE), no_restart=True)
    except ValueError:  # none running
        pass
