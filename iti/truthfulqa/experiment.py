"""k-fold validation of ITI on TruthfulQA (honest_llama's validate_2fold), with controls, sweeps and seeds.

For each fold: probes on the training questions, an intervention, and evaluation on the held-out questions:
MC1/MC2/MC3, CE and KL on neutral text, greedy answers scored by BLEU/ROUGE and, with ``--judge``, True, Info and
True*Info by LLM judges (an endpoint, or in-process with ``--judge hf``).
Every evaluated row is stored as it finishes (``rows/*.json``), so an interrupted run resumes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatureFileError
from ..features import load_features, read_manifest
from ..io import atomic_write_json, atomic_write_text, read_json
from ..locks import output_lock
from .budget import BudgetSearch, alpha_for_budget
from .config import RowSpec, ValidationConfig, plan_rows
from .data import load_truthfulqa
from .fit import FoldProbes, build_intervention, train_fold_probes
from .generation import generate_answers
from .judge import JUDGE_KEYS, Judge, JudgeConfig, check_judge_endpoint
from .lm_cost import NeutralCost, ce_and_kl, load_neutral_texts
from .mc_scoring import mc_metrics, score_choices
from .prompts import generation_prompt, mc_questions, shared_prefix
from .report import plot_results, summarize, summary_markdown

#: ValidationConfig fields that change what a stored row holds; the others choose which rows run (controls,
#: sweeps), how fast (batch_size) or where from (paths, replaced by the content they point at).
RESULT_FIELDS = ("model_name", "dataset_name", "activations_dataset", "num_fold", "val_ratio", "seed", "use_center_of_mass",
                 "use_random_dir", "instruction_prompt", "preset", "max_new_tokens", "ce_samples", "ce_corpus",
                 "tune_on_all_questions", "max_questions", "mc_shift_start")
RUN_RECORD = "run.json"


def run_identity(cfg: ValidationConfig, *, manifests: dict[str, dict[str, Any]] | None = None, tqa=None, model=None) -> dict[str, Any]:
    """What determines every stored row of a run: the result fields of ``cfg`` and content hashes of the feature
    sets (from their manifests, by data set name), the TruthfulQA data and the model weights (each when given)."""
    from ..fingerprint import model_fingerprint, settings_fingerprint

    identity: dict[str, Any] = {f: getattr(cfg, f) for f in RESULT_FIELDS}
    if cfg.kl_budget or cfg.ce_budget:
        identity["budget_texts"] = cfg.budget_texts  # what the alpha of a budget row was searched on
    for name, manifest in (manifests or {}).items():
        identity[f"{name} features_sha256"] = settings_fingerprint({"job": manifest.get("job_id"), "files": manifest["files"]})
    if tqa is not None:
        identity["TruthfulQA data_sha256"] = settings_fingerprint({"refs": [r.__dict__ for r in tqa.refs], "mc": [m.__dict__ for m in tqa.mc]})
    if model is not None:
        identity["model weights_sha256"] = model_fingerprint(model)
    return identity


def _stale_outputs(out: Path) -> list[Path]:
    return [*sorted((out / "rows").glob("*.json")), *sorted(out.glob("intervention_fold*")),
            *[out / n for n in ("summary.json", "summary.md", RUN_RECORD) if (out / n).exists()]]


def claim_output(out: Path, identity: dict[str, Any], force: bool = False) -> None:
    """Make sure ``out`` holds no rows of another run before any is reused: rows stored under other settings (or
    by an older iti that kept no record of them) are refused with what differs, in words, unless ``force``, which
    discards them. Keys missing from ``identity`` (the model, before it is loaded) are not compared."""
    from ..errors import OutputExistsError
    from ..fingerprint import describe_difference

    record = out / RUN_RECORD
    rows = list((out / "rows").glob("*.json"))
    if not rows:
        return
    stored = read_json(record, "validation run record") if record.exists() else None
    if stored is not None:
        stored_cmp = {k: v for k, v in stored.items() if k in identity}
        if describe_difference(stored_cmp, identity) == "nothing":
            return
        why = f"other settings ({describe_difference(stored_cmp, identity)})"
    else:
        why = f"unknown settings (no {RUN_RECORD}: written by an older iti)"
    if not force:
        raise OutputExistsError(f"{out} holds {len(rows)} rows of a run with {why}; pass --force to discard them, "
                                "or choose another --output_dir")
    import shutil

    print(f"[validate] --force: discarding {len(rows)} rows of a run with {why}", flush=True)
    for path in _stale_outputs(out):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _mc_part(model, tokenizer, tqa, test_q, intervention, cfg, texts) -> dict[str, Any]:
    questions = mc_questions(tqa, test_q, cfg.preset, cfg.instruction_prompt)
    t0 = time.perf_counter()
    scores = score_choices(model, tokenizer, questions, prefix=shared_prefix(cfg.preset, cfg.instruction_prompt),
                           intervention=intervention, batch_size=cfg.batch_size, shift_start=cfg.mc_shift_start)
    mc = mc_metrics(questions, scores, cfg.preset)
    out: dict[str, Any] = {"question_ids": [int(q) for q in test_q], "MC1": mc.mc1.tolist(), "MC2": mc.mc2.tolist(), "MC3": mc.mc3.tolist(),
                           "mc_seconds": time.perf_counter() - t0}
    cost = ce_and_kl(model, tokenizer, texts, intervention)
    out.update({"CE": cost.ce, "CE_base": cost.ce_base, "KL": cost.kl})
    return out


def search_alpha(meter: NeutralCost, intervention, spec: RowSpec) -> BudgetSearch:
    """The alpha at which ``intervention`` costs ``spec.budget`` (KL, or CE increase) on the search texts of
    ``meter``, searched from ``spec.alpha``."""
    def cost(alpha: float) -> float:
        c = meter(intervention.with_alpha(alpha))
        return c.kl if spec.budget_metric == "KL" else c.ce - c.ce_base

    assert spec.budget is not None
    return alpha_for_budget(cost, spec.budget, metric=spec.budget_metric, start=spec.alpha or 1.0)


def _generation_part(model, tokenizer, tqa, test_q, intervention, cfg) -> dict[str, Any]:
    from .text_metrics import similarity_scores

    t1 = time.perf_counter()
    prompts = [generation_prompt(tqa.refs[q].question, cfg.preset, cfg.instruction_prompt) for q in test_q]
    answers = generate_answers(model, tokenizer, prompts, intervention=intervention, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    sim = similarity_scores(answers, [tqa.refs[q] for q in test_q])
    return {"answers": answers, "BLEU-acc": sim.bleu_acc.tolist(), "ROUGE-acc": sim.rouge_acc.tolist(), "gen_seconds": time.perf_counter() - t1}


def _row_todo(row: dict[str, Any], spec: RowSpec, judge: Judge | None) -> list[str]:
    """The parts of a row still to compute: MC + CE/KL, greedy answers, judgements (again when another judge
    made the stored ones). Each part is stored as soon as it finishes, so a failure in a later part (a judge that
    is down) loses nothing before it."""
    todo = [] if "MC1" in row else ["mc"]
    if spec.generate and "answers" not in row:
        todo.append("generate")
    if spec.generate and judge is not None and ("generate" in todo or row.get("judge") != judge.identity()):
        todo.append("judge")
    return todo


def prepare_judge(cfg: ValidationConfig) -> Judge | None:
    """The judge ``cfg`` asks for, ready before any row runs: the endpoint checked (reachable, serving both
    judges), or the in-process judges loaded and their tokenizers checked; None without ``--judge`` (or with
    ``--judge endpoint`` and no endpoint configured, which is said)."""
    if not cfg.generate:
        return None  # no answers to judge
    if cfg.judge == "hf":
        from .hf_judge import load_hf_judges

        print(f"[validate] loading the in-process judges {cfg.judge_model} (True) and {cfg.judge_info_model} (Info)", flush=True)
        return load_hf_judges(cfg.judge_model, cfg.judge_info_model, device_map=cfg.judge_device_map, batch_size=cfg.judge_batch_size)
    if cfg.judge != "endpoint":
        return None
    endpoint = JudgeConfig.from_env()
    if endpoint is None:
        print("[validate] --judge given but no judge configured (set ITI_JUDGE_URL, ITI_JUDGE_TRUE_MODEL, ITI_JUDGE_INFO_MODEL, "
              "or use --judge hf): True/Info are skipped", flush=True)
        return None
    check_judge_endpoint(endpoint)
    return endpoint


def check_output(cfg: ValidationConfig, out: str | Path) -> None:
    """Before the model loads: refuse an output directory holding rows of other settings (all but the model
    weights, which :func:`run_validation` compares once the model is loaded)."""
    manifests = {name: read_manifest(cfg.features_path(name)) for name in (cfg.dataset_name, cfg.activations_dataset)}
    tqa = load_truthfulqa(cfg.data_dir, max_questions=cfg.max_questions or None)
    claim_output(Path(out), run_identity(cfg, manifests=manifests, tqa=tqa), cfg.force)


def check_features(cfg: ValidationConfig) -> None:
    """Fail before anything is loaded when the features to fit on are missing, saying how to collect them."""
    for name in (cfg.dataset_name, cfg.activations_dataset):
        if not (cfg.features_path(name) / "manifest.json").exists():
            fdir = cfg.features_path(name).parent
            raise FeatureFileError(
                f"no {name} features for {cfg.model_name} in {fdir}; collect them first: "
                f"python get_activations/get_activations.py --model_name {cfg.model_name} --dataset_name {name}"
            )


def run_validation(model, tokenizer, cfg: ValidationConfig, out_dir: str | Path, *, judge: Judge | None = None) -> dict[str, Any]:
    """Run every fold and row (resuming finished rows), then write the summary, table and plots; impossible
    settings are refused first (:meth:`ValidationConfig.validate`, :func:`check_features`), before anything is
    written. ``judge``: judges already at hand (an :class:`~iti.truthfulqa.hf_judge.HFJudges` or a
    :class:`~iti.truthfulqa.judge.JudgeConfig`), used instead of those ``cfg.judge`` names."""
    cfg.validate()
    check_features(cfg)
    out = Path(out_dir)
    with output_lock(out, "validation output directory"):
        return _run_locked(model, tokenizer, cfg, out, judge)


def _run_locked(model, tokenizer, cfg: ValidationConfig, out: Path, judge: Judge | None) -> dict[str, Any]:
    features = load_features(cfg.features_path(cfg.dataset_name), mmap=False)
    tuning = load_features(cfg.features_path(cfg.activations_dataset), mmap=False)
    tqa = load_truthfulqa(cfg.data_dir, max_questions=cfg.max_questions or None)
    if judge is None:
        judge = prepare_judge(cfg)  # before any row runs, not after the first fold's generation
    manifests = {cfg.dataset_name: features.manifest, cfg.activations_dataset: tuning.manifest}
    identity = run_identity(cfg, manifests=manifests, tqa=tqa, model=model)
    claim_output(out, identity, cfg.force)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.__dict__)
    atomic_write_json(out / RUN_RECORD, identity)
    questions = np.unique(features.question_ids)
    if cfg.max_questions:
        questions = questions[: cfg.max_questions]
    folds = np.array_split(questions, cfg.num_fold)
    texts = load_neutral_texts(cfg.ce_samples, seed=cfg.seed, corpus=cfg.ce_corpus, data_dir=cfg.data_dir)
    meter: NeutralCost | None = None  # the budget search's texts and the plain model's log-probs on them, made once

    def search_meter() -> NeutralCost:
        nonlocal meter
        if meter is None:  # the same seeded order as the reported texts, after them: never among them
            search_texts = load_neutral_texts(cfg.ce_samples + cfg.budget_texts, seed=cfg.seed, corpus=cfg.ce_corpus,
                                              data_dir=cfg.data_dir)[cfg.ce_samples:]
            meter = NeutralCost(model, tokenizer, search_texts)
        return meter
    rows = plan_rows(cfg)
    start = time.perf_counter()
    probes: dict[tuple[int, int], FoldProbes] = {}

    def fold_probes(i: int, seed: int) -> FoldProbes:
        if (i, seed) not in probes:
            train_q = np.concatenate([f for j, f in enumerate(folds) if j != i])
            probes[(i, seed)] = train_fold_probes(features, train_q, val_ratio=cfg.val_ratio, seed=seed)
        return probes[(i, seed)]

    for spec in rows:  # row-major: both folds of a row finish before the next row starts
        for i, test_q in enumerate(folds):
            path = out / "rows" / f"fold{i}_{spec.key}.json"
            row = read_json(path, "validation row") if path.exists() else {}
            todo = _row_todo(row, spec, judge)
            if not todo:
                continue
            intervention = None
            if spec.name != "baseline" and {"mc", "generate"} & set(todo):
                intervention = build_intervention(features, tuning, fold_probes(i, spec.seed), num_heads=spec.num_heads, alpha=spec.alpha,
                                                  model_name=cfg.model_name, direction=spec.direction, heads=spec.heads, seed=spec.seed,
                                                  tune_on_all_questions=cfg.tune_on_all_questions)
                if spec.budget is not None:
                    if "budget_search" not in row:
                        search = search_alpha(search_meter(), intervention, spec)
                        row.update({"alpha_found": search.alpha, "budget_search": search.to_dict()})
                        print(f"[validate]   {spec.budget_metric} budget {spec.budget:g}: alpha {search.alpha:.3g} "
                              f"({search.reached:.4g} on {cfg.budget_texts} search texts, {len(search.trace)} steps)", flush=True)
                    intervention = intervention.with_alpha(row["alpha_found"])
                if spec == rows[1]:
                    intervention.save(out / f"intervention_fold{i}")
            print(f"[validate] {spec.key}, fold {i}: {' + '.join(todo)} ({len(test_q)} test questions, "
                  f"{time.perf_counter() - start:.0f} s so far)", flush=True)
            for part in todo:
                t = time.perf_counter()
                if part == "mc":
                    row.update(_mc_part(model, tokenizer, tqa, test_q, intervention, cfg, texts))
                    row.update({"fold": i, "spec": spec.__dict__, "heads": intervention.heads if intervention else []})
                elif part == "generate":
                    for stale in JUDGE_KEYS:
                        row.pop(stale, None)
                    row.update(_generation_part(model, tokenizer, tqa, test_q, intervention, cfg))
                else:
                    assert judge is not None
                    for stale in JUDGE_KEYS:  # another judge's keys (the raw scores) must not survive
                        row.pop(stale, None)
                    row.update(judge.judge([tqa.refs[q].question for q in test_q], row["answers"]))
                    row["judge"] = judge.identity()
                row["seconds"] = row.get("seconds", 0.0) + time.perf_counter() - t
                atomic_write_json(path, row)  # each part as soon as it is done
    accuracies = [fold_probes(i, cfg.seed).accuracies for i in range(len(folds))]
    summary = summarize(out, rows, cfg)
    summary["runtime_seconds_this_invocation"] = time.perf_counter() - start
    np.save(out / "probe_accuracy.npy", np.mean(accuracies, axis=0))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary, cfg))
    plot_results(out, np.mean(accuracies, axis=0), summary, cfg)
    return summary
