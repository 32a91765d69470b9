"""Settings of the scaling controller (``DEEPLENS_SCALING__*``): how lag becomes stage
actors and queued images become Embedder replicas, and how eagerly.

The defaults follow the common anchors: KEDA's Kafka scaler polls every 30 s; Ray
Serve waits 30 s before adding replicas and 600 s before removing them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ScalingSettings(BaseModel):
    """The controller ``deeplens up`` starts; ``deeplens scale`` pins override it."""

    enabled: bool = Field(True, description="Run the scaling controller (off: the counts of "
                          "ACTORS__* and SERVE__REPLICAS stay as started)")
    interval_s: float = Field(30.0, gt=0, description="How often lag and queues are read "
                              "(KEDA's Kafka scaler polls every 30 s)")
    lag_per_actor: int = Field(
        256, ge=1, description="Uncommitted messages one stage actor is expected to carry: "
        "a stage wants ceil(lag / this) actors, between its ACTORS__* count and its topic's "
        "partitions (KEDA's lagThreshold)")
    drain_target_s: float = Field(
        60.0, ge=0, description="No actor is added while the stage's own rate would drain "
        "its lag within this many seconds")
    queued_images_per_replica: int = Field(
        128, ge=1, description="Images waiting for the Embedder (the embedding stage's lag) "
        "one replica is expected to carry: SERVE__REPLICAS .. SERVE__AUTOSCALE_MAX_REPLICAS")
    upscale_delay_s: float = Field(30.0, ge=0, description="How long more is wanted before "
                                   "it is added (Serve's default: 30 s)")
    downscale_delay_s: float = Field(600.0, ge=0, description="How long less is wanted "
                                     "before anything is removed (Serve's default: 600 s)")
    tolerance: float = Field(
        0.1, ge=0, lt=1, description="Hysteresis band: fewer actors or replicas are wanted "
        "only once the lag is this fraction below what the smaller count carries")
    max_actors: int = Field(0, ge=0, description="Cap on actors per stage; 0: the partitions")
