"""A model change's Serve applications: the target model runs as an application of its
own (``deeplens.serve_names.model_app_name``), on its own replicas, beside the
configured Embedder, which keeps serving uploads and searches meanwhile."""

from __future__ import annotations

from typing import Any

from deeplens.settings import ModelSettings, Settings


def target_settings(settings: Settings, migration: Any) -> ModelSettings:
    """The target model's settings: the migration's architecture, weights and seed, the
    rest (precision, downloads) as configured."""
    return settings.model.model_copy(update={
        "name": migration.target_name, "pretrained": migration.target_pretrained,
        "random_seed": migration.target_seed})


def parse_target(text: str, settings: Settings) -> ModelSettings:
    """``ARCH/PRETRAINED[/SEED]`` as model settings (SEED for random weights)."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--to takes ARCH/PRETRAINED[/SEED], not {text!r}")
    if len(parts) == 3 and not parts[2].isdigit():
        raise ValueError(f"the seed in {text!r} is not a whole number")
    return settings.model.model_copy(update={
        "name": parts[0], "pretrained": parts[1],
        "random_seed": int(parts[2]) if len(parts) == 3 else settings.model.random_seed})


def deploy_model_app(settings: Settings, model: ModelSettings, replicas: int = 1) -> str:
    """Deploy ``model`` as its own Serve application (blocks until it runs); its name."""
    from ray import serve

    from deeplens.serve_names import model_app_name
    from serve_apps.embedder import build_embedder
    from serve_apps.model import model_identity

    app = model_app_name(model_identity(model))
    cfg = settings.model_copy(update={
        "model": model, "serve": settings.serve.model_copy(update={"replicas": replicas})})
    serve.run(build_embedder(cfg), name=app, route_prefix=None)
    return app


def delete_model_app(model_id: str) -> None:
    """Remove a model's own application (after ``deeplens model finish``), if it runs."""
    from ray import serve

    from deeplens.serve_names import model_app_name

    try:
        serve.delete(model_app_name(model_id))
    except Exception:  # noqa: BLE001 - not deployed: nothing to remove
        pass
