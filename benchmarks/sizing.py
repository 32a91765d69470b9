"""Partitions, actors, cores and Gateway replicas per stage for a GPU count.

    python -m benchmarks.sizing --gpus 4 --model ViT-B-32
        [--results benchmarks/results/ceiling.json] [--gpu benchmarks/results/gpu-h200.json]
        [--per-gpu 5000] [--utilisation 0.8] [--edge-share 1.0] [--kind "jpeg 0.3 MP"]

Two measured inputs, no guesses:

- **CPU ms per image per stage** from a ``ceiling_bench`` results file (each stage
  actor's process, the Gateway and Serve's HTTP proxy; the per-image figure net of the
  fixed cost per second when the file has it) or a ``stage_cost`` file (``--kind``);
- **images/s one GPU embeds** from a ``gpu_bench`` file: the lower of the model's best
  recorded rate for ``--model`` and the recorded decode rate (``--per-gpu`` overrides).

Then per stage: cores = GPUs x images/s per GPU x CPU s per image / ``--utilisation``;
actors = cores rounded up (an actor is one Python process, about one core); partitions
of each topic = the most actors any stage reading it runs, never below the seed's count.
The edge: Gateway replicas for the share of images uploaded over HTTP (``--edge-share``;
bulk imports skip it) and the HTTP proxy's cores. README.md's "Partitions for a GPU
count" table is this script's output (tests/benchmarks/test_sizing.py checks it);
``--update-readme`` rewrites it after a new recorded run or a change of the stage table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
# README's generated table: the command that makes it, its output, an end marker
README_BLOCK = re.compile(r"<!-- sizing: (?P<command>python -m benchmarks\.sizing [^>]*?) -->\n"
                          r"(?P<table>.*?)\n<!-- end sizing -->", re.S)
# ceiling_bench's process roles and stage_cost's stages -> the stage table's names
CEILING_ROLES = {"stage validation": "validation", "stage embedding": "embedding",
                 "stage indexing": "indexing", "stage dedup": "dedup",
                 "stage projection": "projection", "stage usage": "usage",
                 "Serve Gateway": "gateway", "ProxyActor": "http proxy"}
STAGE_COST_NAMES = {"validation": "validation", "feeder": "embedding", "indexer": "indexing",
                    "dedup": "dedup", "projection": "projection", "usage": "usage",
                    "edge": "gateway"}
EDGE = ("gateway", "http proxy")


@dataclass(frozen=True)
class StagePlan:
    stage: str
    cpu_ms: float
    cores: float
    actors: int
    setting: str  # how to start that many ("DEEPLENS_ACTORS__FEEDERS=11")
    reads: tuple[str, ...]


@dataclass(frozen=True)
class TopicPlan:
    topic: str
    partitions: int
    seed: int
    readers: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    gpus: int
    per_gpu: float
    per_gpu_source: str
    images_per_s: float
    utilisation: float
    edge_share: float
    stages: tuple[StagePlan, ...]
    topics: tuple[TopicPlan, ...]
    cpu_source: str


def stage_cpu_ms(results: dict[str, Any], kind: str = "jpeg 0.3 MP") -> tuple[dict[str, float],
                                                                               str]:
    """CPU ms per image per stage (and the edge) from a ceiling_bench or stage_cost file."""
    if "cpu_ms_per_image" in results:  # stage_cost
        row = results["cpu_ms_per_image"][kind]
        return ({STAGE_COST_NAMES[k]: float(v) for k, v in row.items()
                 if k in STAGE_COST_NAMES}, f"stage_cost, {kind}")
    marginal = results.get("marginal_cpu_ms_per_image_by_role")
    by_role = marginal or results["cpu_ms_per_image_by_role"]
    what = "net of the fixed cost per second" if marginal else "whole run"
    return ({CEILING_ROLES[k]: float(v) for k, v in by_role.items() if k in CEILING_ROLES},
            f"ceiling_bench, {results.get('images', '?')} images of "
            f"{results.get('size', '?')}, {what}")


def per_gpu_rate(gpu: dict[str, Any], model: str) -> tuple[float, str]:
    """Images/s one card embeds: the model's best recorded rate, or the recorded decode
    rate where that is lower, with what bounds it."""
    rows = [r for r in gpu.get("rows", []) if r.get("model") == model]
    if not rows:
        raise SystemExit(f"{gpu.get('card', 'the GPU file')} has no rows for {model}; "
                         "pass --per-gpu")
    best = max(rows, key=lambda r: r["images_per_s"])
    card = gpu.get("card", "GPU")
    model_rate = float(best["images_per_s"])
    decode = gpu.get("decode_images_per_s")
    if decode is not None and float(decode) < model_rate:
        return float(decode), (f"{card}, decode-bound: {gpu.get('decoder', 'decode')} "
                               f"{float(decode):,.0f}/s; {model} {best['dtype']} alone "
                               f"{model_rate:,.0f}/s at batch {best['batch']}")
    return model_rate, f"{card}: {model} {best['dtype']}, batch {best['batch']}"


def plan(cpu_ms: dict[str, float], per_gpu: float, gpus: int, *, utilisation: float = 0.8,
         edge_share: float = 1.0, per_gpu_source: str = "", cpu_source: str = "") -> Plan:
    """Cores, actors and partitions per stage, and Gateway replicas, for ``gpus`` cards."""
    from cluster.stages import STAGES
    from deeplens.topics import TOPICS

    rate = gpus * per_gpu
    stages = []
    for stage in STAGES:
        ms = cpu_ms.get(stage.name, 0.0)
        cores = rate * ms / 1000 / utilisation
        actors = max(1, math.ceil(cores)) if stage.count else 1
        setting = (f"DEEPLENS_ACTORS__{stage.count.upper()}={actors}" if stage.count
                   else "one actor (not scaled)")
        stages.append(StagePlan(stage.name, ms, cores, actors, setting, stage.inputs))
    for edge in EDGE:
        if edge not in cpu_ms:
            continue  # stage_cost measures the edge as one process, no separate proxy
        ms = cpu_ms[edge]
        cores = rate * edge_share * ms / 1000 / utilisation
        count = max(1, math.ceil(cores))
        setting = (f"DEEPLENS_SERVE__GATEWAY_REPLICAS={count}" if edge == "gateway"
                   else "Serve runs one per node: this many nodes take uploads")
        stages.append(StagePlan(edge, ms, cores, count, setting, ()))
    topics = []
    for name in dict.fromkeys(t for s in STAGES for t in s.inputs):
        readers = tuple(s.stage for s in stages if name in s.reads)
        seed = TOPICS[name].partitions
        topics.append(TopicPlan(name, max([seed, *(s.actors for s in stages
                                                   if s.stage in readers)]), seed, readers))
    return Plan(gpus, per_gpu, per_gpu_source, rate, utilisation, edge_share, tuple(stages),
                tuple(topics), cpu_source)


def render(p: Plan) -> str:
    """The two markdown tables README.md carries, with what they follow from."""
    lines = [f"{p.gpus} GPU(s) x {p.per_gpu:,.0f} images/s ({p.per_gpu_source}) = "
             f"{p.images_per_s:,.0f} images/s.",
             f"CPU per image from {p.cpu_source}; cores at {p.utilisation:.0%} busy; "
             f"{p.edge_share:.0%} of images uploaded over HTTP.",
             "",
             "| stage | CPU ms/image | cores | actors | setting |",
             "|---|---|---|---|---|"]
    for s in p.stages:
        lines.append(f"| {s.stage} | {s.cpu_ms:.2f} | {s.cores:.1f} | {s.actors} | "
                     f"`{s.setting}` |" if "=" in s.setting else
                     f"| {s.stage} | {s.cpu_ms:.2f} | {s.cores:.1f} | {s.actors} | "
                     f"{s.setting} |")
    total = sum(s.cores for s in p.stages)
    lines.append(f"| **total** | {sum(s.cpu_ms for s in p.stages):.2f} | {total:.1f} | | |")
    for s in p.stages:
        if s.cores > s.actors:
            lines.append(f"\n{s.stage} runs {s.actors} actor: it would need {s.cores:.1f} "
                         "cores at this rate and is the bottleneck.")
    lines += ["",
              "| topic | partitions, at least | read by |", "|---|---|---|"]
    for t in p.topics:
        seed = " (the seed's)" if t.partitions == t.seed else ""
        lines.append(f"| `{t.topic}` | {t.partitions}{seed} | {', '.join(t.readers)} |")
    return "\n".join(lines)


def calculate(gpus: int, model: str, results: Path, gpu: Path, *, per_gpu: float | None = None,
              utilisation: float = 0.8, edge_share: float = 1.0,
              kind: str = "jpeg 0.3 MP") -> Plan:
    cpu, cpu_source = stage_cpu_ms(json.loads(results.read_text()), kind)
    if per_gpu is None:
        rate, source = per_gpu_rate(json.loads(gpu.read_text()), model)
    else:
        rate, source = per_gpu, f"--per-gpu {per_gpu:g}"
    return plan(cpu, rate, gpus, utilisation=utilisation, edge_share=edge_share,
                per_gpu_source=source, cpu_source=f"{results.name} ({cpu_source})")


def readme_table(readme: str) -> tuple[str, str, str]:
    """(command, table in README, the command's output now) of README's sizing block."""
    block = README_BLOCK.search(readme)
    if block is None:
        raise SystemExit("README.md has no <!-- sizing: ... --> ... <!-- end sizing --> block")
    root = README.parent
    argv = [str(root / a) if a.startswith("benchmarks/") else a
            for a in shlex.split(block["command"])[3:]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(argv)
    return block["command"], block["table"], out.getvalue().strip()


def update_readme(path: Path = README) -> bool:
    """Rewrite README's sizing table from its command (after a recorded run or a change of
    the stage or topic table); True when it changed."""
    text = path.read_text()
    command, table, now = readme_table(text)
    if table.strip() == now:
        return False
    block = README_BLOCK.search(text)
    assert block is not None
    path.write_text(text[:block.start("table")] + now + text[block.end("table"):])
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--results", type=Path, default=RESULTS / "ceiling.json",
                        help="a ceiling_bench or stage_cost results file")
    parser.add_argument("--gpu", type=Path, default=RESULTS / "gpu-h200.json",
                        help="a gpu_bench results file (the card's model and decode rates)")
    parser.add_argument("--per-gpu", type=float, default=None, help="images/s per GPU")
    parser.add_argument("--utilisation", type=float, default=0.8,
                        help="how busy a planned core may be (headroom for bursts)")
    parser.add_argument("--edge-share", type=float, default=1.0,
                        help="share of images uploaded over HTTP (imports skip the edge)")
    parser.add_argument("--kind", default="jpeg 0.3 MP", help="stage_cost: which image kind")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite README.md's table from the command in its marker")
    args = parser.parse_args(argv)
    if args.update_readme:
        print("README.md's sizing table " + ("rewritten" if update_readme() else "is current"))
        return 0
    print(render(calculate(args.gpus, args.model, args.results, args.gpu,
                           per_gpu=args.per_gpu, utilisation=args.utilisation,
                           edge_share=args.edge_share, kind=args.kind)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
