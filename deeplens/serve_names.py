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


def running_embedder_replicas() -> int | None:
    """Embedder replicas RUNNING per the Serve controller (None if it cannot be asked):
    the feeders spread their calls over them, the scaling controller reports them."""
    from ray import serve

    try:
        app = serve.status().applications.get(EMBEDDER_APP)
    except Exception:  # noqa: BLE001 - controller unreachable: unknown, not zero
        return None
    deployment = app.deployments.get(EMBEDDER_DEPLOYMENT) if app else None
    states = deployment.replica_states if deployment else {}
    return int(sum(n for state, n in states.items() if str(state).endswith("RUNNING")))


def model_app_name(model_id: str) -> str:
    """The Serve application of a model other than the configured one (a model change's
    target, or the active model after one): ``embedder-<digest of its id>``."""
    import hashlib

    return f"{EMBEDDER_APP}-{hashlib.sha1(model_id.encode()).hexdigest()[:10]}"


def model_handle(model_id: str) -> Any:
    """A handle to the Embedder deployment of ``model_id``'s own application."""
    from ray import serve

    return serve.get_deployment_handle(EMBEDDER_DEPLOYMENT, app_name=model_app_name(model_id))
