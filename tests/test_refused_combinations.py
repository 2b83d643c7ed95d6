"""Options that used to be ignored without a word, and messages that named the wrong thing (issue 34): each is now
a clear refusal naming the option (or the file), before the work it would have spoiled."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from iti import Intervention, model_layout, write_features
from iti.cli import main
from iti.errors import GeometryMismatchError, InvalidOptionError
from iti.features import PromptSet

from .conftest import SHARED_DATA, TEXTS, make_tiny_model, tiny_tokenizer


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iti: error:"), lines
    return lines[0]


# --- options that did nothing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--kl_budget", "--ce_budget", "--kl-budget"])
def test_a_bare_budget_flag_is_refused_not_run_at_a_fixed_alpha(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--features_dir", str(tmp_path), flag])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert flag.replace("-budget", "_budget") in err and "expected at least one argument" in err


def test_budget_flags_with_values_still_parse():
    from iti.cli import build_parser

    args = build_parser().parse_args(["validate", "--kl_budget", "0.1", "1"])
    assert args.kl_budget == [0.1, 1.0] and args.ce_budget == []


@pytest.mark.parametrize("judge", [["--judge", "hf"], ["--judge"], ["--judge", "endpoint"]])
def test_judging_without_generating_is_refused_before_anything_loads(judge, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["validate", "--features_dir", str(tmp_path), "--output_dir", str(out), *judge, "--no_generate"]) == 2
    line = _one_error_line(capsys)
    assert "--judge" in line and "--no_generate" in line and not out.exists()
    from iti.truthfulqa.config import ValidationConfig

    with pytest.raises(InvalidOptionError, match="--no_generate"):
        ValidationConfig(judge="hf", generate=False).validate()


def _faithfulness_intervention(path, model_name="smollm2-135m"):
    g = model_layout(make_tiny_model("llama")).geometry
    return Intervention([(0, 0)], np.ones((1, g.head_dim)) / math.sqrt(g.head_dim), np.ones(1), 1.0, model_name, g).save(path)


@pytest.mark.skipif(not (SHARED_DATA / "faithfulness/rte/glue_rte_validation.tsv").exists(), reason="needs the shared data")
def test_more_dev_samples_than_a_data_set_keeps_are_refused_naming_the_maximum(tmp_path):
    """RTE has 277 samples: after the 273 reported ones 4 are left, so --dev_samples 10 (or 100000) is refused
    naming 4, before anything loads (it used to calibrate on 4 without a word)."""
    from iti.faithfulness.experiment import FaithfulnessConfig

    iv = _faithfulness_intervention(tmp_path / "iv")
    kw = dict(datasets=("rte",), intervention=str(iv), calibrate_alphas=(1.0,), max_samples=273, output_dir=str(tmp_path / "o"))
    for n in (10, 100000):
        with pytest.raises(InvalidOptionError, match=r"^--dev_samples: at most 4 for rte .*got " + str(n)):
            FaithfulnessConfig(**kw, dev_samples=n).validate()
    FaithfulnessConfig(**kw, dev_samples=4).validate()  # exactly what is left is fine


def test_development_samples_refuses_more_than_are_left():
    """The same refusal once a data set is loaded (one read from the hub has a size only then)."""
    from iti.faithfulness.calibrate import development_samples
    from iti.faithfulness.datasets import SENTIMENT, Sample

    samples = [Sample(i, SENTIMENT, f"Review {i}.", "positive") for i in range(20)]
    with pytest.raises(InvalidOptionError, match="--dev_samples: at most 4 for imdb"):
        development_samples(samples, 16, 10, "imdb")
    dev, span = development_samples(samples, 16, 4, "imdb")
    assert [s.idx for s in dev] == [16, 17, 18, 19] and span == (16, 19)


# --- messages ------------------------------------------------------------------------------------------------
def test_a_judge_directory_that_is_not_a_model_is_named_with_what_it_lacks(tmp_path, capsys):
    empty, no_tokenizer = tmp_path / "empty", tmp_path / "no_tokenizer"
    empty.mkdir()
    make_tiny_model("llama").config.save_pretrained(no_tokenizer)
    out = tmp_path / "out"
    for option in ("--judge_model", "--judge_info_model"):
        assert main(["validate", "--features_dir", str(tmp_path), "--output_dir", str(out), "--judge", "hf",
                     option, str(empty)]) == 2
        line = _one_error_line(capsys)
        assert f"{option}:" in line and str(empty) in line and "no config.json" in line and "tokenizer" in line
    assert main(["validate", "--features_dir", str(tmp_path), "--output_dir", str(out), "--judge", "hf",
                 "--judge_model", str(no_tokenizer)]) == 2
    line = _one_error_line(capsys)
    assert str(no_tokenizer) in line and "has no tokenizer file" in line and "no config.json" not in line
    assert not out.exists()


def test_the_budget_search_reports_the_last_alpha_it_tried():
    """From 15, doubling: 15 x 2^9 = 7680 is the last alpha not past 10000; the message said "up to 10000"."""
    from iti.truthfulqa.budget import BudgetNotReachedError, alpha_for_budget

    tried = []

    def cost(a):
        tried.append(a)
        return 1 - math.exp(-a)

    with pytest.raises(BudgetNotReachedError) as err:
        alpha_for_budget(cost, 2.0, start=15.0)
    assert tried[-1] == 15 * 2**9 == 7680
    assert "at alpha 7680" in str(err.value) and "15 to 7680 tried" in str(err.value) and "up to 10000" not in str(err.value)


def _save_tiny(root, arch, name):
    model = make_tiny_model(arch)
    model.save_pretrained(root / name)
    tiny_tokenizer().save_pretrained(root / name)
    return model


def _features_of(model, root, name):
    """tqa_mc2 and tqa_gen_end_q features of ``model`` on 6 questions, filed under ``name``."""
    n = 6
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(2 * n)]
    for ps in (PromptSet("tqa_mc2", texts, np.arange(2 * n) % 2 == 0, np.arange(2 * n) // 2, "{t}"),
               PromptSet("tqa_gen_end_q", texts[::2], np.zeros(n, dtype=int), np.arange(n), "{t}")):
        write_features(model, tiny_tokenizer(), ps, root, model_name=name, dtype="float32", layer_wise=False, progress=False)


def test_features_of_another_geometry_are_blamed_on_the_features_not_the_model(tmp_path, capsys):
    """Features filed under a model's name but collected from another model (GPT-2's 4 KV heads, not the tiny
    Llama's 2): ``iti bake`` refuses them before fitting or loading, naming the features directory; ``validate``
    before its first row. It used to fail at the steered model, saying the intervention was made for the very model
    it was used on."""
    from iti.truthfulqa.config import ValidationConfig
    from iti.truthfulqa.experiment import run_validation

    features = tmp_path / "features"
    _save_tiny(tmp_path, "llama", "tinyllama")
    _features_of(make_tiny_model("gpt2"), features, "tinyllama")
    out = tmp_path / "baked"
    assert main(["bake", "--model_name", str(tmp_path / "tinyllama"), "--features_dir", str(features), "--output_dir",
                 str(out), "--num_heads", "2"]) == 2
    err = capsys.readouterr().err
    assert f"features in {features / 'tinyllama_tqa_mc2'}" in err
    assert "but the model 'tinyllama' has 3 layers x 4 heads x 8 dims, 2 KV heads" in err and not out.exists()

    cfg = ValidationConfig(model_name="tinyllama", features_dir=str(features), num_heads=2, generate=False, ce_samples=2)
    with pytest.raises(GeometryMismatchError, match=r"tinyllama_tqa_mc2 \(collected as 'tinyllama'\) have 3 layers x 4 "
                                                    r"heads x 8 dims, 4 KV heads"):
        run_validation(make_tiny_model("llama"), tiny_tokenizer(), cfg, tmp_path / "validation")
    assert not (tmp_path / "validation" / "rows").exists()


def test_check_model_names_the_model_it_is_used_on(tmp_path):
    from transformers import AutoModelForCausalLM

    _save_tiny(tmp_path, "gpt2", "tinygpt2")
    g = model_layout(make_tiny_model("llama")).geometry
    inter = Intervention([(0, 0)], np.ones((1, g.head_dim)), np.ones(1), 1.0, "tinyllama", g)
    with pytest.raises(GeometryMismatchError, match=f"made for tinyllama .*the model it is used on \\({re.escape(str(tmp_path))}/tinygpt2\\)"):
        inter.check_model(AutoModelForCausalLM.from_pretrained(tmp_path / "tinygpt2"))


def test_a_second_bake_is_refused_naming_the_cli_flag_and_done_with_it(tmp_path, capsys):
    """Baking into an already baked model: refused, the message naming --add_to_existing (and add_to_existing=True);
    with the flag the second shift is added: every o_proj bias is W_o @ shift twice."""
    model = _save_tiny(tmp_path, "llama", "tinyllama")
    g = model_layout(model).geometry
    rng = np.random.default_rng(0)
    heads = [(0, 1), (2, 3)]
    directions = rng.normal(size=(2, g.head_dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    stds = np.array([0.5, 2.0])
    iv = Intervention(heads, directions, stds, 3.0, "tinyllama", g).save(tmp_path / "iv")
    once, twice = tmp_path / "once" / "tinyllama", tmp_path / "twice" / "tinyllama"
    assert main(["bake", "--model_name", str(tmp_path / "tinyllama"), "--intervention", str(iv), "--output_dir", str(once)]) == 0
    capsys.readouterr()
    argv = ["bake", "--model_name", str(once), "--intervention", str(iv), "--output_dir", str(twice)]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar: refused once it is loaded
    assert line.startswith("iti: error:") and "--add_to_existing" in line and "add_to_existing=True" in line and not (twice / "config.json").exists()
    assert main([*argv, "--add_to_existing"]) == 0
    from transformers import AutoModelForCausalLM

    baked = AutoModelForCausalLM.from_pretrained(twice)
    assert len(baked.config.iti_baked) == 2
    for layer in range(g.num_layers):
        shift = torch.zeros(g.num_heads * g.head_dim, dtype=torch.float64)
        for (l, h), d, s in zip(heads, directions, stds):
            if l == layer:
                shift[h * g.head_dim:(h + 1) * g.head_dim] = torch.from_numpy(3.0 * s * d)
        w_o = model.model.layers[layer].self_attn.o_proj.weight.double()
        torch.testing.assert_close(baked.model.layers[layer].self_attn.o_proj.bias.double(), 2 * (w_o @ shift),
                                   rtol=0, atol=1e-5)
