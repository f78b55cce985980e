#!/usr/bin/env bash
# The checks that need a CUDA device, in one run (as the device machine gets them):
# the GPU tests, the CUDA scenarios C1-C3, then the whole suite against that
# machine's torch/Transformers. Run from the repository root; logs and result
# files go to $OUT (default benchmarks/results). The suite's run is capped so the
# whole script ends within about ten minutes.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi -L
python3 -c "import sys, torch, transformers, accelerate, safetensors; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'safetensors', safetensors.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -rs tests/test_placement_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
python3 benchmarks/run.py --scenarios "${GPU_SCENARIOS:-C1,C2,C3}" --repeats "${GPU_REPEATS:-3}" --keep 2>&1 \
    | tee "$OUT/gpu_bench.log"
cp benchmarks/results/C*.json "$OUT/" 2>/dev/null
if [[ -n "${SUITE_TIMEOUT:-}" ]]; then
    timeout "$SUITE_TIMEOUT" python3 -m pytest -q -p no:cacheprovider -x -m 'not slow' -n 8 2>&1 | tail -40 \
        | tee "$OUT/suite.log"
fi
