#!/usr/bin/env bash
# Device-machine run for issue 18: the distributed tests against that machine's torch,
# the gloo benchmark on its CPU cores, and one NCCL rank per GPU. Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.device_count(), 'GPUs', flush=True)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py 2>&1 | tail -25 | tee "$OUT/dist_tests.log"
timeout 300 python3 benchmarks/distributed_load.py --checkpoint /tmp/llama-1.1b --worlds 2,4 2>&1 | tail -20 | tee "$OUT/dist_bench_gloo.log"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
timeout 120 python3 benchmarks/distributed_load.py --checkpoint /tmp/llama-1.1b --worlds "$gpus" --backend nccl \
    --skip-baselines 2>&1 | tail -20 | tee "$OUT/dist_bench_nccl.log"
