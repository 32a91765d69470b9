"""The imports group of the settings (``DEEPLENS_IMPORTS__*``): where an operator may
import from, and how bulk work shares the pipeline with live work."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator


class ImportSettings(BaseModel):
    """Bulk imports (``deeplens import``) and the bulk lane."""

    allowed_roots: list[str] = Field(
        default_factory=list, description="Where imports may read, as JSON: "
        '\'["s3://photos/archive", "/mnt/shared/images"]\'. An S3 root is a bucket and an '
        "optional key prefix; a folder root is an absolute path on storage every node "
        "sees. Empty: no import is allowed")
    chunk: int = Field(500, ge=1, le=10_000, description="Objects listed, read, catalogued "
                       "and published per step (one transaction, one broker wait)")
    readers: int = Field(8, ge=1, le=256, description="Objects read at once during an "
                         "import (S3 latency hides behind parallel reads)")
    bulk_share: float = Field(
        0.25, gt=0, le=1, description="Share of a stage's batches that bulk work may take "
        "while live work waits (1: no priority)")

    @field_validator("allowed_roots")
    @classmethod
    def _roots_are_absolute(cls, roots: list[str]) -> list[str]:
        for root in roots:
            if not (root.startswith("s3://") or root.startswith("/")):
                raise ValueError(f"import root {root!r} is neither s3://bucket[/prefix] "
                                 "nor an absolute folder")
        return roots
