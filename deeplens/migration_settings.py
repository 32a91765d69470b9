"""The model-change group of the settings (``DEEPLENS_MIGRATION__*``): how a change of
the embedding model backfills, when it cuts over, and how long the old vectors stay."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MigrationSettings(BaseModel):
    """``deeplens model migrate``: backfill, cutover and clean-up of a model change."""

    auto_cutover: bool = Field(
        False, description="Make the new model current as soon as every tenant's backfill "
        "is complete (off: wait for `deeplens model cutover`)")
    finish_grace_s: float = Field(
        86_400, ge=0, description="How long after the last cutover or rollback `deeplens "
        "model finish` refuses to delete the other model's vectors (rollback stays possible)")
    backfill_share: float = Field(
        0.5, gt=0, le=1, description="Share of wall time the backfill may work: after a page "
        "that took t seconds it rests t*(1-share)/share (1: no rest)")
    backfill_page: int = Field(32, ge=1, le=1024, description="Images re-embedded per step "
                               "(one Embedder call, one store write, one cursor commit)")
    target_replicas: int = Field(1, ge=1, description="Replicas of the new model's own "
                                 "Serve application")
