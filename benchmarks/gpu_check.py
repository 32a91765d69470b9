"""A check for a lent card: nvJPEG thumbnails and the Embedder's batch on CUDA.

    python benchmarks/gpu_check.py      # on a GPU machine, the repo on PYTHONPATH

nvJPEG (``encode_thumbnails`` with CUDA tensors) against Pillow on the host: time per
thumbnail, size, error against the source; then ``embed_items`` with ViT-B-32 bf16 on
the card (Pillow decoder, as on a card without DALI) over 64 photos, one corrupt:
the corrupt one fails alone. Writes a timestamped gpu_check results file in $OUT (the
device tool's folder) or benchmarks/runs/; ``--out``, ``--record`` as every script.
"""

import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cluster.samples import photo
from deeplens.settings import ModelSettings
from serve_apps.decode import encode_thumbnails, make_decoder
from serve_apps.embed_batch import Phases, embed_items
from serve_apps.model import load_clip


def thumbnails(host: list[np.ndarray]) -> dict:
    out = {}
    cuda = [torch.from_numpy(h).to("cuda") for h in host]
    for name, items in (("nvjpeg", cuda), ("pillow", host)):
        encode_thumbnails(items[:4])  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        jpegs = encode_thumbnails(items)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        first = np.asarray(Image.open(io.BytesIO(jpegs[0])).convert("RGB"), dtype=np.int16)
        out[name] = {"ms_per_thumb": round(1000 * elapsed / len(items), 3),
                     "sizes": sorted({Image.open(io.BytesIO(j)).size for j in jpegs}),
                     "mean_abs_diff_vs_source": round(float(np.abs(first - host[0]).mean()), 2),
                     "kb": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1)}
        print(name, out[name], flush=True)
    return out


def embed_on_cuda() -> dict:
    clip = load_clip(ModelSettings(name="ViT-B-32", pretrained="random", precision="bf16"),
                     device="cuda")
    decoder = make_decoder("pillow", clip=clip, max_batch_size=64)
    items = []
    for seed in range(64):
        buf = io.BytesIO()
        photo(640, 480, seed).save(buf, "JPEG", quality=90)
        items.append(buf.getvalue())
    items[5] = b"\xff\xd8\xff\xe0garbage"
    results = embed_items(clip, decoder, items, [True] * len(items), Phases())
    ok = [r for r in results if r.ok]
    row = {"ok": len(ok), "failed": [i for i, r in enumerate(results) if not r.ok],
           "error_kind": results[5].error_kind,
           "thumb_kb": round(float(np.mean([len(r.thumbnail) for r in ok])) / 1024, 1),
           "phash_set": all(r.phash is not None for r in ok),
           "fingerprints_distinct": len({r.fingerprint for r in ok}),
           "vector_dim": int(ok[0].vector.shape[0]),
           "norm": round(float(np.linalg.norm(ok[0].vector)), 3)}
    print(row, flush=True)
    return row


def main() -> None:
    from benchmarks.common import bench_parser

    parser = bench_parser(__doc__, repeat=False)
    parser.set_defaults(out=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    parser.parse_args()  # where record() writes: --out (default $OUT, else benchmarks/runs/)
    host = [np.ascontiguousarray(np.asarray(photo(320, 240, s))) for s in range(64)]
    from benchmarks.common import record

    card = torch.cuda.get_device_name(0)
    path = record("gpu_check", {"card": card, "torch": torch.__version__,
                                "thumbnails": thumbnails(host),
                                "embed_items_cuda": embed_on_cuda()})
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
