"""k-fold validation of ITI on TruthfulQA (honest_llama's validate_2fold), with controls, sweeps and seeds.

For each fold: probes on the training questions, an intervention, and evaluation on the held-out questions:
MC1/MC2/MC3, CE and KL on neutral text (``ce_corpus``: the offline IMDB sample unless ``owt``, the original's
OpenWebText), greedy answers scored by BLEU, ROUGE-1 (honest_llama's ``rouge1 acc``) and ROUGE-L and, with
``--judge``, True and Info by LLM judges (an endpoint, or in-process with ``--judge hf``), reported as honest_llama's
True*Info (mean(True) x mean(Info)) and the per-answer True&Info.
Every evaluated row is stored as it finishes (``rows/*.json``), so an interrupted run resumes.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..architectures import model_layout
from ..errors import FeatureFileError, NonFiniteInputError
from ..features import UNRECORDED_WEIGHTS, FeatureSet, check_features_weights, load_features, read_manifest
from ..fingerprint import model_fingerprint
from ..intervention import Intervention
from ..io import atomic_write_json, atomic_write_text, read_json
from ..probes import save_probes
from ..run_directory import RunDirectory
from ..steering import Steering
from .budget import BudgetSearch, alpha_for_budget
from .config import RowSpec, ValidationConfig, plan_rows
from .data import load_truthfulqa
from .fit import (
    FoldProbes,
    build_intervention,
    build_residual_steering,
    check_features_geometry,
    train_fold_layer_probes,
    train_fold_probes,
)
from .generation import generate_answers
from .judge import JUDGE_KEYS, Judge, JudgeConfig, check_judge_endpoint
from .lm_cost import NeutralCost, ce_and_kl, load_neutral_texts
from .mc_scoring import mc_metrics, score_choices
from .prompts import MCQuestion, few_shot_text, generation_prompt, mc_questions, shared_prefix
from .report import plot_results, summarize, summary_markdown
from .transfer import TransferData, length_order, load_transfer, transfer_questions

#: ValidationConfig fields that change what a stored row holds; the others choose which rows run (controls,
#: sweeps), how fast (batch_size) or where from (paths, replaced by the content they point at).
RESULT_FIELDS = ("model_name", "dataset_name", "activations_dataset", "num_fold", "val_ratio", "seed", "use_center_of_mass",
                 "use_random_dir", "instruction_prompt", "preset", "max_new_tokens", "ce_samples", "ce_corpus",
                 "tune_on_all_questions", "max_questions", "mc_shift_start")
RUN_RECORD = "run.json"


def run_identity(cfg: ValidationConfig, *, manifests: dict[str, dict[str, Any]] | None = None, tqa=None, model=None,
                 weights: str | None = None) -> dict[str, Any]:
    """What determines every stored row of a run: the result fields of ``cfg`` and content hashes of the feature
    sets (from their manifests, by data set name), the TruthfulQA data, the model weights and the dtype the model
    computes in (each when given; ``weights``: the model's fingerprint, when already computed)."""
    from ..fingerprint import compute_dtype, model_fingerprint, settings_fingerprint

    identity: dict[str, Any] = {f: getattr(cfg, f) for f in RESULT_FIELDS}
    if cfg.kl_budget or cfg.ce_budget:
        identity["budget_texts"] = cfg.budget_texts  # what the alpha of a budget row was searched on
    if cfg.model_prefix:  # the evaluated weights are the baked copy's (their hash below), the features the base model's
        identity["model_prefix"] = cfg.model_prefix
    for name, manifest in (manifests or {}).items():
        identity[f"{name} features_sha256"] = settings_fingerprint({"job": manifest.get("job_id"), "files": manifest["files"]})
    if tqa is not None:
        identity["TruthfulQA data_sha256"] = settings_fingerprint({"refs": [r.__dict__ for r in tqa.refs], "mc": [m.__dict__ for m in tqa.mc]})
    if model is not None:
        identity["model weights_sha256"] = weights or model_fingerprint(model)
        identity["compute_dtype"] = compute_dtype(model)  # what --dtype resolved to: float32 and bfloat16 rows differ
    return identity


def run_directory(out: str | Path) -> RunDirectory:
    """The validation output directory: ``run.json`` records the run's identity (:func:`run_identity`); its rows,
    saved interventions and summaries are the outputs ``--force`` removes. A record beside no row holds no run yet."""
    return RunDirectory(Path(out), "validation run", record=RUN_RECORD, record_needs_outputs=True,
                        outputs=("rows/*.json", "intervention_fold*", "probes_fold*", "summary.json", "summary.md"))


def _mc_part(model, tokenizer, tqa, test_q, intervention, cfg, texts, shots: str, instruction: str) -> dict[str, Any]:
    questions = mc_questions(tqa, test_q, cfg.preset, instruction, shots)
    t0 = time.perf_counter()
    scores = score_choices(model, tokenizer, questions, prefix=shared_prefix(cfg.preset, instruction, shots),
                           intervention=intervention, batch_size=cfg.batch_size, shift_start=cfg.mc_shift_start)
    mc = mc_metrics(questions, scores, cfg.preset)
    out: dict[str, Any] = {"question_ids": [int(q) for q in test_q], "MC1": mc.mc1.tolist(), "MC2": mc.mc2.tolist(), "MC3": mc.mc3.tolist(),
                           "mc_seconds": time.perf_counter() - t0}
    cost = ce_and_kl(model, tokenizer, texts, intervention)
    out.update({"CE": cost.ce, "CE_base": cost.ce_base, "KL": cost.kl})
    return out


def at_alpha(value, alpha: float):
    """``value`` at strength ``alpha``: an Intervention's alpha replaced, a Steering (fitted at strength 1) scaled."""
    return value.with_alpha(alpha) if hasattr(value, "with_alpha") else value * alpha


def search_alpha(meter: NeutralCost, intervention, spec: RowSpec) -> BudgetSearch:
    """The alpha at which ``intervention`` costs ``spec.budget`` (KL, or CE increase) on the search texts of
    ``meter``, searched from ``spec.alpha``."""
    def cost(alpha: float) -> float:
        c = meter(at_alpha(intervention, alpha))
        return c.kl if spec.budget_metric == "KL" else c.ce - c.ce_base

    assert spec.budget is not None
    return alpha_for_budget(cost, spec.budget, metric=spec.budget_metric, start=spec.alpha or 1.0)


def _generation_part(model, tokenizer, tqa, test_q, intervention, cfg, shots: str, instruction: str) -> dict[str, Any]:
    from .text_metrics import similarity_scores

    t1 = time.perf_counter()
    prompts = [generation_prompt(tqa.refs[q].question, cfg.preset, instruction, shots) for q in test_q]
    answers = generate_answers(model, tokenizer, prompts, intervention=intervention, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    sim = similarity_scores(answers, [tqa.refs[q] for q in test_q])
    return {"answers": answers, **sim.per_answer(), "gen_seconds": time.perf_counter() - t1}


def _transfer_questions(data: TransferData, cfg: ValidationConfig) -> int:
    """How many questions of a transfer set a run scores: the first ``--eval_max_questions``, else all."""
    return min(len(data), cfg.eval_max_questions or len(data))


def _transfer_current(done: dict[str, Any] | None, data: TransferData, cfg: ValidationConfig) -> bool:
    """Whether a stored transfer result is of this data and this question count (else it is scored again)."""
    return done is not None and done.get("data_sha256") == data.sha256 and done.get("questions") == _transfer_questions(data, cfg)


def _transfer_mc_questions(data: TransferData, cfg: ValidationConfig) -> tuple[str, list[MCQuestion]]:
    """The shared prefix and the two-candidate MC questions a run scores on a transfer set."""
    prefix = shared_prefix(cfg.preset, cfg.instruction_prompt)
    return prefix, transfer_questions(data, prefix, range(_transfer_questions(data, cfg)))


def _transfer_part(model, tokenizer, data: TransferData, intervention, cfg) -> dict[str, Any]:
    """One transfer set scored under the row's steering (:mod:`iti.truthfulqa.transfer`): per question whether the
    first gold answer outscores the false one, and the margin between their summed log-probabilities."""
    t = time.perf_counter()
    prefix, questions = _transfer_mc_questions(data, cfg)
    n = len(questions)
    scores = score_choices(model, tokenizer, questions, prefix=prefix, intervention=intervention, batch_size=cfg.batch_size,
                           shift_start=cfg.mc_shift_start)
    return {"correct": mc_metrics(questions, scores).mc1.tolist(), "margin": [float(s[0] - s[1]) for s in scores],
            "false_is_gold": [data.items[i].false_is_gold for i in range(n)], "questions": n,
            "data_sha256": data.sha256, "origin": data.origin, "seconds": time.perf_counter() - t}


def _transfer_todo(row: dict[str, Any], spec: RowSpec, transfer: dict[str, TransferData], cfg: ValidationConfig) -> list[str]:
    """The transfer sets still to score for a row (again when the stored result is of other data or another
    question count); few-shot and instruction rows are TruthfulQA prompting baselines and are not transferred."""
    if spec.prompted:
        return []
    return [f"transfer:{name}" for name, data in transfer.items() if not _transfer_current(row.get("transfer", {}).get(name), data, cfg)]


def _rescore_part(tqa, test_q, row: dict[str, Any]) -> dict[str, Any]:
    """Stored answers scored again under today's names ("rouge1 acc", "ROUGE-L acc"): rows of an older iti kept
    only the ROUGE-Lsum accuracy, as "ROUGE-acc"; no model is needed."""
    from .text_metrics import similarity_scores

    row.pop("ROUGE-acc", None)
    return similarity_scores(row["answers"], [tqa.refs[q] for q in test_q]).per_answer()


def _row_todo(row: dict[str, Any], spec: RowSpec, judge: Judge | None, transfer_todo: Sequence[str] = ()) -> list[str]:
    """The parts of a row still to compute: MC + CE/KL, greedy answers, judgements (again when another judge
    made the stored ones). Each part is stored as soon as it finishes, so a failure in a later part (a judge that
    is down) loses nothing before it."""
    todo = [] if "MC1" in row else ["mc"]
    if spec.generate and "answers" not in row:
        todo.append("generate")
    elif spec.generate and "rouge1 acc" not in row:
        todo.append("rescore")  # answers stored by an older iti, without honest_llama's rouge1 acc
    if spec.generate and judge is not None and ("generate" in todo or row.get("judge") != judge.identity()):
        todo.append("judge")
    return todo + list(transfer_todo)


def _copy_plain_transfer(row: dict[str, Any], fold0: Path, part: str, transfer: dict[str, TransferData],
                         cfg: ValidationConfig) -> bool:
    """Copy a plain row's transfer result from its fold-0 file (the same model on the same questions, scored just
    before); whether it was there to copy."""
    if not part.startswith("transfer:") or not fold0.is_file():
        return False
    name = part.split(":", 1)[1]
    done = read_json(fold0, "validation row").get("transfer", {}).get(name)
    if not _transfer_current(done, transfer[name], cfg):
        return False
    row.setdefault("transfer", {})[name] = done
    return True


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
    endpoint = (JudgeConfig.from_names(cfg.judge_name, cfg.info_name) if cfg.judge_name is not None and cfg.info_name is not None
                else JudgeConfig.from_env())
    if endpoint is None:
        print("[validate] --judge given but no judge configured (set ITI_JUDGE_URL, ITI_JUDGE_TRUE_MODEL, ITI_JUDGE_INFO_MODEL, "
              "or use --judge hf): True/Info are skipped", flush=True)
        return None
    check_judge_endpoint(endpoint)
    return endpoint


def check_output(cfg: ValidationConfig, out: str | Path) -> None:
    """Before the model loads: refuse an output directory holding rows of other settings (all but the model
    weights and dtype, which :func:`run_validation` compares once the model is loaded). Nothing is deleted here:
    ``--force`` discards only in :func:`run_validation`, under the output lock, which this takes first, so a run
    writing there now refuses this one at once and loses nothing."""
    manifests = {name: read_manifest(cfg.features_path(name)) for name in (cfg.dataset_name, cfg.activations_dataset)}
    tqa = load_truthfulqa(cfg.data_dir, max_questions=cfg.max_questions or None)
    identity = run_identity(cfg, manifests=manifests, tqa=tqa)
    if not Path(out).is_dir():
        return  # nothing there to refuse (and no directory made before the model loads)
    with run_directory(out).locked() as directory:
        directory.check(identity, force=cfg.force)


def check_features(cfg: ValidationConfig) -> None:
    """Fail before anything is loaded when the features to fit on are missing, saying how to collect them."""
    for name in (cfg.dataset_name, cfg.activations_dataset):
        if not (cfg.features_path(name) / "manifest.json").exists():
            fdir = cfg.features_path(name).parent
            raise FeatureFileError(
                f"no {name} features for {cfg.model_name} in {fdir}; collect them first: "
                f"python get_activations/get_activations.py --model_name {cfg.model_name} --dataset_name {name}"
            )


def check_finite_features(cfg: ValidationConfig, features: FeatureSet, tuning: FeatureSet, questions: np.ndarray) -> None:
    """Before any row runs: refuse NaN or infinite values in the feature rows this run fits on (those of
    ``questions``; every tuning row with ``tune_on_all_questions``), naming the rows as they are in the file, their
    TruthfulQA question ids and (layer, head)s, and the command that collects the features again."""
    for fs in (features, tuning):
        used = np.ones(len(fs), dtype=bool) if fs is tuning and cfg.tune_on_all_questions else np.isin(fs.question_ids, questions)
        bad = np.zeros(len(fs), dtype=bool)
        for start in range(0, len(fs), 256):  # row blocks: never a full-size copy of the features
            block = np.asarray(fs.head_wise[start : start + 256])
            bad[start : start + 256] = ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
        rows = np.flatnonzero(bad & used)
        if not len(rows):
            continue
        heads = sorted({(int(layer), int(h)) for _, layer, h in np.argwhere(~np.isfinite(np.asarray(fs.head_wise[rows])).all(axis=-1))})
        more = lambda xs: f"{list(xs)[:10]}{' ...' if len(xs) > 10 else ''}"  # noqa: E731
        name = fs.manifest["dataset"]["name"]
        where = f" --output_dir {cfg.features_dir}" if cfg.features_dir else ""
        raise NonFiniteInputError(
            f"{fs.path / fs.manifest['files']['head_wise']['file']} holds NaN or infinite values in {len(rows)} of the "
            f"{int(used.sum())} rows this run uses: file rows {more(rows.tolist())} (TruthfulQA question ids "
            f"{more(sorted(set(fs.question_ids[rows].tolist())))}) at (layer, head)s {more(heads)}; probes, directions and "
            "stds fitted on them would come out NaN. Collect these features again (in float32, in case float16 overflowed): "
            f"python get_activations/get_activations.py --model_name {cfg.model_name} --dataset_name {name} "
            f"--save_dtype float32 --force{where}")


def run_validation(model, tokenizer, cfg: ValidationConfig, out_dir: str | Path, *, judge: Judge | None = None) -> dict[str, Any]:
    """Run every fold and row (resuming finished rows), then write the summary, table and plots; impossible
    settings are refused first (:meth:`ValidationConfig.validate`, :func:`check_features`), before anything is
    written. ``judge``: judges already at hand (an :class:`~iti.truthfulqa.hf_judge.HFJudges` or a
    :class:`~iti.truthfulqa.judge.JudgeConfig`), used instead of those ``cfg.judge`` names."""
    cfg.validate()
    check_features(cfg)
    directory = run_directory(out_dir)
    with directory.locked():
        return _run_locked(model, tokenizer, cfg, directory, judge)


def _run_locked(model, tokenizer, cfg: ValidationConfig, directory: RunDirectory, judge: Judge | None) -> dict[str, Any]:
    out = directory.path
    residual = any(spec.site == "resid_post" for spec in plan_rows(cfg))  # CAA / RepE rows read the residual stream
    features = load_features(cfg.features_path(cfg.dataset_name), mmap=False, layer_wise=residual)
    tuning = load_features(cfg.features_path(cfg.activations_dataset), mmap=False)
    check_features_geometry(model_layout(model).geometry, cfg.model_name, features, tuning)  # not at the first steered row
    tqa = load_truthfulqa(cfg.data_dir, max_questions=cfg.max_questions or None)
    weights = model_fingerprint(model)
    features_weights = check_features_weights({str(fs.path): fs.manifest for fs in (features, tuning)}, model,
                                              allow_other=cfg.features_from_other_weights, current=weights)
    if features_weights == UNRECORDED_WEIGHTS:
        print("[validate] the features manifests record no weights fingerprint (an older iti, or imported): cannot check "
              "that they come from this model's weights", flush=True)
    questions = np.unique(features.question_ids)
    if cfg.max_questions:
        questions = questions[: cfg.max_questions]
    check_finite_features(cfg, features, tuning, questions)
    if judge is None:
        judge = prepare_judge(cfg)  # before any row runs, not after the first fold's generation
    manifests = {cfg.dataset_name: features.manifest, cfg.activations_dataset: tuning.manifest}
    identity = run_identity(cfg, manifests=manifests, tqa=tqa, model=model, weights=weights)
    extra = {"features_weights": features_weights}
    if cfg.model_prefix:  # honest_llama's --model_prefix: these weights, the base model's features
        extra["evaluated_model"] = f"{cfg.model_prefix}{cfg.model_name} (features, probes and directions of {cfg.model_name})"
    directory.claim(identity, force=cfg.force, extra=extra)  # recorded, not compared
    (out / "rows").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.__dict__)
    folds = np.array_split(questions, cfg.num_fold)
    transfer = {name: load_transfer(name, cfg.data_dir) for name in cfg.eval_dataset}
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
    probes: dict[tuple[int, int, bool], FoldProbes] = {}

    def fold_probes(i: int, seed: int, layers: bool = False) -> FoldProbes:
        """The fold's probes per head, or per layer on the residual stream (``layers``), made once each."""
        if (i, seed, layers) not in probes:
            train_q = np.concatenate([f for j, f in enumerate(folds) if j != i])
            fit = train_fold_layer_probes if layers else train_fold_probes
            probes[(i, seed, layers)] = fit(features, train_q, val_ratio=cfg.val_ratio, seed=seed)
        return probes[(i, seed, layers)]

    for spec in rows:  # row-major: both folds of a row finish before the next row starts
        for i, test_q in enumerate(folds):
            path = out / "rows" / f"fold{i}_{spec.key}.json"
            row = read_json(path, "validation row") if path.exists() else {}
            if "budget_search" in row:  # a stored search that missed its budget is no more cost-matched than a new one
                BudgetSearch.from_dict(row["budget_search"]).check(f"row {spec.key}, fold {i}")
            todo = _row_todo(row, spec, judge, _transfer_todo(row, spec, transfer, cfg))
            if not todo:
                continue
            if not spec.steers and i > 0:  # the plain model scores a transfer set the same in every fold: copied
                copied = [p for p in todo if _copy_plain_transfer(row, out / "rows" / f"fold0_{spec.key}.json", p, transfer, cfg)]
                if copied:
                    atomic_write_json(path, row)
                    todo = [p for p in todo if p not in copied]
                    if not todo:
                        continue
            needs_model = {"mc", "generate"} & set(todo) or any(p.startswith("transfer:") for p in todo)
            intervention: Intervention | Steering | None = None
            if spec.site == "resid_post" and needs_model:
                intervention = build_residual_steering(features, fold_probes(i, spec.seed, layers=True), method=spec.direction,
                                                       model_name=cfg.model_name, seed=spec.seed)
            elif spec.steers and needs_model:
                intervention = build_intervention(features, tuning, fold_probes(i, spec.seed), num_heads=spec.num_heads, alpha=spec.alpha,
                                                  model_name=cfg.model_name, method=spec.direction, selector=spec.selector, seed=spec.seed,
                                                  tune_on_all_questions=cfg.tune_on_all_questions)
            if intervention is not None and spec.budget is not None:
                same = out / "rows" / f"fold{i}_{replace(spec, name='ITI', shots=0).key}.json" if spec.shots else None
                if same is not None and "budget_search" not in row and same.is_file():  # few-shot + ITI: the ITI row's alpha
                    found = read_json(same, "validation row")
                    if "budget_search" in found:
                        row.update({"alpha_found": found["alpha_found"], "budget_search": found["budget_search"]})
                if "budget_search" not in row:
                    search = search_alpha(search_meter(), intervention, spec).check(f"row {spec.key}, fold {i}")
                    row.update({"alpha_found": search.alpha, "budget_search": search.to_dict()})
                    print(f"[validate]   {spec.budget_metric} budget {spec.budget:g}: alpha {search.alpha:.3g} "
                          f"({search.reached:.4g} on {cfg.budget_texts} search texts, {len(search.trace)} steps)", flush=True)
                intervention = at_alpha(intervention, row["alpha_found"])
            if intervention is not None and spec == rows[1]:
                intervention.meta["features_weights"] = features_weights  # fitted on features of the model's weights?
                intervention.save(out / f"intervention_fold{i}")
            shots = ""
            if spec.shots:  # drawn from this fold's training questions only
                train_q = np.concatenate([f for j, f in enumerate(folds) if j != i])
                shots = few_shot_text(tqa, train_q, spec.shots, seed=spec.seed)
            instruction = spec.instruction or cfg.instruction_prompt  # instruction rows: another variant
            print(f"[validate] {spec.key}, fold {i}: {' + '.join(todo)} ({len(test_q)} "
                  f"test questions, {time.perf_counter() - start:.0f} s so far)", flush=True)
            for part in todo:
                t = time.perf_counter()
                if part == "mc":
                    row.update(_mc_part(model, tokenizer, tqa, test_q, intervention, cfg, texts, shots, instruction))
                    row.update({"fold": i, "spec": spec.__dict__, "heads": getattr(intervention, "heads", [])})
                    if isinstance(intervention, Steering):
                        row["layers"] = intervention.layers(spec.site)
                elif part == "generate":
                    for stale in JUDGE_KEYS:
                        row.pop(stale, None)
                    row.update(_generation_part(model, tokenizer, tqa, test_q, intervention, cfg, shots, instruction))
                elif part == "rescore":
                    row.update(_rescore_part(tqa, test_q, row))
                elif part.startswith("transfer:"):
                    name = part.split(":", 1)[1]
                    row.setdefault("transfer", {})[name] = _transfer_part(model, tokenizer, transfer[name], intervention, cfg)
                else:
                    assert judge is not None
                    for stale in JUDGE_KEYS:  # another judge's keys (the raw scores) must not survive
                        row.pop(stale, None)
                    row.update(judge.judge([tqa.refs[q].question for q in test_q], row["answers"]))
                    row["judge"] = judge.identity()
                row["seconds"] = row.get("seconds", 0.0) + time.perf_counter() - t
                atomic_write_json(path, row)  # each part as soon as it is done
    accuracies = [fold_probes(i, cfg.seed).accuracies for i in range(len(folds))]
    for i in range(len(folds)):  # honest_llama's save_probes, as safetensors + JSON (iti.probes.load_probes reads them)
        save_probes(fold_probes(i, cfg.seed).probes, out / f"probes_fold{i}")
    lengths = {name: length_order(tokenizer, _transfer_mc_questions(data, cfg)[1]) for name, data in transfer.items()}
    summary = summarize(out, rows, cfg, lengths)
    summary["runtime_seconds_this_invocation"] = time.perf_counter() - start
    np.save(out / "probe_accuracy.npy", np.mean(accuracies, axis=0))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary, cfg))
    plot_results(out, np.mean(accuracies, axis=0), summary, cfg)
    return summary
