"""The node-loss benchmark's figures from one scenario result: counts of accepted,
indexed, doubled and missing images, and search timings only for a real 503."""

from __future__ import annotations

from benchmarks.node_loss_bench import run_figures
from benchmarks.spread import summarize


def _result(ids: list[str], *, text_status: int | None = 503, degraded: float | None = 6.5,
            statuses: list[str] | None = None, settle: float = 20.0) -> dict:
    return {
        "all_ids": ids, "accepted": len(ids),
        "statuses_after": statuses or ["indexed"] * len(ids),
        "degraded_after_kill_s": degraded, "indexed_after_replacement_s": settle,
        "readyz_during": {"status": 503, "reasons": ["no Embedder replica is running"]},
        "search_during": [
            {"route": "/v1/search", "status": text_status, "seconds": 3.1,
             "after_kill_s": 9.0, "retry_after": "5" if text_status == 503 else None},
            {"route": "/v1/search/image", "status": 503, "seconds": 3.4,
             "after_kill_s": 12.1, "retry_after": "5"}],
    }


def test_a_clean_run_counts_every_image_once() -> None:
    figures = run_figures(_result(["a", "b", "c"]), ["c", "a", "b", "other-run"])
    assert figures["images"] == {"accepted": 3, "indexed": 3, "failed": 0,
                                 "duplicated": 0, "missing": 0}
    assert figures["search_503_s"] == {"text": 3.1, "image": 3.4}
    assert figures["search_after_kill_s"] == {"text": 9.0, "image": 12.1}
    assert figures["ok"] is True


def test_doubled_and_missing_images_are_counted_and_fail_the_run() -> None:
    figures = run_figures(_result(["a", "b", "c"]), ["a", "a", "a", "b"])
    assert figures["images"]["duplicated"] == 2 and figures["images"]["missing"] == 1
    assert figures["ok"] is False


def test_a_search_that_did_not_answer_503_has_no_time() -> None:
    figures = run_figures(_result(["a"], text_status=None), ["a"])
    assert figures["search_503_s"] == {"text": None, "image": 3.4}
    assert figures["ok"] is False
    # degraded never named: no figure, and the run fails
    assert run_figures(_result(["a"], degraded=None), ["a"])["ok"] is False


def test_repeats_report_the_median_and_every_run() -> None:
    runs = [run_figures(_result(["a"], settle=s, degraded=d), ["a"])
            for s, d in ((30.0, 8.0), (10.0, 6.0), (20.0, 7.0))]
    summary = summarize(runs)
    assert summary["indexed_after_replacement_s"] == 20.0
    assert summary["degraded_after_kill_s"] == 7.0
    assert summary["spread"]["indexed_after_replacement_s"] == [10.0, 30.0]
    assert len(summary["runs"]) == 3 and summary["repeat"] == 3
