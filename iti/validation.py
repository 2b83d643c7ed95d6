"""k-fold validation of ITI on TruthfulQA (honest_llama's validate_2fold), with controls, sweeps and seeds.

For each fold: probes on the training questions, an intervention, and evaluation on the held-out questions:
MC1/MC2/MC3, CE and KL on neutral text, greedy answers scored by BLEU/ROUGE (and an LLM judge if configured).
Every evaluated row is stored as it finishes (``rows/*.json``), so an interrupted run resumes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatureFileError
from .features import load_features, read_manifest
from .fit import FoldProbes, build_intervention, train_fold_probes
from .generation import generate_answers
from .io import atomic_write_json, atomic_write_text, read_json
from .judge import JudgeConfig, check_judge_endpoint, judge_answers
from .lm_cost import ce_and_kl, load_neutral_texts
from .locks import output_lock
from .mc_scoring import mc_metrics, score_choices
from .options import (TRUTHFULQA_QUESTIONS, check_each, check_existing_path, check_finite_nonneg, check_folds,
                      check_positive_int, check_range, check_seed)
from .stats import bootstrap_ci, paired_bootstrap_ci
from .tqa_prompts import generation_prompt, mc_questions, shared_prefix
from .truthfulqa import load_truthfulqa


@dataclass
class ValidationConfig:
    """Settings of one ``iti validate`` run: what to fit on, the controls, sweeps and seeds, and what to evaluate."""
    model_name: str = "smollm2-135m"
    dataset_name: str = "tqa_mc2"
    activations_dataset: str = "tqa_gen_end_q"
    num_heads: int = 48
    alpha: float = 15.0
    num_fold: int = 2
    val_ratio: float = 0.2
    seed: int = 42
    use_center_of_mass: bool = False
    use_random_dir: bool = False
    instruction_prompt: str = "default"
    preset: str = "qa"
    judge: bool = False
    control_seeds: list[int] = field(default_factory=lambda: [42])
    sweep_alphas: list[float] = field(default_factory=list)
    sweep_heads: list[int] = field(default_factory=list)
    generate: bool = True
    generate_controls: bool = False
    max_new_tokens: int = 50
    ce_samples: int = 100
    ce_corpus: str = "imdb"
    tune_on_all_questions: bool = False
    max_questions: int | None = None
    features_dir: str | None = None
    data_dir: str | None = None
    batch_size: int = 16
    force: bool = False

    def validate(self) -> None:
        """Refuse impossible settings with one :class:`~iti.errors.InvalidOptionError` naming the option, before
        anything is loaded or written. Reads only the features manifest (for the model's layers x heads and the
        number of questions; without one, ``max_questions`` or TruthfulQA's 817 questions)."""
        check_finite_nonneg("alpha", self.alpha)
        check_each(check_finite_nonneg, "sweep_alphas", self.sweep_alphas)
        check_seed("seed", self.seed)
        check_each(check_seed, "control_seeds", self.control_seeds)
        for name in ("batch_size", "max_new_tokens", "ce_samples"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("max_questions", self.max_questions, none_ok=True)
        check_existing_path("features_dir", self.features_dir)
        if self.data_dir is not None:
            from .paths import data_search

            data_search(self.data_dir)  # the one check of --data_dir (used only after the model loads)
        manifest_path = self.features_path(self.dataset_name) / "manifest.json"
        manifest = read_manifest(manifest_path.parent) if manifest_path.is_file() else None
        total = None
        if manifest is not None:
            from .architectures import HeadGeometry

            total = HeadGeometry.from_dict(manifest["model"]["geometry"]).num_total_heads
        why = f"the layers x heads of {self.model_name}" if total else None
        check_range("num_heads", self.num_heads, 1, total, integer=True, why=why)
        check_each(check_range, "sweep_heads", self.sweep_heads, lo=1, hi=total, integer=True, why=why)
        if manifest is not None:
            available = len(set(manifest["question_ids"]))
            source = f"the {self.dataset_name} features"
        else:
            available, source = TRUTHFULQA_QUESTIONS, "TruthfulQA"
        if self.max_questions is not None and self.max_questions <= available:
            n, source, option = self.max_questions, "--max_questions", "max_questions"
        else:
            n, option = available, "max_questions" if manifest is None else "dataset_name"
        check_folds(n, self.num_fold, self.val_ratio, questions_option=option, source=source)

    def features_path(self, dataset: str) -> Path:
        """The features directory of ``dataset`` for this model: ``<features_dir>/<model_name>_<dataset>``."""
        from .paths import features_dir

        return (Path(self.features_dir) if self.features_dir else features_dir()) / f"{self.model_name}_{dataset}"

    @property
    def direction(self) -> str:
        """The direction method: "random" with use_random_dir, else "mass_mean" with use_center_of_mass, else
        "probe"."""
        if self.use_random_dir:
            return "random"
        return "mass_mean" if self.use_center_of_mass else "probe"


@dataclass(frozen=True)
class RowSpec:
    """One evaluated configuration."""

    name: str  # baseline | ITI | random heads | random direction
    alpha: float
    num_heads: int
    seed: int
    heads: str = "top"
    direction: str = "mass_mean"
    generate: bool = False

    @property
    def key(self) -> str:
        """File-safe id of the row (e.g. ``ITI_a15_k48_s42``); its results go to rows/fold<i>_<key>.json."""
        return f"{self.name.replace(' ', '-')}_a{self.alpha:g}_k{self.num_heads}_s{self.seed}"


def plan_rows(cfg: ValidationConfig) -> list[RowSpec]:
    """The rows to evaluate, in order: baseline, then per seed ITI and the random-heads and random-direction
    controls, with the alpha and head-count sweeps after the main seed."""
    d = cfg.direction
    heads = "random" if cfg.use_random_dir else "top"
    rows = [RowSpec("baseline", 0.0, 0, cfg.seed, generate=cfg.generate)]
    # the main seed first, then the sweeps, then the other seeds: an interrupted run has the key rows first
    seeds = [cfg.seed] + [s for s in cfg.control_seeds if s != cfg.seed]
    for i, s in enumerate(seeds):
        rows.append(RowSpec("ITI", cfg.alpha, cfg.num_heads, s, heads, d, generate=cfg.generate and s == cfg.seed))
        rows.append(RowSpec("random heads", cfg.alpha, cfg.num_heads, s, "random", d if d != "random" else "mass_mean", generate=cfg.generate_controls))
        rows.append(RowSpec("random direction", cfg.alpha, cfg.num_heads, s, "top", "random", generate=cfg.generate_controls))
        if i == 0:
            rows += [RowSpec("ITI", a, cfg.num_heads, cfg.seed, heads, d) for a in cfg.sweep_alphas if a != cfg.alpha]
            rows += [RowSpec("ITI", cfg.alpha, k, cfg.seed, heads, d) for k in cfg.sweep_heads if k != cfg.num_heads]
    return rows


#: ValidationConfig fields that change what a stored row holds; the others choose which rows run (controls,
#: sweeps), how fast (batch_size) or where from (paths, replaced by the content they point at).
RESULT_FIELDS = ("model_name", "dataset_name", "activations_dataset", "num_fold", "val_ratio", "seed", "use_center_of_mass",
                 "use_random_dir", "instruction_prompt", "preset", "max_new_tokens", "ce_samples", "ce_corpus",
                 "tune_on_all_questions", "max_questions")
RUN_RECORD = "run.json"


def run_identity(cfg: ValidationConfig, *, manifests: dict[str, dict[str, Any]] | None = None, tqa=None, model=None) -> dict[str, Any]:
    """What determines every stored row of a run: the result fields of ``cfg`` and content hashes of the feature
    sets (from their manifests, by data set name), the TruthfulQA data and the model weights (each when given)."""
    from .fingerprint import model_fingerprint, settings_fingerprint

    identity: dict[str, Any] = {f: getattr(cfg, f) for f in RESULT_FIELDS}
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
    from .errors import OutputExistsError
    from .fingerprint import describe_difference

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
                           intervention=intervention, batch_size=cfg.batch_size)
    mc = mc_metrics(questions, scores, cfg.preset)
    out: dict[str, Any] = {"question_ids": [int(q) for q in test_q], "MC1": mc.mc1.tolist(), "MC2": mc.mc2.tolist(), "MC3": mc.mc3.tolist(),
                           "mc_seconds": time.perf_counter() - t0}
    cost = ce_and_kl(model, tokenizer, texts, intervention)
    out.update({"CE": cost.ce, "CE_base": cost.ce_base, "KL": cost.kl})
    return out


def _generation_part(model, tokenizer, tqa, test_q, intervention, cfg) -> dict[str, Any]:
    from .text_metrics import similarity_scores

    t1 = time.perf_counter()
    prompts = [generation_prompt(tqa.refs[q].question, cfg.preset, cfg.instruction_prompt) for q in test_q]
    answers = generate_answers(model, tokenizer, prompts, intervention=intervention, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    sim = similarity_scores(answers, [tqa.refs[q] for q in test_q])
    return {"answers": answers, "BLEU-acc": sim.bleu_acc.tolist(), "ROUGE-acc": sim.rouge_acc.tolist(), "gen_seconds": time.perf_counter() - t1}


def _row_todo(row: dict[str, Any], spec: RowSpec, judge_cfg: JudgeConfig | None) -> list[str]:
    """The parts of a row still to compute: MC + CE/KL, greedy answers, judgements. Each part is stored as soon
    as it finishes, so a failure in a later part (a judge that is down) loses nothing before it."""
    todo = [] if "MC1" in row else ["mc"]
    if spec.generate and "answers" not in row:
        todo.append("generate")
    if spec.generate and judge_cfg is not None and ("generate" in todo or row.get("judge") != judge_cfg.identity()):
        todo.append("judge")
    return todo


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


def run_validation(model, tokenizer, cfg: ValidationConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run every fold and row (resuming finished rows), then write the summary, table and plots; impossible
    settings are refused first (:meth:`ValidationConfig.validate`, :func:`check_features`), before anything is
    written."""
    cfg.validate()
    check_features(cfg)
    out = Path(out_dir)
    with output_lock(out, "validation output directory"):
        return _run_locked(model, tokenizer, cfg, out)


def _run_locked(model, tokenizer, cfg: ValidationConfig, out: Path) -> dict[str, Any]:
    features = load_features(cfg.features_path(cfg.dataset_name), mmap=False)
    tuning = load_features(cfg.features_path(cfg.activations_dataset), mmap=False)
    tqa = load_truthfulqa(cfg.data_dir, max_questions=cfg.max_questions or None)
    judge_cfg = JudgeConfig.from_env() if cfg.judge else None
    if cfg.judge and judge_cfg is None:
        print("[validate] --judge given but no judge configured (set ITI_JUDGE_URL, ITI_JUDGE_TRUE_MODEL, ITI_JUDGE_INFO_MODEL): "
              "True/Info are skipped", flush=True)
    if judge_cfg is not None:
        check_judge_endpoint(judge_cfg)  # before any row runs, not after the first fold's generation
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
            todo = _row_todo(row, spec, judge_cfg)
            if not todo:
                continue
            intervention = None
            if spec.name != "baseline" and {"mc", "generate"} & set(todo):
                intervention = build_intervention(features, tuning, fold_probes(i, spec.seed), num_heads=spec.num_heads, alpha=spec.alpha,
                                                  model_name=cfg.model_name, direction=spec.direction, heads=spec.heads, seed=spec.seed,
                                                  tune_on_all_questions=cfg.tune_on_all_questions)
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
                    for stale in ("True", "Info", "judge"):
                        row.pop(stale, None)
                    row.update(_generation_part(model, tokenizer, tqa, test_q, intervention, cfg))
                else:
                    assert judge_cfg is not None
                    row.update(judge_answers(judge_cfg, [tqa.refs[q].question for q in test_q], row["answers"]))
                    row["judge"] = judge_cfg.identity()
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


def summarize(out: Path, rows: list[RowSpec], cfg: ValidationConfig) -> dict[str, Any]:
    """Pool the folds (every question is tested once) and aggregate per row, with CIs and seed spread."""
    pooled: dict[str, dict[str, Any]] = {}
    for spec in rows:
        parts = sorted((out / "rows").glob(f"fold*_{spec.key}.json"))
        data = [read_json(p, "validation row") for p in parts]
        if len(data) != cfg.num_fold:
            continue
        merged: dict[str, Any] = {"spec": spec.__dict__}
        for metric in ("MC1", "MC2", "MC3", "BLEU-acc", "ROUGE-acc", "True", "Info"):
            if all(metric in d for d in data):
                merged[metric] = np.concatenate([d[metric] for d in data])
        merged["question_ids"] = np.concatenate([d["question_ids"] for d in data])
        for metric in ("CE", "KL", "CE_base"):
            merged[metric] = float(np.mean([d[metric] for d in data]))
        merged["seconds"] = float(sum(d.get("seconds", 0.0) for d in data))
        pooled[spec.key] = merged
    base = pooled.get(plan_rows(cfg)[0].key)
    table = []
    for key, m in pooled.items():
        row: dict[str, Any] = {"key": key, **m["spec"], "CE": m["CE"], "KL": m["KL"], "seconds": m["seconds"]}
        for metric in ("MC1", "MC2", "MC3", "BLEU-acc", "ROUGE-acc", "True", "Info"):
            if metric in m:
                mean, lo, hi = bootstrap_ci(m[metric], seed=cfg.seed)
                row[metric] = {"mean": mean, "ci": [lo, hi]}
                if base is not None and metric in base and key != plan_rows(cfg)[0].key:
                    d, dlo, dhi = paired_bootstrap_ci(m[metric], base[metric], seed=cfg.seed)
                    row[f"d{metric}"] = {"mean": d, "ci": [dlo, dhi]}
        table.append(row)
    # spread over seeds for the rows run with several seeds
    spread: dict[str, Any] = {}
    for name in ("ITI", "random heads", "random direction"):
        same = [r for r in table if r["name"] == name and r["alpha"] == cfg.alpha and r["num_heads"] == cfg.num_heads]
        if len(same) > 1:
            spread[name] = {m: {"mean": float(np.mean([r[m]["mean"] for r in same])), "std": float(np.std([r[m]["mean"] for r in same], ddof=1))}
                            for m in ("MC1", "MC2") if all(m in r for r in same)}
            spread[name]["seeds"] = [r["seed"] for r in same]
            spread[name]["KL"] = {"mean": float(np.mean([r["KL"] for r in same])), "std": float(np.std([r["KL"] for r in same], ddof=1))}
    return {"rows": table, "seed_spread": spread, "num_questions": int(len(base["question_ids"])) if base else 0,
            "evaluation_seconds": float(sum(r["seconds"] for r in table))}


def _fmt(cell: Any, digits: int = 3) -> str:
    if isinstance(cell, dict) and "ci" in cell:
        return f"{cell['mean']:.{digits}f} [{cell['ci'][0]:.{digits}f}, {cell['ci'][1]:.{digits}f}]"
    if isinstance(cell, float):
        return f"{cell:.{digits}f}"
    return "" if cell is None else str(cell)


def summary_markdown(summary: dict[str, Any], cfg: ValidationConfig) -> str:
    """summary.md: one table row per evaluated row with 95% CIs and the paired ΔMC2 to the baseline, then the
    spread over seeds."""
    lines = [f"Model {cfg.model_name}, {summary['num_questions']} questions, {cfg.num_fold}-fold, preset {cfg.preset}, "
             f"instruction {cfg.instruction_prompt}; 95% bootstrap CIs over questions; Δ = paired difference to the baseline.", ""]
    has_gen = any("BLEU-acc" in r for r in summary["rows"])
    has_judge = any("True" in r for r in summary["rows"])
    head = ["Intervention", "alpha", "K", "seed"] + (["True", "Info"] if has_judge else []) + ["MC1", "MC2", "ΔMC2", "CE Loss", "KL wrt Original"]
    head += ["BLEU-acc", "ROUGE-acc"] if has_gen else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = [r["name"], f"{r['alpha']:g}", str(r["num_heads"]), str(r["seed"])]
        cells += [_fmt(r.get("True")), _fmt(r.get("Info"))] if has_judge else []
        cells += [_fmt(r.get("MC1")), _fmt(r.get("MC2")), _fmt(r.get("dMC2")), _fmt(r["CE"]), _fmt(r["KL"])]
        cells += [_fmt(r.get("BLEU-acc")), _fmt(r.get("ROUGE-acc"))] if has_gen else []
        lines.append("| " + " | ".join(cells) + " |")
    if summary["seed_spread"]:
        lines += ["", "Spread over seeds (mean ± std of the per-seed means):", ""]
        for name, s in summary["seed_spread"].items():
            parts = [f"{m} {v['mean']:.3f} ± {v['std']:.3f}" for m, v in s.items() if isinstance(v, dict)]
            lines.append(f"- {name} (seeds {s['seeds']}): " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def plot_results(out: Path, accuracy: np.ndarray, summary: dict[str, Any], cfg: ValidationConfig) -> None:
    """Write probe_accuracy.png (probe accuracy per head) and alpha_sweep.png (MC2 and KL against alpha for
    the baseline and the ITI rows of the main K and seed, when there are at least two such rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 8))
    im = ax.imshow(accuracy, aspect="auto", cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"Probe validation accuracy ({cfg.model_name}, mean over folds)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "probe_accuracy.png", dpi=120)
    plt.close(fig)
    rows = sorted([r for r in summary["rows"] if r["name"] in ("ITI", "baseline") and (r["num_heads"] == cfg.num_heads or r["name"] == "baseline")
                   and r["seed"] == cfg.seed], key=lambda r: r["alpha"])
    if len(rows) >= 2:
        fig, ax = plt.subplots(figsize=(6, 4))
        alphas = [r["alpha"] for r in rows]
        ax.plot(alphas, [r["MC2"]["mean"] for r in rows], "o-", color="tab:blue", label="MC2")
        ax.fill_between(alphas, [r["MC2"]["ci"][0] for r in rows], [r["MC2"]["ci"][1] for r in rows], color="tab:blue", alpha=0.2)
        ax.set_xlabel("alpha")
        ax.set_ylabel("MC2", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(alphas, [r["KL"] for r in rows], "s--", color="tab:red", label="KL")
        ax2.set_ylabel("KL wrt original", color="tab:red")
        ax.set_title(f"ITI strength sweep (K={cfg.num_heads})")
        fig.tight_layout()
        fig.savefig(out / "alpha_sweep.png", dpi=120)
        plt.close(fig)
