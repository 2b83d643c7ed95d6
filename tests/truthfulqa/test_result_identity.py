"""What a validation result is, and when it is refused (issue 34, item 8), on two tiny checkpoints of one name and one
geometry (runs/a/final, runs/b/final): the compute dtype is part of a run's identity; features of the other checkpoint
are refused by validate and bake unless asked for; a budget search outside its tolerance fails its row; --force from
a second process deletes nothing while a run holds the lock; non-finite features are refused before any row runs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iti.cli import main
from iti.errors import FeatureWeightsError, NonFiniteInputError, OutputLockedError
from iti.features import OTHER_WEIGHTS, SAME_WEIGHTS
from iti.truthfulqa.budget import BudgetNotConvergedError, BudgetSearch
from iti.truthfulqa.experiment import ValidationConfig, check_output, run_validation

from ..conftest import make_tiny_model, tiny_config, tiny_tokenizer, write_tqa_features


def _checkpoint(path: Path, seed: int) -> Path:
    """A tiny Llama saved with its tokenizer; a long context, since TruthfulQA's few-shot prompt is long in bytes."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config("llama")
    config.max_position_embeddings = 4096
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two checkpoints named ``final`` with the same geometry and other weights, and features of ``a``'s."""
    from iti import load_model

    root = tmp_path_factory.mktemp("runs")
    a, b = _checkpoint(root / "runs" / "a" / "final", 0), _checkpoint(root / "runs" / "b" / "final", 1)
    write_tqa_features(*load_model(a), root / "features", max_questions=6, model_name="final")
    return a, b, root / "features"


def _cfg(features: Path, **kw) -> ValidationConfig:
    base = dict(model_name="final", features_dir=str(features), ce_samples=2, generate=False, num_heads=2, alpha=5.0, max_questions=4)
    return ValidationConfig(**{**base, **kw})


def _argv(model: Path, features: Path, out: Path, *extra: str) -> list[str]:
    return ["validate", "--model_name", str(model), "--features_dir", str(features), "--output_dir", str(out), "--ce_samples", "2",
            "--no_generate", "--num_heads", "2", "--alpha", "5", "--max_questions", "4", *extra]


def test_the_compute_dtype_is_part_of_a_results_identity(runs, tmp_path, capsys):
    a, _, features = runs
    out = tmp_path / "dt"
    assert main(_argv(a, features, out)) == 0
    assert json.loads((out / "run.json").read_text())["compute_dtype"] == "float32"
    capsys.readouterr()
    assert main(_argv(a, features, out, "--dtype", "bf16")) == 2  # the flag resolved: the loaded model's dtype
    err = capsys.readouterr().err
    assert "compute_dtype 'float32' -> 'bfloat16'" in err and "--force" in err
    assert json.loads((out / "run.json").read_text())["compute_dtype"] == "float32"  # nothing discarded
    # a run.json written before the dtype was recorded: refused, saying what to add to keep the rows
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "compute_dtype"}))
    assert main(_argv(a, features, out)) == 2
    assert 'did not record "compute_dtype": "float32"' in capsys.readouterr().err
    (out / "run.json").write_text(json.dumps(record))
    assert main(_argv(a, features, out)) == 0 and ": mc (" not in capsys.readouterr().out  # every row reused
    assert main(_argv(a, features, out, "--dtype", "bfloat16", "--force")) == 0
    assert json.loads((out / "run.json").read_text())["compute_dtype"] == "bfloat16"


def test_weights_are_matched_across_dtypes_not_across_checkpoints():
    from iti.fingerprint import model_fingerprint, weights_match

    model, other = make_tiny_model("llama", seed=0), make_tiny_model("llama", seed=1)
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert weights_match(model_fingerprint(model), "float32", model) is True
    assert weights_match(model_fingerprint(half), "bfloat16", model) is True  # features collected in bf16, steered in fp32
    assert weights_match(model_fingerprint(other), "float32", model) is False
    assert weights_match(None, None, model) is None  # an older manifest: nothing to compare


def test_features_of_another_checkpoint_are_refused_unless_asked_for(runs, tmp_path, capsys):
    from iti import Intervention, load_model

    a, b, features = runs
    model_b, tok = load_model(b)
    out = tmp_path / "v"
    with pytest.raises(FeatureWeightsError, match="collected from other weights .*--features_from_other_weights"):
        run_validation(model_b, tok, _cfg(features), out)
    assert not (out / "rows").exists() and not (out / "run.json").exists()
    run_validation(model_b, tok, _cfg(features, features_from_other_weights=True), out)
    assert json.loads((out / "run.json").read_text())["features_weights"] == OTHER_WEIGHTS
    assert Intervention.load(out / "intervention_fold0").meta["features_weights"] == OTHER_WEIGHTS
    # bake fits on the features, then refuses them once the model is loaded, before anything is written
    bake = ["bake", "--model_name", str(b), "--features_dir", str(features), "--num_heads", "2"]
    assert main([*bake, "--output_dir", str(tmp_path / "baked_b")]) == 2
    assert "collected from other weights" in capsys.readouterr().err and not (tmp_path / "baked_b").exists()
    assert main([*bake, "--output_dir", str(tmp_path / "baked_b"), "--features_from_other_weights"]) == 0
    assert Intervention.load(tmp_path / "baked_b" / "iti_intervention").meta["features_weights"] == OTHER_WEIGHTS
    bake[2] = str(a)
    assert main([*bake, "--output_dir", str(tmp_path / "baked_a")]) == 0
    assert Intervention.load(tmp_path / "baked_a" / "iti_intervention").meta["features_weights"] == SAME_WEIGHTS


def test_a_budget_search_outside_its_tolerance_fails_its_row(runs, tmp_path):
    from iti import load_model

    a, _, features = runs
    model, tok = load_model(a)
    out = tmp_path / "v"
    cfg = _cfg(features, kl_budget=[1e-9], budget_texts=2)
    with pytest.raises(BudgetNotConvergedError, match=r"row ITI_kl1e-09_k2_s42, fold 0: the KL budget 1e-09 was not met, .* "
                                                      r"KL reached is \S+ at alpha \S+, outside the tolerance 1e-09 ± 5e-11 "):
        run_validation(model, tok, cfg, out)
    assert not list((out / "rows").glob("*kl1e-09*")) and not (out / "summary.json").exists()
    # a stored row whose search missed (an older iti kept it) is refused too, not put in the cost-matched table
    search = BudgetSearch("KL", 1e-9, 0.2, 1.6e-9, [(5.0, 1e-3), (0.2, 1.6e-9)])
    assert not search.converged and BudgetSearch.from_dict(json.loads(json.dumps(search.to_dict()))) == search
    stored = {k: v for k, v in search.to_dict().items() if k != "rel_tol"}
    (out / "rows" / "fold0_ITI_kl1e-09_k2_s42.json").write_text(json.dumps({"alpha_found": 0.2, "budget_search": stored}))
    with pytest.raises(BudgetNotConvergedError, match="closest KL reached is 1.6e-09 at alpha 0.2"):
        run_validation(model, tok, cfg, out)


def test_force_from_a_second_process_deletes_nothing_while_a_run_holds_the_lock(runs, tmp_path, capsys):
    from iti.locks import output_lock

    a, _, features = runs
    out = tmp_path / "v"
    assert main(_argv(a, features, out)) == 0
    kept = sorted(p.name for p in (out / "rows").iterdir()) + ["run.json"]
    with output_lock(out, "validation output directory"):  # the run that is writing there now
        with pytest.raises(OutputLockedError, match="being written by another process"):
            check_output(_cfg(features, preset="lm-eval", force=True), out)
        assert main(_argv(a, features, out, "--preset", "lm-eval", "--force")) == 2
        assert "being written by another process" in capsys.readouterr().err
        assert sorted(p.name for p in (out / "rows").iterdir()) + ["run.json"] == kept and (out / "run.json").exists()
    assert main(_argv(a, features, out)) == 0  # the first run's directory is intact: every row reused


def test_non_finite_features_are_refused_before_any_row_naming_file_rows_and_question_ids(runs, tmp_path):
    import shutil

    from iti import load_features, load_model
    from iti.io import open_safetensors_memmap, sha256_file
    from iti.truthfulqa.experiment import check_finite_features

    a, _, features = runs
    broken = tmp_path / "features"
    shutil.copytree(features, broken)
    mc2 = broken / "final_tqa_mc2"
    manifest = json.loads((mc2 / "manifest.json").read_text())
    qids = np.asarray(manifest["question_ids"])
    row = int(np.flatnonzero(qids == 3)[-1])  # the last row of question 3: not row 3, nor its row in a fold's subset
    arr = open_safetensors_memmap(mc2 / "head_wise.safetensors", "head_wise", mode="r+")
    arr[row, 1, 2, 0] = np.inf
    arr.flush()
    del arr
    manifest["files"]["head_wise"]["sha256"] = sha256_file(mc2 / "head_wise.safetensors")
    (mc2 / "manifest.json").write_text(json.dumps(manifest))
    model, tok = load_model(a)
    out = tmp_path / "v"
    with pytest.raises(NonFiniteInputError, match=rf"in 1 of the \d+ rows this run uses: file rows \[{row}\] \(TruthfulQA question "
                                                  r"ids \[3\]\) at \(layer, head\)s \[\(1, 2\)\].*get_activations.py --model_name "
                                                  r"final --dataset_name tqa_mc2 --save_dtype float32 --force --output_dir"):
        run_validation(model, tok, _cfg(broken), out)
    assert not (out / "rows").exists()  # before any row (the baseline included) ran
    sets = [load_features(broken / f"final_{name}", mmap=False) for name in ("tqa_mc2", "tqa_gen_end_q")]
    check_finite_features(_cfg(broken), *sets, np.array([0, 1, 2]))  # a question this run does not use: not refused
