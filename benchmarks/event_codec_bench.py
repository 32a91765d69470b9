"""What a vector costs on the wire: ``images.processed`` version 1 vs version 2.

    python -m benchmarks.event_codec_bench [--dim 512] [--events 2000] [--repeat 3]

Version 1 carries the vector as a JSON array of floats rounded to 8 decimals (the
seed's ``features``); version 2 as base64 of little-endian float32 (``features_f32``).
Prints bytes per event and microseconds to encode (``to_json``) and to decode
(``decode_event`` + ``vector()``) each, side by side in one run. ``--repeat N``: both
versions N times, medians with their min-max. Results go to benchmarks/runs/
(``--record``: results/event_codec.json).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np


def main() -> None:
    from benchmarks.common import BenchParser

    parser = BenchParser(__doc__)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()

    from benchmarks.common import machine, record
    from benchmarks.spread import print_spread, repeated
    from deeplens.events import ImageProcessed, decode_event, encode_vector

    now = datetime.now(UTC)
    base = dict(tenant_id="acme", image_id="0" * 32, original_file_name="p.jpg",
                storage_provider="local", storage_path="acme/00/p.jpg", file_size=1,
                mime_type="image/jpeg", sha256="0" * 64, uploaded_at=now, width=640,
                height=480, format="JPEG", validated_at=now, feature_model="ViT-B-32/x",
                processed_at=now)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((64, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def one_run(_: int) -> dict:
        rows = {}
        for version in (1, 2):
            events = [ImageProcessed(**base, schema_version=1,
                                     features=[round(float(x), 8) for x in v]) if version == 1
                      else ImageProcessed(**base, features_f32=encode_vector(v)) for v in vectors]
            start = time.perf_counter()
            raws = [events[i % 64].to_json() for i in range(args.events)]
            encode_us = (time.perf_counter() - start) / args.events * 1e6
            start = time.perf_counter()
            for raw in raws:
                decode_event(ImageProcessed, raw).vector()
            decode_us = (time.perf_counter() - start) / args.events * 1e6
            rows[f"v{version}"] = {"bytes": round(float(np.mean([len(r) for r in raws[:64]]))),
                                   "encode_us": round(encode_us, 1),
                                   "decode_us": round(decode_us, 1)}
        return rows

    figures = repeated(args.repeat, one_run)
    rows = {k: v for k, v in figures.items() if k in ("v1", "v2")}
    print(f"machine: {machine()}; {args.dim}-d vectors, {args.events} events each")
    print("| images.processed | bytes | encode us | decode us |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['bytes']} | {row['encode_us']} | {row['decode_us']} |")
    print_spread(figures)
    print(f"recorded in {record('event_codec', {'dim': args.dim, **figures})}")


if __name__ == "__main__":
    main()
