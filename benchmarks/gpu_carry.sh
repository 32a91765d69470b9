#!/bin/sh
# Wheels gpu_bench.py needs on a lent card whose image has torch, torchvision, timm
# (hence huggingface_hub, safetensors, pyyaml), numpy and Pillow but not open_clip or
# pydantic. Versions from constraints.txt; the two compiled ones for CPython 3.10-3.13
# (the card's Python is not known in advance). Writes benchmarks/runs/wheels (git
# ignores it; ~15 MB, under the 64 MiB a device run may carry). Then, on the card:
#   pip install --no-index --no-deps --find-links benchmarks/runs/wheels \
#       open_clip_torch ftfy wcwidth regex pydantic pydantic_core pydantic_settings \
#       annotated_types typing_inspection python_dotenv
#   python benchmarks/gpu_bench.py --out "$OUT/gpu.json"
set -eu
cd "$(dirname "$0")/.."
dest=benchmarks/runs/wheels
mkdir -p "$dest"
pin() { grep -iE "^$(echo "$1" | sed "s/[-_]/[-_]/g")==" constraints.txt | head -1; }
pip="${PIP:-.venv/bin/pip}"
$pip download -q --no-deps --only-binary=:all: -d "$dest" \
    "$(pin open_clip_torch)" "$(pin ftfy)" "$(pin wcwidth)" "$(pin pydantic)" \
    "$(pin pydantic_settings)" "$(pin annotated_types)" "$(pin typing_inspection)" \
    "$(pin python_dotenv)"
for py in 310 311 312 313; do
    for pkg in regex pydantic_core; do  # the pinned build, else the newest for that Python
        for want in "$(pin $pkg)" "$pkg"; do
            $pip download -q --no-deps --only-binary=:all: --python-version "$py" \
                --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
                --platform manylinux_2_28_x86_64 -d "$dest" "$want" 2>/dev/null && break
        done
    done
done
du -sh "$dest"
