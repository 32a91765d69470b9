"""The model-only sweep of ``gpu_bench.py --model-sweep``: CLIP image towers (open_clip,
else timm's identical towers) per dtype and batch, against the card's measured bf16
matmul peak (FLOPs per image counted by torch's FlopCounterMode)."""

from __future__ import annotations

import time
from typing import Any

import torch

TIMM_NAMES = {"ViT-B-32": "vit_base_patch32_clip_224", "ViT-L-14": "vit_large_patch14_clip_224"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device: torch.device, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 2
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def vision_tower(name: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, int, str]:
    try:
        import open_clip

        tower = open_clip.create_model(name, pretrained=None).visual
        size, source = tower.image_size, "open_clip"
        size = size[0] if isinstance(size, tuple | list) else size
    except ImportError:
        import timm

        tower = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=0)
        size, source = 224, "timm"
    return tower.to(device=device, dtype=dtype).eval(), size, source


def flops_per_image(tower: Any, size: int, device: torch.device, dtype: torch.dtype) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        tower(x)
    return float(counter.get_total_flops())


def encode_rate(tower: Any, x: torch.Tensor, reps: int) -> float:
    with torch.inference_mode():
        tower(x)
        sync(x.device)
        start = time.perf_counter()
        for _ in range(reps):
            tower(x)
        sync(x.device)
    return len(x) * reps / (time.perf_counter() - start)


def sweep_rows(device: torch.device, smoke: bool) -> list[dict[str, Any]]:
    models = ["ViT-B-32"] if smoke else ["ViT-B-32", "ViT-L-14"]
    batches = [2] if smoke else [64, 256, 1024]
    peak = matmul_peak_tflops(device, 256 if smoke else 8192)
    print(f"measured bf16 matmul peak {peak:.1f} TFLOP/s", flush=True)
    rows = []
    for name in models:
        for dname, dtype in DTYPES.items():
            if smoke and dname != "bf16":
                continue
            tower, size, source = vision_tower(name, device, dtype)
            flops = flops_per_image(tower, size, device, dtype)
            for batch in batches:
                x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
                try:
                    ips = encode_rate(tower, x, 1 if smoke else 10)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    continue
                rows.append({"model": name, "source": source, "dtype": dname, "batch": batch,
                             "images_per_s": round(ips, 1),
                             "gflops_per_image": round(flops / 1e9, 2),
                             "share_of_peak": round(ips * flops / (peak * 1e12), 3),
                             "bf16_peak_tflops": round(peak, 1)})
                print(rows[-1], flush=True)
            del tower
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
