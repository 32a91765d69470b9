"""The HTTP edge as a Ray Serve application: upload routes (and search routes) on one port."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from deeplens.settings import Settings


def build_gateway(settings: Settings) -> Any:
    """A Serve application whose FastAPI app is built on each replica from ``settings``."""
    from ray import serve

    def build_asgi_app() -> Any:
        from cluster.metrics import register_pipeline_metrics
        from cluster.stages import stage_specs
        from deeplens.model_view import CachedModelView
        from deeplens.serve_names import embedder_handle
        from deeplens.vectors.factory import make_search_store
        from ingestion.api import create_app
        from serve_apps.query_encoder import ActiveModelEncoder
        from serve_apps.search import HandleEncoder, mount_search

        app = create_app(settings)
        handle = embedder_handle()
        timeout_s = settings.serve.query_timeout_s
        encoder = ActiveModelEncoder(HandleEncoder(handle, timeout_s),
                                     CachedModelView(settings.effective_catalog_url), timeout_s)
        mount_search(app, make_search_store(settings), encoder,
                     producer=app.state.services.producer)
        collector = register_pipeline_metrics(
            settings, app.state.services.catalog,
            {spec.stage: count for spec, count in stage_specs(settings)})
        add_readiness(app, collector.watch)
        from cluster.model_metrics import register_model_metrics
        from cluster.model_routes import router as model_routes

        app.include_router(model_routes)  # /ops/model: a model change (admin token)
        register_model_metrics(settings)
        return app

    deployment = serve.deployment(
        serve.ingress(build_asgi_app)(),
        name="Gateway",
        num_replicas=settings.serve.gateway_replicas,
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": settings.actors.num_cpus,
                           **({"resources": settings.serve.gateway_resources}
                              if settings.serve.gateway_resources else {})},
    )
    return deployment.bind()


def add_readiness(app: Any, watch: Any) -> None:
    """``GET /readyz``: is the pipeline moving? 200 with ``state: ok``, or 503 with
    ``state: degraded`` and the reasons (a stage without a live actor, no Embedder
    replica, a node resource nobody offers). ``/healthz`` stays the cheap process check.
    Which nodes run each stage is shown to the operator only (as ``/metrics`` is).
    Upload answers carry the last verdict too (``pipeline``), without waiting for it."""
    from ingestion.routes_ops import operator_refusal

    app.state.services.pipeline = watch.note
    watch.note()  # the first poll starts now, not with the first upload

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "degraded, with reasons"}})
    def readyz(request: Request) -> JSONResponse:  # Request: a module name (annotations)
        report = watch.report()
        if operator_refusal(request, app.state.services.settings):
            for stage in report["stages"].values():
                stage.pop("nodes", None)
        degraded = report["state"] != "ok"
        return JSONResponse(report, status_code=503 if degraded else 200,
                            headers={"Retry-After": "10"} if degraded else {})
