"""The TruthfulQA wing: honest_llama's ITI protocol on TruthfulQA (data, prompt sets, MC scoring, CE/KL,
greedy answers and their metrics, judges, the k-fold validation with controls, its report, and the demo)."""
from __future__ import annotations

from .config import RowSpec, ValidationConfig, plan_rows
from .data import TruthfulQA, load_truthfulqa
from .experiment import run_validation
from .fit import FoldProbes, build_intervention, train_fold_probes
from .hf_judge import HFJudge, HFJudges, judge_answers_hf, load_hf_judges
from .prompt_sets import build_prompt_set

__all__ = ["FoldProbes", "HFJudge", "HFJudges", "RowSpec", "TruthfulQA", "ValidationConfig", "build_intervention", "build_prompt_set",
           "judge_answers_hf", "load_hf_judges", "load_truthfulqa", "plan_rows", "run_validation", "train_fold_probes"]
