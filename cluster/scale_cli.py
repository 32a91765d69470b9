"""``deeplens scale NAME N|auto``: pin a stage's actors or the Embedder's replicas on the
running stack, live, or hand them back to the scaling controller.

It joins the stack's Ray (the address and namespace ``deeplens up`` recorded, else
``DEEPLENS_RAY_ADDRESS``, else ``auto``) and calls the controller actor; on a ``ray up``
cluster run it on the head node, as ``ray status``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cluster.client_http import ClientError
from deeplens.settings import Settings


def ray_location(settings: Settings) -> tuple[str, str | None]:
    """The stack's Ray address and namespace, as ``deeplens up`` recorded them."""
    from deeplens.runtime import locate, runtime_file

    path = runtime_file(locate(settings))
    try:
        recorded = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        recorded = {}
    return (recorded.get("ray_address") or settings.ray_address or "auto",
            recorded.get("ray_namespace"))


def connect(settings: Settings) -> Any:
    """The running scaling controller (joins the stack's Ray first)."""
    import ray

    from cluster.scaling_ops import find_controller

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address, namespace = ray_location(settings)
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False,
                 logging_level="ERROR")
    except (ConnectionError, RuntimeError) as exc:
        raise ClientError(f"no Ray at {address} ({exc}); is `deeplens up` running?") from None
    try:
        return find_controller(settings)
    except ValueError:
        raise ClientError("no scaling controller on this Ray: `deeplens up` runs one unless "
                          "DEEPLENS_SCALING__ENABLED=false") from None


def describe(name: str, row: dict[str, Any]) -> str:
    """One line on what now runs for ``name`` and why."""
    held = f"pinned at {row['pinned']}" if row.get("pinned") is not None else "automatic"
    if name == "embedder":
        return (f"embedder: {row.get('target', '?')} replica(s) wanted, "
                f"{row.get('running', '?')} running ({held}; between {row['min']} and "
                f"{row['max']} when automatic)")
    nodes = ", ".join(f"{node} x{n}" for node, n in (row.get("nodes") or {}).items()) or "-"
    return (f"{name}: {row.get('actors', '?')} actor(s) on {nodes} ({held}; between "
            f"{row['min']} and {row['max']} when automatic)")


def cmd_scale(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    if args.count != "auto" and not args.count.isdigit():
        raise ClientError(f"N is a whole number or 'auto', not {args.count!r}")
    count = None if args.count == "auto" else int(args.count)
    controller = connect(settings)
    try:
        report = ray.get(controller.pin.remote(args.name, count), timeout=600)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, ValueError) else exc
        raise ClientError(str(cause).splitlines()[-1]) from None
    finally:
        ray.shutdown()
    row = report["scalers"][args.name]
    if args.name == "embedder" and count is not None:
        row = {**row, "target": count}
    print(describe(args.name, row))
    if count is None:
        print(f"released: the controller decides again within {report['interval_s']:.0f} s")
    return 0
