"""Losing a node, timed: the two-node scenario of tests/cluster/test_two_nodes.py, once
per repeat, with its figures recorded.

    python -m benchmarks.node_loss_bench [--repeat N] [--record]

Each run starts a real two-node Ray cluster on this machine (Ray's ``cluster_utils``),
the pipeline on it with shared state (PostgreSQL, a moto S3 server, the Weaviate
stand-in, the local broker), stage actors and the Embedder on the second node
(``stage_down_after_s=5``, ``query_timeout_s=3``), kills every process of that node
with SIGKILL mid-stream while uploads go on, then starts a replacement node with the
same resources (``tests/cluster/two_nodes.py``). Figures per run:

- ``degraded_after_kill_s``: from the kill until ``/readyz`` answers 503 naming every
  stage, the Embedder and the missing resource (polled every 0.5 s);
- ``search_503_s``: how long a text and an image search took to answer 503 with
  ``Retry-After`` after the kill (``null``: it did not answer 503);
- ``indexed_after_replacement_s``: from starting the replacement node until every image
  is indexed or failed (polled every 0.5 s);
- ``images``: accepted (202), indexed, failed, duplicated (indexed more than once in
  the vector store), missing (accepted, not in the vector store).

With ``--repeat N`` every figure is the median of the N, all runs under ``runs``.
Writes the results file (``--record``: results/node_loss.json); exit 1 when a run lost
or doubled an image or a search did not answer 503.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROUTES = {"/v1/search": "text", "/v1/search/image": "image"}


def run_figures(result: dict, stored_ids: list[str]) -> dict[str, Any]:
    """One run's figures from the scenario's result and the ids the vector store holds
    (one entry per object: an image indexed twice is there twice)."""
    ours = result["all_ids"]
    mine = set(ours)
    stored = Counter(i for i in stored_ids if i in mine)
    statuses = Counter(result["statuses_after"])
    searches = {ROUTES[row["route"]]: row for row in result["search_during"]}
    search_503 = {name: (row["seconds"] if row["status"] == 503 and row["retry_after"]
                         else None) for name, row in searches.items()}
    images = {"accepted": result["accepted"], "indexed": statuses["indexed"],
              "failed": statuses["failed"],
              "duplicated": sum(n - 1 for n in stored.values()),
              "missing": len(mine - set(stored))}
    return {
        "scenario": result.get("scenario"),
        "degraded_after_kill_s": result["degraded_after_kill_s"],
        "degraded_reasons": (result["readyz_during"] or {}).get("reasons"),
        "search_503_s": search_503,
        "search_after_kill_s": {name: row["after_kill_s"] for name, row in searches.items()},
        "indexed_after_replacement_s": result["indexed_after_replacement_s"],
        "images": images,
        "ok": (images["duplicated"] == 0 and images["missing"] == 0
               and images["indexed"] == images["accepted"] == len(ours)
               and all(v is not None for v in search_503.values())
               and result["degraded_after_kill_s"] is not None),
    }


def one_run(bootstrap: str, postgres_url: str) -> dict[str, Any]:
    from deeplens.kafka import admin_client
    from deeplens.settings import KafkaSettings
    from deeplens.topics import TopicNames, ensure_topics
    from tests.cluster.two_node_run import indexed_ids, run_scenario, s3_server, scenario_config
    from tests.postgres import fresh_database
    from tests.weaviate_standin import start_standin

    prefix = f"nl{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap_servers=bootstrap, one_record_per_batch=True,
                          topic_prefix=prefix, poll_timeout_s=0.2, session_timeout_ms=6000,
                          batch_size=16)  # as the test's (tests/conftest.py)
    report = ensure_topics(admin_client(kafka), TopicNames(prefix))
    if not report.ok:
        raise RuntimeError(f"topics: {report.drift}")
    standin = start_standin()
    try:
        with tempfile.TemporaryDirectory() as tmp, s3_server() as s3:
            result = run_scenario(scenario_config(Path(tmp) / "data", kafka,
                                                  fresh_database(postgres_url), s3, standin))
        return run_figures(result, indexed_ids(standin))
    finally:
        standin.stop()


def main() -> None:
    from benchmarks.common import bench_parser, quietly_closed, record
    from benchmarks.spread import print_spread, repeated, with_spread
    from deeplens.broker import local_broker
    from tests.postgres import postgres_server

    args = bench_parser(__doc__).parse_args()
    with quietly_closed(local_broker(), "node_loss_bench") as broker, \
            postgres_server() as postgres_url:
        summary = repeated(args.repeat, lambda _i: one_run(broker.bootstrap, postgres_url),
                           label="node loss")
    summary["ok"] = all(r["ok"] for r in summary.get("runs", [summary]))
    path = record("node_loss", summary)
    searches = summary["search_503_s"]
    print(f"degraded, naming stages and resource: "
          f"{with_spread(summary, 'degraded_after_kill_s', summary['degraded_after_kill_s'])} s "
          f"after the kill; search 503: text {searches.get('text')} s, image "
          f"{searches.get('image')} s; every image settled "
          f"{summary['indexed_after_replacement_s']} s after the replacement node started; "
          f"images {summary['images']}; ok {summary['ok']}")
    print_spread(summary)
    print(f"results: {path}")
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
