"""The Ray and Serve plumbing around the scaling controller: its name (``deeplens
scale`` and the metrics find it by it, in the stack's Ray namespace), and the
Embedder's replica count through Serve's external-scaler API."""

from __future__ import annotations

from typing import Any

from deeplens.settings import Settings

EMBEDDER = "embedder"  # the scaled name of the Embedder (`deeplens scale embedder N`)
ACTOR_TIMEOUT_S = 2.0


def controller_name(settings: Settings) -> str:
    return f"{settings.kafka.topic_prefix}scaling-controller"


def find_controller(settings: Settings) -> Any:
    """The running controller's handle (raises ValueError when there is none)."""
    import ray

    return ray.get_actor(controller_name(settings))


def embedder_busy() -> float | None:
    """One replica's model-busy fraction over its last window (None if none answers)."""
    from deeplens.serve_names import embedder_handle

    try:
        stats = embedder_handle().stats.remote().result(timeout_s=ACTOR_TIMEOUT_S)
        return float(stats.get("busy_fraction", 0.0))
    except Exception:  # noqa: BLE001 - no replica, or busy: only for the reason text
        return None


def set_embedder_replicas(count: int) -> None:
    """Serve's external-scaler API: a count-only change, no replica restarted."""
    import ray
    from ray.serve._private.common import DeploymentID
    from ray.serve.context import _get_global_client

    from deeplens.serve_names import EMBEDDER_APP, EMBEDDER_DEPLOYMENT

    controller = _get_global_client()._controller
    ray.get(controller.update_deployment_replicas.remote(
        DeploymentID(name=EMBEDDER_DEPLOYMENT, app_name=EMBEDDER_APP), count), timeout=30)
