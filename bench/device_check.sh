#!/usr/bin/env bash
# GPU check: the training loop, the torch engine and the fast tests on a CUDA machine.
#
#   bash bench/device_check.sh            # writes logs and run directories under $OUT (default out/device)
#
# Meant for a lent GPU machine without network: it runs from the source tree (PYTHONPATH=src), installs
# wheels found in .whl/ (math-verify and its needs, downloaded here beforehand) and uses a warm-up cache
# in .devcache/ when one is carried. What it checks:
#   1. `asympo train --preset demo` on cuda: sync, async (rollout process on the same GPU), bfloat16;
#   2. bench/bench_generate.py on cuda with a ~200M-parameter random model (KV cache vs none);
#   3. the default test suite under this machine's torch/transformers/Python versions.
set -uo pipefail
source bench/device_env.sh
python3 -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

run() {  # name, timeout, args...
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  timeout "$t" python3 -m asympo train --preset demo --set model.device=cuda --no-progress --out "$OUT/$name" "$@" \
    >"$OUT/$name.log" 2>&1
  echo "== $name: exit $? in $(( $(date +%s) - t0 )) s"; tail -4 "$OUT/$name.log"
}
run sync 100 --mode sync --steps 40 --set eval.every=20
run async 100 --mode async --steps 40 --set eval.every=20
run bf16 80 --mode sync --steps 20 --set eval.every=10 --set model.dtype=bfloat16

echo "== generate bench"
timeout 90 python3 bench/bench_generate.py --device cuda --hidden-size 1024 --layers 16 --dtype bfloat16 \
  --new-tokens 64 --prompts 16 --n 4 --repeats 2 2>&1 | tail -6

echo "== fast tests"
timeout 150 python3 -m pytest -q -n 8 -m "not slow and not integration" -p no:cacheprovider >"$OUT/pytest.log" 2>&1
echo "pytest exit $?"; grep -E "passed|failed|error" "$OUT/pytest.log" | tail -3
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -20 || true
