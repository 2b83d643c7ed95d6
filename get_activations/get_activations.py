"""Collect per-head activations (honest_llama's get_activations.py); a thin wrapper over ``iti collect``.

    python get_activations/get_activations.py --model_name smollm2-135m --dataset_name tqa_mc2
    python get_activations/get_activations.py --model_name llama2_chat_7B --dataset_name tqa_gen_end_q --device_map auto
    python get_activations/get_activations.py ... --shard 0/2   # then: --merge

Run ``--help`` for every option.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["collect", *sys.argv[1:]]))
