"""The HTTP edge as a Ray Serve application: upload routes (and search routes) on one port."""

from __future__ import annotations

from typing import Any

from deeplens.settings import Settings


def build_gateway(settings: Settings) -> Any:
    """A Serve application whose FastAPI app is built on each replica from ``settings``."""
    from ray import serve

    def build_asgi_app() -> Any:
        from ingestion.api import create_app

        return create_app(settings)

    deployment = serve.deployment(
        serve.ingress(build_asgi_app)(),
        name="Gateway",
        num_replicas=1,
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": settings.actors.num_cpus},
    )
    return deployment.bind()
