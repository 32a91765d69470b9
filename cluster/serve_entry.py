"""Application builders for ``serve deploy cluster/serve_config.yaml``.

Settings come from the nodes' ``DEEPLENS_*`` variables; ``args`` from the config
file are accepted as overrides of the Embedder's batching.
"""

from __future__ import annotations

from typing import Any

from deeplens.settings import load_settings


def embedder_app(args: dict[str, Any]) -> Any:
    from serve_apps.embedder import EmbedderArgs, build_embedder

    settings = load_settings()
    cfg = settings.serve
    embedder_args = EmbedderArgs(
        model=settings.model,
        max_batch_size=int(args.get("max_batch_size", cfg.max_batch_size)),
        batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", cfg.batch_wait_timeout_s)),
        torch_threads=cfg.torch_threads)
    return build_embedder(settings, embedder_args)


def gateway_app(args: dict[str, Any]) -> Any:
    from cluster.gateway import build_gateway

    return build_gateway(load_settings())
