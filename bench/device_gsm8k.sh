#!/usr/bin/env bash
# GSM8K-shaped training at scale on a GPU machine without network: a random ~74M-parameter model of the
# embedded architecture (no weights to download), the shipped GSM8K data, the math reward in its process
# pool, micro-batches, bfloat16, async and sync. Checks that the pipeline runs at this size and prints where
# a step's time goes (generation vs training). The model is random, so rewards are ~0: not a quality check.
#
#   bash bench/device_gsm8k.sh                        # on the GPU machine (see bench/device_check.sh)
#   DEVICE=cpu HIDDEN=64 LAYERS=2 NEW=16 STEPS=2 bash bench/device_gsm8k.sh    # a quick dry run here
set -uo pipefail
DEVICE=${DEVICE:-cuda}; HIDDEN=${HIDDEN:-768}; LAYERS=${LAYERS:-12}
NEW=${NEW:-256}; STEPS=${STEPS:-8}; DTYPE=${DTYPE:-bfloat16}
source bench/device_env.sh
PY=${PY:-python3}
$PY bench/make_random_model.py "$OUT/model" --hidden-size "$HIDDEN" --layers "$LAYERS" --max-positions 1024
for mode in async sync; do
  t0=$(date +%s)
  timeout ${MODE_TIMEOUT:-240} $PY -m asympo train --preset gsm8k --model "$OUT/model" --mode $mode --steps "$STEPS" \
    --set model.device="$DEVICE" --set model.dtype="$DTYPE" --set task.template=plain \
    --set rollout.max_new_tokens="$NEW" --set learner.micro_batch_size=16 --set eval.limit=32 --set eval.every=0 \
    --set checkpoint_every=0 --set report=false --no-progress --out "$OUT/gsm8k-$mode" >"$OUT/gsm8k-$mode.log" 2>&1
  echo "== gsm8k $mode: exit $? in $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/gsm8k-$mode.log"
  $PY - "$OUT/gsm8k-$mode/metrics.jsonl" <<'PYEOF'
import json, sys
try:
    recs = [json.loads(x) for x in open(sys.argv[1])]
except OSError:
    sys.exit("no metrics")
tail = recs[1:] or recs  # step 0 includes start-up
mean = lambda k: sum(r.get(k, 0.0) for r in tail) / len(tail)
print(f"steps {len(recs)}; per step (after the first): generate {mean('time/generate'):.2f}s "
      f"train {mean('time/train'):.2f}s wait {mean('time/wait'):.2f}s; "
      f"{mean('throughput/tokens_per_s'):.0f} tokens/s; response tokens/step {mean('batch/response_tokens'):.0f}; "
      f"staleness {mean('staleness/mean'):.2f}; reward timeouts {sum(r.get('reward/timeouts', 0) for r in recs):.0f}")
open(sys.argv[1] + ".tps", "w").write(str(mean("throughput/tokens_per_s")))
PYEOF
done
$PY -c "import sys; a, s = (float(open(f).read()) for f in sys.argv[1:]); print(f'async/sync tokens/s: {a / s:.2f}x')" \
  "$OUT/gsm8k-async/metrics.jsonl.tps" "$OUT/gsm8k-sync/metrics.jsonl.tps" || true
