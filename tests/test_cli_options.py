"""Impossible option values are refused by every ``iti`` command with one line naming the option and what it
allows, before any model loads and before anything is written; valid defaults get through to the model load."""
from __future__ import annotations

import numpy as np
import pytest

from iti.cli import main
from iti.errors import InvalidOptionError

from .conftest import TEXTS, make_tiny_model, tiny_tokenizer


class ModelLoadReached(Exception):
    """Raised by the stand-in for load_model: the command got through its checks."""


@pytest.fixture(autouse=True)
def no_model(monkeypatch, tmp_path):
    """No test here may load a model: load_model raises, and caches go to the test's directory."""
    import iti.models
    import iti.truthfulqa.demo

    def load_model(*args, **kwargs):
        raise ModelLoadReached(args)

    monkeypatch.setattr(iti.models, "load_model", load_model)
    monkeypatch.setattr(iti.truthfulqa.demo, "load_model", load_model)
    monkeypatch.setenv("ITI_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory):
    """tqa_mc2 features of a tiny llama (3 layers x 4 heads = 12 heads) on 4 questions, filed under smollm2-135m's
    name so that ``iti validate`` finds them."""
    from iti import write_features
    from iti.features import PromptSet

    root = tmp_path_factory.mktemp("features")
    ps = PromptSet("tqa_mc2", TEXTS * 2, np.arange(8) % 2, np.arange(8) // 2, "{t}")
    write_features(make_tiny_model("llama"), tiny_tokenizer(), ps, root, model_name="smollm2-135m", batch_size=8,
                   layer_wise=False, progress=False)
    return root


def _refused(capsys, argv, option, out):
    """``main(argv)`` exits with 2 after exactly one ``iti: error:`` line naming ``--option``; ``out`` was not
    created."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("iti: error:"), err
    assert f"--{option}" in lines[0], err
    assert not out.exists()
    return lines[0]


MISSING = "/nonexistent/iti-test-path"

VALIDATE = [
    (["--val_ratio", "0"], "val_ratio"),
    (["--val_ratio", "1"], "val_ratio"),
    (["--val_ratio", "1.5"], "val_ratio"),
    (["--val_ratio", "nan"], "val_ratio"),
    (["--val_ratio", "0.9", "--max_questions", "6"], "val_ratio"),
    (["--num_fold", "1"], "num_fold"),
    (["--num_fold", "0"], "num_fold"),
    (["--num_fold", "10", "--max_questions", "4"], "num_fold"),
    (["--num_fold", "900"], "num_fold"),  # more folds than TruthfulQA's 817 questions
    (["--num_fold", "2", "--max_questions", "3"], "num_fold"),  # a 2-question fold leaves 1 to train and validate
    (["--max_questions", "2"], "max_questions"),
    (["--max_questions", "0"], "max_questions"),
    (["--num_heads", "0"], "num_heads"),
    (["--sweep_heads", "16", "0"], "sweep_heads"),
    (["--alpha", "-5"], "alpha"),
    (["--alpha", "nan"], "alpha"),
    (["--alpha", "inf"], "alpha"),
    (["--sweep_alphas", "5", "-1"], "sweep_alphas"),
    (["--batch_size", "0"], "batch_size"),
    (["--max_new_tokens", "0"], "max_new_tokens"),
    (["--ce_samples", "0"], "ce_samples"),
    (["--seed", "-1"], "seed"),
    (["--control_seeds", "1", "-2"], "control_seeds"),
    (["--dtype", "float8"], "dtype"),
    (["--features_dir", MISSING], "features_dir"),
    (["--data_dir", MISSING], "data_dir"),
    (["--judge_batch_size", "0"], "judge_batch_size"),
    (["--judge", "hf", "--judge_model", "no-such-judge"], "judge_model"),
    (["--judge", "hf", "--judge_info_model", MISSING], "judge_info_model"),
]


@pytest.mark.parametrize("args,option", VALIDATE, ids=[" ".join(a) for a, _ in VALIDATE])
def test_validate_refuses(args, option, tmp_path, capsys):
    (tmp_path / "features").mkdir()
    out = tmp_path / "out"
    _refused(capsys, ["validate", "--features_dir", tmp_path / "features", "--output_dir", out, *args], option, out)


VALIDATE_WITH_FEATURES = [
    (["--num_heads", "13"], "num_heads"),
    (["--num_heads", "100000"], "num_heads"),
    (["--num_heads", "8", "--sweep_heads", "4", "13"], "sweep_heads"),
    (["--num_heads", "8", "--num_fold", "5"], "num_fold"),  # the features hold 4 questions
    (["--num_heads", "8", "--val_ratio", "0.9"], "val_ratio"),
]


@pytest.mark.parametrize("args,option", VALIDATE_WITH_FEATURES, ids=[" ".join(a) for a, _ in VALIDATE_WITH_FEATURES])
def test_validate_checks_heads_and_questions_against_the_features(args, option, tiny_features, tmp_path, capsys):
    out = tmp_path / "out"
    line = _refused(capsys, ["validate", "--features_dir", tiny_features, "--output_dir", out, *args], option, out)
    if option == "num_heads":
        assert "between 1 and 12" in line


def test_validate_settings_within_the_features_get_to_the_features_check(tiny_features, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["validate", "--features_dir", str(tiny_features), "--output_dir", str(out), "--num_heads", "12",
                 "--sweep_heads", "1", "--num_fold", "4", "--val_ratio", "0.5"]) == 2
    assert "no tqa_gen_end_q features for smollm2-135m" in capsys.readouterr().err  # past every option check
    assert not out.exists()


COLLECT = [
    (["--batch_size", "0"], "batch_size"),
    (["--max_questions", "0"], "max_questions"),
    (["--seed", "-1"], "seed"),
    (["--dtype", "float8"], "dtype"),
    (["--shard", "2/2"], "shard"),
    (["--shard", "0/0"], "shard"),
    (["--shard", "a/b"], "shard"),
    (["--shard", "1"], "shard"),
    (["--shard", "3/4", "--max_questions", "2"], "shard"),  # 12 prompts in one batch of 32: shard 3 gets nothing
    (["--data_dir", MISSING], "data_dir"),
]


@pytest.mark.parametrize("args,option", COLLECT, ids=[" ".join(a) for a, _ in COLLECT])
def test_collect_refuses(args, option, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, ["collect", "--output_dir", out, "--quiet", *args], option, out)


def _saved_intervention(path, model_name="tiny"):
    from iti import Intervention, model_layout

    g = model_layout(make_tiny_model("llama")).geometry
    d = np.ones((1, g.head_dim)) / np.sqrt(g.head_dim)
    return Intervention([(0, 0)], d, np.ones(1), 1.0, model_name, g).save(path)


BAKE = [
    (["--intervention", MISSING], "intervention"),
    (["--alpha", "-5"], "alpha"),
    (["--alpha", "nan"], "alpha"),
    (["--dtype", "float8"], "dtype"),
]


@pytest.mark.parametrize("args,option", BAKE, ids=[" ".join(a) for a, _ in BAKE])
def test_bake_refuses(args, option, tmp_path, capsys):
    out = tmp_path / "out"
    iv = _saved_intervention(tmp_path / "iv")
    _refused(capsys, ["bake", "--intervention", iv, "--output_dir", out, *args], option, out)


def test_bake_refuses_a_file_as_output_and_reads_the_intervention_before_the_model(tmp_path, capsys):
    out = tmp_path / "out"
    iv = _saved_intervention(tmp_path / "iv")
    (tmp_path / "file").write_text("x")
    _refused(capsys, ["bake", "--intervention", iv, "--output_dir", tmp_path / "file"], "output_dir", out)
    (tmp_path / "empty").mkdir()
    assert main(["bake", "--intervention", str(tmp_path / "empty"), "--output_dir", str(out)]) == 2
    assert "intervention.json does not exist" in capsys.readouterr().err and not out.exists()


FAITHFULNESS = [
    (["--chat-format", "bogus"], "chat_format"),
    (["--alpha", "-3"], "alpha"),
    (["--alpha", "inf"], "alpha"),
    (["--alpha", "3"], "alpha"),  # without --intervention there is no shift to scale
    (["--max-samples", "-1"], "max_samples"),
    (["--calibrate-alphas", "1", "2"], "calibrate_alphas"),  # without --intervention there is no shift to calibrate
    (["--dev-samples", "0"], "dev_samples"),
    (["--max-parse-gap", "1.5"], "max_parse_gap"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--classify-max-new-tokens", "0"], "classify_max_new_tokens"),
    (["--batch-size", "0"], "batch_size"),
    (["--seed", "-1"], "seed"),
    (["--dtype", "float8"], "dtype"),
    (["--intervention", MISSING], "intervention"),
    (["--baked", MISSING], "baked"),
    (["--data-dir", MISSING], "data_dir"),
    (["--remote-plain-model", "smollm2"], "remote_plain_model"),
    (["--remote-intervened-model", "smollm2-iti"], "remote_intervened_model"),
    (["--remote-url", "http://127.0.0.1:9/v1", "--baked", "."], "baked"),
    (["--remote-url", "http://127.0.0.1:9/v1", "--remote-timeout", "0"], "remote_timeout"),
    (["--remote-baked", "."], "remote_baked"),
    (["--remote-url", "http://127.0.0.1:9/v1", "--remote-intervened-model", "m", "--remote-baked", "."], "remote_baked"),
    (["--remote-url", "http://127.0.0.1:9/v1", "--remote-intervened-model", "m"], "remote_baked"),
]


@pytest.mark.parametrize("args,option", FAITHFULNESS, ids=[" ".join(a) for a, _ in FAITHFULNESS])
def test_faithfulness_refuses(args, option, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, ["faithfulness", "--output_dir", out, "--cache", tmp_path / "cache.sqlite", "--quiet", *args], option, out)
    assert not (tmp_path / "cache.sqlite").exists()


def test_faithfulness_reads_the_intervention_before_the_model(tmp_path, capsys):
    out = tmp_path / "out"
    iv = _saved_intervention(tmp_path / "iv")  # made for "tiny"
    assert main(["faithfulness", "--intervention", str(iv), "--output_dir", str(out), "--cache", str(tmp_path / "c.sqlite"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iti: error:") and "was made for 'tiny', not for 'smollm2-135m'" in err
    assert not out.exists() and not (tmp_path / "c.sqlite").exists()


CONCEPTS = [
    (["--ks", "0"], "ks"),
    (["--ks", "4", "-1"], "ks"),
    (["--alphas", "-5", "5"], "alphas"),
    (["--alphas", "nan"], "alphas"),
    (["--alphas", "0"], "alphas"),  # the steering strength is chosen among the alphas above 0
    (["--l1_strengths", "0"], "l1_strengths"),
    (["--l1_strengths", "0.5", "1.5"], "l1_strengths"),
    (["--max_reviews", "0"], "max_reviews"),
    (["--max_pairs", "-1"], "max_pairs"),
    (["--seed", "-1"], "seed"),
    (["--batch_size", "0"], "batch_size"),
    (["--data_dir", MISSING], "data_dir"),
]


@pytest.mark.parametrize("args,option", CONCEPTS, ids=[" ".join(a) for a, _ in CONCEPTS])
def test_concepts_refuses(args, option, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, ["concepts", "--output_dir", out, "--quiet", *args], option, out)


DEMO = [
    (["--max_questions", "0"], "max_questions"),
    (["--max_questions", "3"], "max_questions"),  # the 2-fold validation needs 4
    (["--batch_size", "0"], "batch_size"),
]


@pytest.mark.parametrize("args,option", DEMO, ids=[" ".join(a) for a, _ in DEMO])
def test_demo_refuses(args, option, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, ["demo", "--output_dir", out, *args], option, out)


def test_defaults_pass_validation():
    from iti.concepts.experiment import ConceptConfig
    from iti.faithfulness.experiment import FaithfulnessConfig
    from iti.truthfulqa.experiment import ValidationConfig

    ValidationConfig().validate()
    ValidationConfig(max_questions=4, num_fold=4, val_ratio=0.5, num_heads=1, sweep_alphas=[0.0], sweep_heads=[2]).validate()
    FaithfulnessConfig().validate()
    FaithfulnessConfig(max_samples=None, chat_format="llama2", dtype="bf16").validate()
    ConceptConfig().validate()
    ConceptConfig(max_pairs=None, max_reviews=1, l1_strengths=()).validate()


def test_command_defaults_get_through_to_the_model_load(tmp_path):
    """Each command's defaults (plus the paths it needs) pass every check: the next step is loading the model."""
    iv = _saved_intervention(tmp_path / "iv", "smollm2-135m")  # made for the default model, which bake checks
    commands = [
        ["collect", "--output_dir", tmp_path / "collect", "--quiet"],
        ["bake", "--intervention", iv, "--output_dir", tmp_path / "baked"],
        ["faithfulness", "--output_dir", tmp_path / "faith", "--cache", tmp_path / "c.sqlite", "--quiet"],
        ["concepts", "--output_dir", tmp_path / "concepts", "--quiet"],
        ["demo", "--output_dir", tmp_path / "demo"],
    ]
    for argv in commands:
        with pytest.raises(ModelLoadReached):
            main([str(a) for a in argv])
    for name in ("collect", "baked", "faith", "concepts", "demo"):
        assert not (tmp_path / name).exists()


def test_python_api_refuses_the_same_before_writing(tmp_path):
    from iti.concepts.experiment import ConceptConfig, run_concepts
    from iti.faithfulness.experiment import FaithfulnessConfig, run_faithfulness
    from iti.truthfulqa.experiment import ValidationConfig, run_validation

    out = tmp_path / "out"
    with pytest.raises(InvalidOptionError, match=r"^--val_ratio: a number in \(0, 1\), got 0$"):
        run_validation(None, None, ValidationConfig(val_ratio=0), out)
    with pytest.raises(InvalidOptionError, match="^--num_fold: an integer between 2 and 4"):
        run_validation(None, None, ValidationConfig(num_fold=10, max_questions=4), out)
    with pytest.raises(InvalidOptionError, match="^--chat_format: one of falcon, llama2, mistral, plain, got 'bogus'$"):
        run_faithfulness(FaithfulnessConfig(chat_format="bogus", output_dir=str(out), cache=str(tmp_path / "c.sqlite")))
    with pytest.raises(InvalidOptionError, match=r"^--ks: an integer >= 1, got 0$"):
        run_concepts(ConceptConfig(ks=[4, 0], output_dir=str(out)))
    assert not out.exists() and not (tmp_path / "c.sqlite").exists()


def test_fold_rules_match_how_validation_splits():
    """check_folds accepts exactly the settings where every fold of run_validation's split has a test, a training
    and a validation question (np.array_split, then split_questions)."""
    from iti.errors import EmptyInputError
    from iti.options import check_folds, min_questions
    from iti.probes import split_questions

    def fold_ok(n, test, r):
        try:
            parts = split_questions(np.setdiff1d(np.arange(n), test), r, 0)
        except EmptyInputError:  # fewer than two questions beside the test fold
            return False
        return len(test) >= 1 and all(len(p) >= 1 for p in parts)

    for n in (2, 3, 4, 5, 7, 10):
        for k in (2, 3, 4, 5, 11):
            for r in (0.05, 0.2, 0.5, 0.7):
                ok = k <= n and all(fold_ok(n, f, r) for f in np.array_split(np.arange(n), k))
                try:
                    check_folds(n, k, r, questions_option="max_questions", source="--max_questions")
                    refused = False
                except InvalidOptionError:
                    refused = True
                assert refused != ok, (n, k, r)
    assert min_questions(2, 0.2) == 4 and min_questions(10, 0.2) == 10
