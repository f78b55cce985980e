#!/usr/bin/env bash
# One device run for the second wave: the GPU placement/generation tests, quantized weights on CUDA,
# the distributed tests against that machine's torch, and the families/heads/adapters/quantization suites.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_placement_gpu.py 2>&1 | tail -8 | tee "$OUT/gpu_tests.log"
timeout 120 python3 benchmarks/quant_cuda_check.py 2>&1 | tail -8 | tee "$OUT/quant_cuda.log"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py 2>&1 | tail -6 | tee "$OUT/dist_tests.log"
timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_families.py tests/test_heads.py tests/test_adapters*.py \
    tests/test_quantization.py tests/test_packed_sequences.py 2>&1 | tail -12 | tee "$OUT/suites.log"
