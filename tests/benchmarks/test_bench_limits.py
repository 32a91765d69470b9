"""A benchmark measures the pipeline, never the rate limiter: its own key gets limits far
above what any run sends (upload_bench's second concurrency level got 429s when it
raised only the read limits, and stopped)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import unlimited_ingestion
from deeplens.settings import IngestionSettings

ROOT = Path(__file__).resolve().parents[2]


def test_every_rate_limit_of_a_bench_key_is_far_above_the_default() -> None:
    limits = unlimited_ingestion().model_dump()
    defaults = IngestionSettings().model_dump()
    budgets = [name for name in defaults if "rate_limit" in name and name != "rate_limit_max_keys"]
    assert {"upload_rate_limit_per_minute", "upload_rate_limit_burst",
            "rate_limit_per_minute", "rate_limit_burst"} <= set(budgets)
    for name in budgets:
        assert limits[name] >= 1000 * defaults[name], name


def test_no_benchmark_sets_its_own_limits() -> None:
    """One helper for every script, so a new limit is raised for all of them at once."""
    direct = [p.name for p in (ROOT / "benchmarks").glob("*.py")
              if "IngestionSettings(" in p.read_text() and p.name != "common.py"]
    assert direct == [], direct
