#!/usr/bin/env bash
# Did training on Charter's own AI labels help the embedded model? (docs/evaluation.md, "Policy
# evaluation"): on-policy RL-CAI labels -> DPO -> `charter eval policy` base vs DPO.
# Every step resumes; a finished DPO run is reused.   scripts/policy_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CFG=evaluations/policy/settings.yaml
OUT=out/policy-demo
mkdir -p "$OUT"

echo "== 1. on-policy AI labels: two samples per red-team prompt, judged by the embedded model"
"$BIN/charter" run evaluations/policy/rl-cai.yaml -c "$CFG"

echo "== 2. DPO on those labels"
if [[ ! -f "$OUT/dpo.run" || ! -f "$OUT/runs/$(cat "$OUT/dpo.run")/model/config.json" ]]; then
  "$BIN/charter" train --spec evaluations/policy/dpo.yaml -c "$CFG" --plot "$OUT/dpo-curves.png" \
    2> >(tee "$OUT/dpo.log" >&2)
  sed -n 's/^started \(r-[0-9a-f]*\)$/\1/p' "$OUT/dpo.log" | tail -1 >"$OUT/dpo.run"
fi
DPO_MODEL="$OUT/runs/$(cat "$OUT/dpo.run")/model"

echo "== 3. charter eval policy: base vs DPO"
sed "s|DPO_MODEL|$DPO_MODEL|" evaluations/policy/eval.yaml >"$OUT/eval.yaml"
"$BIN/charter" eval policy "$OUT/eval.yaml" -c "$CFG"
