#!/usr/bin/env bash
# The end-to-end loop on the embedded model (SmolLM2-135M-Instruct, CPU):
#   SL-CAI revisions -> SFT;  RL-CAI soft labels -> review ledger (queue decided by the pairs' own
#   human labels) -> export -> reward model, DPO, PPO
# Every step is a real run through Charter's services; curves land in out/loop/*.png.
#   make loop          (or scripts/loop.sh after `make quickstart`'s setup)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CFG=scripts/loop-settings.yaml
OUT=out/loop
mkdir -p "$OUT"

# train NAME SPEC [ARGS...]: one run, its id kept in $OUT/NAME.run; a rerun of the loop skips a
# step whose run already succeeded (its model is there), so an interrupted loop picks up where it was
train() {
  local name=$1 spec=$2
  shift 2
  if [[ -f "$OUT/$name.run" && -f "$OUT/runs/$(cat "$OUT/$name.run")/model/config.json" ]]; then
    echo "(done before: $(cat "$OUT/$name.run"))"
    return
  fi
  "$BIN/charter" train --spec "$spec" -c "$CFG" --plot "$OUT/$name-curves.png" "$@" 2> >(tee "$OUT/$name.log" >&2)
  sed -n 's/^started \(r-[0-9a-f]*\)$/\1/p' "$OUT/$name.log" | tail -1 >"$OUT/$name.run"
}

echo "== 1. SL-CAI: critique and revise 8 red-team prompts"
"$BIN/charter" run pipelines/sl-cai.yaml -c "$CFG"

echo "== 2. SFT on the revisions"
train sft training/sft.yaml
SFT_MODEL="$OUT/runs/$(cat "$OUT/sft.run")/model"

echo "== 3. RL-CAI: the judge labels 32 hh-rlhf pairs into the review ledger"
"$BIN/charter" run pipelines/rl-cai-loop.yaml -c "$CFG"

echo "== 4. Review: the queue decided by hh-rlhf's own annotators (people use the review page);"
echo "        export the accepted labels (human decisions override the AI's)"
"$BIN/python" scripts/replay_reviews.py --database sqlite:///out/loop/review.db \
  --records out/loop/rl-cai/records.jsonl -c "$CFG"
"$BIN/charter" export --database sqlite:///out/loop/review.db --out out/accepted.jsonl -c "$CFG"

echo "== 5. Reward model (soft Bradley-Terry) on the accepted labels"
train rm training/reward-model.yaml
RM=$(cat "$OUT/rm.run")

echo "== 6. DPO from the SFT model"
train dpo training/dpo.yaml --base-model "$SFT_MODEL"

echo "== 7. PPO from the SFT model against the reward model ($RM)"
train ppo training/ppo.yaml --base-model "$SFT_MODEL" --reward-model "$RM"

"$BIN/charter" runs list -c "$CFG"
