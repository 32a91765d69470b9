"""The names of DeepLens' Ray Serve applications, and a handle to the Embedder.

They live in the shared core because the stage actors (``actors/``, which may import
only ``deeplens``) call the Embedder as well as the gateway, the stack and the metrics
in ``cluster/``; ``serve_apps`` builds the deployments under these names.
"""

from __future__ import annotations

from typing import Any

EMBEDDER_APP = "embedder"
EMBEDDER_DEPLOYMENT = "Embedder"
GATEWAY_APP = "gateway"


def embedder_handle() -> Any:
    """A handle to the running Embedder deployment (raises if Serve or the app is not up)."""
    from ray import serve

    return serve.get_deployment_handle(EMBEDDER_DEPLOYMENT, app_name=EMBEDDER_APP)
