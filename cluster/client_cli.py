"""Client commands against a running DeepLens: bulk ingest, search, status."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx

from cluster.client_http import ClientError, api_target, api_url, connect, detail
from cluster.ingest import IngestState, image_files, ingest
from deeplens.settings import Settings


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0: every file indexed (or already there); 1: some refused or failed; 2: usage
    or connection errors (nothing to ingest, API down, key refused)."""
    url, key = api_target(settings, args.api, args.key)
    files = list(image_files(args.paths))
    if not files:
        raise ClientError("nothing to ingest: no image files in " + " ".join(args.paths))
    state = IngestState(Path(args.state))
    result = ingest(url, key, files, state, args.concurrency, not args.no_wait, args.timeout)
    failed = result.pop("failed_files")
    print("summary: " + ", ".join(f"{k} {v}" for k, v in result.items()))
    for path, why in failed.items():
        print(f"  {path}: {why}")
    return 1 if failed else 0


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    if not args.image and not (args.text or "").strip():
        raise ClientError("give a text query or --image FILE")
    if args.image and not Path(args.image).is_file():
        raise ClientError(f"no such file: {args.image}")
    url, key = api_target(settings, args.api, args.key)
    client, _tenant = connect(url, key)
    if args.image:
        path = Path(args.image)
        answer = client.post("/v1/search/image", files={"file": (path.name, path.read_bytes())},
                             data={"k": str(args.k)})
    else:
        answer = client.post("/v1/search", json={"text": args.text, "k": args.k})
    if answer.status_code != 200:
        print(f"search refused: {answer.status_code} {detail(answer)}", file=sys.stderr)
        return 1
    body = answer.json()
    print(f"model {body['model']}")
    for rank, hit in enumerate(body["hits"], start=1):
        print(f"{rank:3}. {hit['score']:+.4f}  {hit['image_id']}  {hit['original_file_name']}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Per stage: lag, handled, failed, error rate, seconds per event; per tenant: counts."""
    from prometheus_client.parser import text_string_to_metric_families

    from deeplens.runtime import locate

    settings = locate(settings)
    url = api_url(settings, args.api)
    token = settings.ops.metrics_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.get(url + "/metrics", timeout=30, headers=headers)
    except httpx.HTTPError as exc:
        raise ClientError(f"no DeepLens answering at {url} ({type(exc).__name__}); is "
                          "`deeplens up` running?") from None
    if answer.status_code != 200:
        raise ClientError(f"{url}/metrics answered {answer.status_code}: {detail(answer)} "
                          "(set DEEPLENS_OPS__METRICS_TOKEN to the operator token)")
    text = answer.text
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = sample.labels.get("stage") or sample.labels.get("group")
            if stage:
                key = (sample.name, stage)
                values[key] = values.get(key, 0.0) + sample.value
    stages = sorted({stage for (_, stage) in values})
    print(f"{'stage':12} {'lag':>8} {'handled':>9} {'failed':>7} {'error %':>8} "
          f"{'ms/event':>9} {'actors':>6}")
    for stage in stages:
        handled = values.get(("deeplens_stage_handled_total", stage), 0.0)
        failed = values.get(("deeplens_stage_failed_total", stage), 0.0)
        busy = values.get(("deeplens_stage_processing_seconds_total", stage), 0.0)
        print(f"{stage:12} {values.get(('deeplens_consumer_lag', stage), 0):>8.0f} "
              f"{handled:>9.0f} {failed:>7.0f} {100 * failed / max(handled, 1):>7.1f}% "
              f"{1000 * busy / max(handled, 1):>9.1f} "
              f"{values.get(('deeplens_stage_actors', stage), 0):>6.0f}")
    print("(lag is read from the broker; handled, failed and ms/event count since each "
          "actor started and restart from 0 when an actor restarts. Throughput: the rate of "
          "deeplens_stage_handled_total; see the Grafana dashboard)")
    from cluster.lanes_status import print_lanes

    print_lanes(text)
    print_pipeline(url, headers)
    for family in text_string_to_metric_families(text):  # which decoder the Embedder chose
        for sample in family.samples:
            if sample.name == "deeplens_embedder_decoder":
                print(f"\nembedder decoder: {sample.labels['decoder']}")
    print_scaling(text)
    from cluster.model_metrics import print_model_change

    print_model_change(text)
    print_tenant_counts(settings)
    return 0


def print_pipeline(url: str, headers: dict[str, str]) -> None:
    """The Gateway's /readyz: ok, or degraded with its reasons; the nodes of each stage."""
    try:
        answer = httpx.get(url + "/readyz", timeout=30, headers=headers)
        report = answer.json()
    except (httpx.HTTPError, ValueError):
        print("\npipeline: unknown (/readyz did not answer)")
        return
    if "state" not in report:
        print(f"\npipeline: unknown (/readyz answered {answer.status_code})")
        return
    print(f"\npipeline: {report['state'].upper() if report['state'] != 'ok' else 'ok'}"
          f"; Embedder replicas: {report.get('embedder_replicas', '?')}")
    for reason in report.get("reasons", []):
        print(f"  - {reason}")
    for stage, state in sorted(report.get("stages", {}).items()):
        nodes = ", ".join(state.get("nodes") or []) or "-"
        print(f"  {stage:12} {state['live']}/{state['wanted']} live on {nodes}")


def print_scaling(metrics_text: str) -> None:
    """Per stage and the Embedder: what runs where, lag, rate, and the scaling
    controller's last decision and why (its metrics; nothing when it is off)."""
    from prometheus_client.parser import text_string_to_metric_families

    rows: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            name = sample.labels.get("name")
            if not sample.name.startswith("deeplens_scaling") or name is None:
                continue
            row = rows.setdefault(name, {"nodes": []})
            key = sample.name.removeprefix("deeplens_scaling_")
            if key == "bound":
                row[sample.labels["bound"]] = int(sample.value)
            elif key == "actors":
                row["nodes"].append(f"{sample.labels['node']} x{sample.value:.0f}")
            elif key == "decision":
                row.update(action=sample.labels["action"], cause=sample.labels["cause"],
                           wait_s=sample.value)
            else:
                row[key] = sample.value
    if not rows:
        return
    print(f"\n{'scaling':12} {'now':>4} {'wants':>5} {'range':>6} {'rate/s':>7}  decision")
    for name, row in sorted(rows.items()):
        action = row.get("action", "none")
        if action.startswith("waiting"):
            action = f"{action[8:]} to {row.get('wanted', 0):.0f} in {row['wait_s']:.0f} s"
        rate = f"{row['rate']:>7.1f}" if "rate" in row else f"{'-':>7}"
        print(f"{name:12} {row.get('target', 0):>4.0f} {row.get('wanted', 0):>5.0f} "
              f"{row.get('min', 0):>2}-{row.get('max', 0):<3} {rate}  {action}: "
              f"{row.get('cause', '')}{' (pinned)' if row.get('pinned') else ''}")
        if row["nodes"]:
            print(f"{'':12} on {', '.join(row['nodes'])}")


def _recorded_catalog(settings: Settings) -> str:
    """The catalog address a running ``deeplens up`` recorded (password hidden), or ''."""
    import json

    from deeplens.runtime import runtime_file

    try:
        return str(json.loads(runtime_file(settings).read_text()).get("catalog") or "")
    except (OSError, ValueError):
        return ""


def print_tenant_counts(settings: Settings) -> None:
    """The per-tenant table from the catalog, or one line saying why it is left out."""
    if not (settings.catalog_url or (settings.data_dir / "catalog.db").exists()):
        catalog = _recorded_catalog(settings)
        where = (f"the stack's catalog is {catalog}: set DEEPLENS_CATALOG_URL to it" if catalog
                 else f"no catalog.db in {settings.data_dir}: set DEEPLENS_DATA_DIR or "
                 "DEEPLENS_CATALOG_URL to the stack's")
        print(f"\n(per-tenant counts left out: {where})")
        return
    from ingestion.catalog import Catalog

    per_tenant = Catalog(settings.effective_catalog_url).counts_by_tenant()
    states = ("uploaded", "validated", "processed", "indexed", "failed")
    print(f"\n{'tenant':16} " + " ".join(f"{s:>9}" for s in states))
    for tenant, counts in sorted(per_tenant.items()):
        print(f"{tenant:16} " + " ".join(f"{counts.get(s, 0):>9}" for s in states))


def client_command(func: Any) -> Any:
    """Expected failures become one line on stderr and exit code 2; Ctrl-C exits 130."""
    import functools

    @functools.wraps(func)
    def run(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return int(func(settings, args))
        except ClientError as exc:
            print(f"deeplens {args.command}: {exc}", file=sys.stderr)
            return 2
        except httpx.HTTPError as exc:
            print(f"deeplens {args.command}: the API stopped answering ({type(exc).__name__}: "
                  f"{exc})", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\ndeeplens {args.command}: interrupted", file=sys.stderr)
            return 130

    return run


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ingest", help="bulk upload files and folders, with progress")
    p.add_argument("paths", nargs="+")
    p.add_argument("--api", help="API URL (default: the running local stack)")
    p.add_argument("--key", help="API key (default: DEEPLENS_API_KEY or the demo key)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--state", default=".deeplens-ingest.json",
                   help="resume file: files this server and tenant already accepted are "
                   "skipped (by sha256, checked with the server first)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for indexing")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for indexing")
    p.set_defaults(func=client_command(cmd_ingest))

    p = sub.add_parser("status", help="per-stage lag, error rate; per-tenant counts")
    p.add_argument("--api", help="API URL (default: the running local stack)")
    p.set_defaults(func=client_command(cmd_status))

    p = sub.add_parser("search", help="search by text or by image")
    p.add_argument("text", nargs="?")
    p.add_argument("--image")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--api")
    p.add_argument("--key")
    p.set_defaults(func=client_command(cmd_search))
