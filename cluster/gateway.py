"""The HTTP edge as a Ray Serve application: upload routes (and search routes) on one port."""

from __future__ import annotations

from typing import Any

from deeplens.settings import Settings


def build_gateway(settings: Settings) -> Any:
    """A Serve application whose FastAPI app is built on each replica from ``settings``."""
    from ray import serve

    def build_asgi_app() -> Any:
        from cluster.metrics import register_pipeline_metrics
        from cluster.stages import stage_specs
        from deeplens.serve_names import embedder_handle
        from deeplens.vectors.factory import make_search_store
        from ingestion.api import create_app
        from serve_apps.search import HandleEncoder, mount_search

        app = create_app(settings)
        handle = embedder_handle()
        mount_search(app, make_search_store(settings), HandleEncoder(handle),
                     producer=app.state.services.producer)
        register_pipeline_metrics(settings, app.state.services.catalog,
                                  {spec.stage: count for spec, count in stage_specs(settings)})
        return app

    deployment = serve.deployment(
        serve.ingress(build_asgi_app)(),
        name="Gateway",
        num_replicas=settings.serve.gateway_replicas,
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": settings.actors.num_cpus},
    )
    return deployment.bind()
