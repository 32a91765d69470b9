"""The near tier's look-up at 10k / 100k / 1M stored images: linear scan against
multi-index hashing, side by side, and whether they match exactly the same rows.

    python -m benchmarks.near_lookup_bench [--rows 10000,100000,1000000] [--parts 3,4] [--batch 64]

Stored rows are random window hashes (49 per image, as ``scale_bench`` fills them),
with, for every query, neighbours planted at distances 0..13 through each comparison
the scan makes (``tests/deeplens/test_hash_mih.py`` plants them the same way). Each
query is looked up with ``HashIndex.near``'s rule at the settings' thresholds (whole
<= 10 or windowed <= 12):

- **linear**: ``deeplens.hash_mih.near_rows``, the scan over every row (the numba kernel
  of ``deeplens.hash_distances``, on all cores), the reference;
- **mih-P**: ``deeplens.hash_mih.NearIndex`` with P substrings per hash: candidates from
  an exact radius search, verified by the same kernel.

- **batch-B**: ``deeplens.hash_distances.near_hits``, what dedup runs on a consumer
  batch (``HashIndex.near_many``): one pass over the stored rows for B look-ups at
  once, then each look-up's hits measured exactly. Its ms per look-up is the pass's
  time divided by B (``--batch``, default 64, dedup's consumer batch), the median over
  the passes.

For each: ms per look-up (median and p99), and for mih its build time, candidate rows
per look-up and table bytes per stored image (on top of the ~417 bytes a row costs in
``deeplens.hash_cache``); ``windows_off``: the same with the whole-image rule alone
(a tenant with ``near_window_max_distance=-1``), 20 look-ups. Every look-up of every
method is compared with the linear scan's (rows and distances): ``differences``
counts the look-ups that differ.
``stranger_matches_per_lookup``: what 20 more random queries, with nothing planted,
match by the rule among the random rows (every such match links strangers).

``--photos``: dedup_bench's photographs and their copies (decoded by the Embedder's
own DALI decoder) are stored too, in the largest tenant, and each is also a query.

Writes a results file (benchmarks/common.py: ``--out``, ``--record``).
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np


def random_rows(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    return rng.integers(0, 2**63, size=(rows, width), dtype=np.int64).view(np.uint64) \
        * np.uint64(2) + rng.integers(0, 2, size=(rows, width)).astype(np.uint64)


def flipped(rng: np.random.Generator, value: np.uint64, bits: int) -> np.uint64:
    mask = 0
    for b in rng.choice(64, size=bits, replace=False).tolist():
        mask |= 1 << b
    return np.uint64(int(value) ^ mask)


def plant(rng: np.random.Generator, stored: np.ndarray, query: np.ndarray, top: int) -> None:
    """Rows near ``query`` at every distance 0..top through each comparison."""
    from deeplens.image_hashes import CENTRED

    for d in range(top + 1):
        row = rng.integers(0, len(stored), size=4)
        k = int(rng.integers(1, stored.shape[1]))
        stored[row[0], k] = flipped(rng, query[0], d)
        stored[row[1], 0] = flipped(rng, query[k], d)
        stored[row[2], CENTRED[d % 2]] = flipped(rng, query[CENTRED[d % 2]], d)
        stored[row[3], 0] = flipped(rng, query[0], d)


def photo_hashes(seed: int) -> np.ndarray:
    """Window hashes of dedup_bench's photographs and their copies (DALI decode)."""
    from benchmarks.dedup_bench import _saved, copies_of
    from deeplens.image_hashes import window_hashes
    from deeplens.settings import ModelSettings
    from serve_apps.decode import make_decoder
    from serve_apps.model import load_clip
    from tests.images import quadrants, real_photos

    rng = random.Random(seed)
    blobs = []
    for photo in real_photos().values():
        for img in (photo, *quadrants(photo)):
            blobs.append(_saved(img, "JPEG", quality=95))
            blobs.extend(copies_of(img, rng).values())
    clip = load_clip(ModelSettings(name="deeplens-tiny", pretrained="random"), device="cpu")
    decoded = make_decoder("dali", clip=clip, max_batch_size=32).decode(blobs)
    return np.stack([window_hashes(d.hash_image) for d in decoded])


def timed(fn: Any, queries: np.ndarray) -> tuple[list[float], list[Any]]:
    times, answers = [], []
    for q in queries:
        start = time.perf_counter()
        answers.append(fn(q))
        times.append(time.perf_counter() - start)
    return times, answers


def batched(stored: np.ndarray, queries: np.ndarray, limits: tuple[int, int], batch: int,
            reference: list[Any]) -> dict[str, Any]:
    """``near_hits`` over ``batch`` queries per pass; each query's rows and distances."""
    from deeplens.hash_distances import hits_of, near_hits

    near_hits(stored[:100], queries[:2], *limits)  # compiled kernels loaded
    per_lookup, answers = [], []
    for first in range(0, len(queries), batch):
        part = queries[first:first + batch]
        start = time.perf_counter()
        answers.extend(hits_of(stored, part, near_hits(stored, part, *limits)))
        per_lookup.append((time.perf_counter() - start) / len(part))
    return {"ms_per_lookup_p50": round(1000 * float(np.median(per_lookup)), 3),
            "passes": len(per_lookup), "differences": differences(answers, reference)}


def compare(stored: np.ndarray, queries: np.ndarray, parts: list[int],
            limits: tuple[int, int], batch: int = 64) -> dict[str, Any]:
    from deeplens.hash_mih import NearIndex, near_rows

    out: dict[str, Any] = {}
    times, reference = timed(lambda q: near_rows(stored, q, *limits), queries)
    out["linear"] = summary(times)
    out["matches_per_lookup"] = round(float(np.mean([len(r) for r, _ in reference])), 2)
    out[f"batch-{batch}"] = batched(stored, queries, limits, batch, reference)
    whole_rule = (limits[0], -1)
    for p in parts:
        start = time.perf_counter()
        index = NearIndex(stored, parts=p)
        build = time.perf_counter() - start
        index.near(queries[0], *limits)  # compiled kernels loaded
        times, answers = timed(lambda q, index=index: index.near(q, *limits), queries)
        candidates = [len(index.candidates(q, *limits)) for q in queries[:20]]
        out[f"mih-{p}"] = {**summary(times), "build_s": round(build, 2),
                           "table_bytes_per_image": round(index.nbytes() / len(stored), 1),
                           "candidate_rows_per_lookup": round(float(np.mean(candidates)), 1),
                           "differences": differences(answers, reference)}
        # A tenant with the windows off (whole <= 10 only): one table set, one probe.
        linear, whole_reference = timed(lambda q: near_rows(stored, q, *whole_rule),
                                        queries[:20])
        times, answers = timed(lambda q, index=index: index.near(q, *whole_rule),
                               queries[:20])
        out[f"mih-{p}"]["windows_off"] = {
            "linear_ms_p50": summary(linear)["ms_p50"], "mih_ms_p50": summary(times)["ms_p50"],
            "differences": differences(answers, whole_reference)}
        del index
    return out


def differences(answers: list[Any], reference: list[Any]) -> int:
    """Look-ups whose rows or distances differ from the linear scan's."""
    return sum(not (np.array_equal(a[0], r[0]) and np.array_equal(a[1], r[1]))
               for a, r in zip(answers, reference, strict=True))


def summary(times: list[float]) -> dict[str, float]:
    return {"ms_p50": round(1000 * float(np.median(times)), 3),
            "ms_p99": round(1000 * float(np.quantile(times, 0.99)), 3)}


def main() -> None:
    from benchmarks.common import BenchParser, machine, record
    from deeplens.hash_mih import near_rows
    from deeplens.image_hashes import WINDOWS
    from deeplens.settings import DedupThresholds

    parser = BenchParser(__doc__, repeat=False)
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--parts", default="3,4")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--photos", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64, help="look-ups per batched pass")
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    parts = [int(p) for p in args.parts.split(",")]
    defaults = DedupThresholds()
    limits = (defaults.near_max_distance, defaults.near_window_max_distance)
    rng = np.random.default_rng(args.seed)
    width = len(WINDOWS)
    photos = photo_hashes(args.seed) if args.photos else np.empty((0, width), np.uint64)
    near_rows(random_rows(rng, 10, width), random_rows(rng, 1, width)[0], *limits)
    print(f"machine: {machine()}; near rule: whole <= {limits[0]} or windowed <= {limits[1]}")
    figures: dict[str, Any] = {"limits": list(limits), "queries": args.queries,
                               "sizes": {}}
    for size in sizes:
        queries = random_rows(rng, args.queries, width)
        stored = random_rows(rng, size, width)
        for q in queries:
            plant(rng, stored, q, max(limits) + 1)
        if size == max(sizes) and len(photos):
            stored = np.concatenate([stored, photos])
            queries = np.concatenate([queries, photos])
        result = compare(stored, queries, parts, limits, args.batch)
        # Queries with nothing planted: every row they match is a stranger's.
        result["stranger_matches_per_lookup"] = round(float(np.mean([
            len(near_rows(stored, q, *limits)[0]) for q in random_rows(rng, 20, width)])), 2)
        figures["sizes"][str(size)] = result
        print(f"{size:>9,} rows: {result}", flush=True)
        del stored
    if len(photos):
        figures["photos"] = {"images": len(photos), "stored_with": max(sizes),
                             **compare(photos, photos, parts, limits, args.batch)}
        print(f"photographs alone: {figures['photos']}")
    print(f"recorded in {record('near_lookup', figures)}")


if __name__ == "__main__":
    main()
