#!/usr/bin/env bash
# Collect features for every model x dataset, like honest_llama's get_activations.sh.
#   bash get_activations/get_activations.sh                      # SmolLM2, tqa_mc2 + tqa_gen_end_q, all 817 questions
#   MODELS="llama2_chat_7B llama3_8B_instruct" bash get_activations/get_activations.sh --device_map auto
#   SHARDS=2 bash get_activations/get_activations.sh             # two processes per dataset, then merge
# Extra arguments are passed to get_activations.py for every run (e.g. --max_questions 20 --batch_size 16).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
MODELS="${MODELS:-smollm2-135m}"
DATASETS="${DATASETS:-tqa_mc2 tqa_gen_end_q}"
SHARDS="${SHARDS:-1}"

for model in $MODELS; do
  for dataset in $DATASETS; do
    if [ "$SHARDS" -gt 1 ]; then
      pids=()
      for ((i = 0; i < SHARDS; i++)); do
        "$PYTHON" get_activations/get_activations.py --model_name "$model" --dataset_name "$dataset" --shard "$i/$SHARDS" --quiet "$@" &
        pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid"; done
      "$PYTHON" get_activations/get_activations.py --model_name "$model" --dataset_name "$dataset" --merge "$@"
    else
      "$PYTHON" get_activations/get_activations.py --model_name "$model" --dataset_name "$dataset" "$@"
    fi
  done
done
