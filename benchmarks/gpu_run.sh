#!/bin/sh
# The device check of issue 26, ready to run first on a lent card (device tool `run`,
# carry ["benchmarks/runs/wheels"], made here by benchmarks/gpu_carry.sh):
#   sh benchmarks/gpu_run.sh
# Installs the carried wheels where open_clip or pydantic is missing, then the whole
# Embedder per decoder (gpu_bench.py; ~1-2 minutes on an H200) into $OUT/gpu.json.
set -eu
cd "$(dirname "$0")/.."
python -c "import open_clip, pydantic_settings" 2>/dev/null || python -m pip install -q \
    --no-index --no-deps --find-links benchmarks/runs/wheels open_clip_torch ftfy wcwidth \
    regex pydantic pydantic_core pydantic_settings annotated_types typing_inspection \
    python_dotenv
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
timeout 280 python benchmarks/gpu_bench.py --out "${OUT:-benchmarks/runs}/gpu.json"
