"""honest_llama's ``--use_center_of_mass`` / ``--use_random_dir``, all four combinations, in ``iti validate``
(validate_2fold.py) and ``iti bake`` (edit_weight.py), checked against the original's logic written out below."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iti.architectures import HeadGeometry
from iti.errors import InvalidOptionError
from iti.features import FeatureSet
from iti.truthfulqa.config import ValidationConfig, plan_rows
from iti.truthfulqa.fit import build_intervention, train_fold_probes

from ..conftest import make_tiny_model, tiny_tokenizer, write_tiny_tqa_features


def original_choice(use_center_of_mass: bool, use_random_dir: bool) -> tuple[str, str]:
    """(heads, direction) as likenneth/honest_llama's utils.py picks them, for validate_2fold.py and edit_weight.py:

    * ``get_top_heads(..., use_random_dir)`` takes the top heads by probe accuracy, then, ``if use_random_dir``,
      overwrites them with heads drawn at random without replacement (whatever the direction flag);
    * ``get_interventions_dict(..., use_center_of_mass, use_random_dir, com_directions)`` gives each head
      ``if use_center_of_mass``: the mass-mean direction, ``elif use_random_dir``: a random normal one, ``else``:
      the probe's weights. The mass-mean branch comes first, so both flags give mass-mean directions."""
    heads = "random" if use_random_dir else "top"
    if use_center_of_mass:
        direction = "mass_mean"
    elif use_random_dir:
        direction = "random"
    else:
        direction = "probe"
    return heads, direction


COMBOS = [(False, False), (True, False), (False, True), (True, True)]
IDS = ["neither", "com", "random", "com+random"]
L, H, D = 3, 4, 8
SIGNAL = [(1, 2), (2, 0)]  # the heads whose activations separate true from false


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _synthetic(n_questions: int = 30, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    """tqa_mc2-like features (one true and one false row a question) where only SIGNAL heads carry the label,
    and tqa_gen_end_q-like tuning rows (one a question)."""
    rng = np.random.default_rng(seed)
    labels = np.tile([1, 0], n_questions)
    X = rng.normal(size=(2 * n_questions, L, H, D)).astype(np.float32)
    for l, h in SIGNAL:
        X[:, l, h, 0] += np.where(labels == 1, 3.0, -3.0)
    g = HeadGeometry(num_layers=L, num_heads=H, num_kv_heads=H, head_dim=D, hidden_size=H * D)
    manifest = {"model": {"name": "synthetic", "geometry": g.to_dict()}, "dataset": {"name": "tqa_mc2"}}
    features = FeatureSet(Path("synthetic_tqa_mc2"), manifest, X, labels, np.repeat(np.arange(n_questions), 2), None)
    tune = rng.normal(size=(n_questions, L, H, D)).astype(np.float32)
    tuning = FeatureSet(Path("synthetic_tqa_gen_end_q"), {**manifest, "dataset": {"name": "tqa_gen_end_q"}}, tune,
                        np.zeros(n_questions, dtype=int), np.arange(n_questions), None)
    return features, tuning


@pytest.mark.parametrize("com,rand", COMBOS, ids=IDS)
def test_method_and_selector_are_honest_llamas_flags_by_their_library_names(com, rand):
    """--method / --selector (iti.methods / iti.selectors names) and honest_llama's two flags set one choice: each
    spelling gives the same rows and run record; a contradiction or a pair the flags cannot say is refused."""
    want_heads, want_direction = original_choice(com, rand)
    want_selector = {"top": "probe_accuracy", "random": "random"}[want_heads]
    by_flags = ValidationConfig(use_center_of_mass=com, use_random_dir=rand)
    by_names = ValidationConfig(method=want_direction, selector=want_selector)
    assert (by_flags.method, by_flags.selector) == (want_direction, want_selector)
    assert (by_names.use_center_of_mass, by_names.use_random_dir) == (bool(com), bool(rand))
    assert plan_rows(by_flags) == plan_rows(by_names) and by_flags.method_label == by_names.method_label
    other = next(m for m in ("probe", "mass_mean", "random") if m != want_direction)
    if com or rand:
        with pytest.raises(InvalidOptionError, match="contradicts --use_center_of_mass"):
            ValidationConfig(use_center_of_mass=com, use_random_dir=rand, method=other)


def test_pairs_honest_llamas_flags_cannot_say_are_refused():
    for method, selector in (("random", "probe_accuracy"), ("probe", "random")):
        with pytest.raises(InvalidOptionError, match=f"--method {method} --selector {selector}: not a run"):
            ValidationConfig(method=method, selector=selector)
    with pytest.raises(InvalidOptionError, match="--method: one of probe, mass_mean, random"):
        ValidationConfig(method="caa")


@pytest.mark.parametrize("com,rand", COMBOS, ids=IDS)
def test_validate_rows_follow_honest_llama(com, rand):
    """The ITI row of ``iti validate`` uses the original's heads and directions for each flag combination, and the
    intervention built from it has them: random heads are the seeded draw, not the top ones; mass-mean directions
    are mean(true) - mean(false) over the fold's training questions."""
    want_heads, want_direction = original_choice(com, rand)
    cfg = ValidationConfig(use_center_of_mass=com, use_random_dir=rand, num_heads=2, seed=7)
    iti_rows = [r for r in plan_rows(cfg) if r.name == "ITI"]
    assert {(r.heads, r.direction) for r in iti_rows} == {(want_heads, want_direction)}
    # iti's own cost-matched controls stay what they were: random heads with a real direction, top heads at random
    controls = {r.name: (r.heads, r.direction) for r in plan_rows(cfg) if r.name != "ITI" and r.name != "baseline"}
    assert controls["random direction"] == ("top", "random")
    assert controls["random heads"] == ("random", "mass_mean" if want_direction == "random" else want_direction)

    features, tuning = _synthetic()
    questions = np.unique(features.question_ids)
    fold = train_fold_probes(features, questions[:20], seed=cfg.seed)
    spec = iti_rows[0]
    inter = build_intervention(features, tuning, fold, num_heads=2, alpha=1.0, model_name="synthetic",
                               method=spec.direction, selector=spec.selector, seed=spec.seed)
    if want_heads == "top":
        assert inter.heads == SIGNAL
    else:  # a seeded draw of 2 of the 12 flat head indices, without replacement
        flat = np.random.default_rng(cfg.seed).choice(L * H, size=2, replace=False)
        assert inter.heads == sorted((int(i) // H, int(i) % H) for i in flat)
    li, hi = np.array([l for l, _ in inter.heads]), np.array([h for _, h in inter.heads])
    rows = np.isin(features.question_ids, questions[:20])
    X, y = features.head_wise[rows][:, li, hi].astype(np.float64), features.labels[rows]
    mass_mean = _unit(X[y == 1].mean(axis=0) - X[y == 0].mean(axis=0))
    probe = _unit(np.stack([fold.probes.coef_[l, h] for l, h in inter.heads]).astype(np.float64))
    if want_direction == "mass_mean":
        np.testing.assert_allclose(inter.directions, mass_mean, atol=1e-6)
    elif want_direction == "probe":
        np.testing.assert_allclose(inter.directions, probe, atol=1e-6)
    else:
        np.testing.assert_allclose(inter.directions, _unit(np.random.default_rng(cfg.seed).normal(size=(2, D))), atol=1e-6)
        assert np.abs((inter.directions * mass_mean).sum(axis=1)).max() < 0.99


def test_default_output_directories_differ_for_the_four_combinations():
    labels = {ValidationConfig(use_center_of_mass=c, use_random_dir=r).method_label for c, r in COMBOS}
    assert labels == {"probe", "mass_mean", "random", "random-heads_mass_mean"}


@pytest.fixture(scope="module")
def tiny_bake_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bake_flags")
    model_dir, features = root / "tinyllama", root / "features"
    model = make_tiny_model("llama")
    model.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    features.mkdir()
    write_tiny_tqa_features(model, features, "tinyllama")
    return root, model_dir, features


@pytest.mark.parametrize("com,rand", COMBOS, ids=IDS)
def test_bake_fits_what_edit_weight_fits(com, rand, tiny_bake_setup, capsys):
    """``iti bake`` (edit_weight.py) without --intervention: heads and directions of each flag combination as the
    original's, on all questions (probes on an 80/20 split, seed 3)."""
    from iti import Intervention, load_features
    from iti.cli import main
    from iti.directions import fit_head_probes, top_heads

    root, model_dir, features = tiny_bake_setup
    want_heads, want_direction = original_choice(com, rand)
    out = root / f"baked_{int(com)}{int(rand)}"
    flags = ["--use_center_of_mass"] * com + ["--use_random_dir"] * rand
    argv = ["bake", "--model_name", str(model_dir), "--features_dir", str(features), "--output_dir", str(out),
            "--num_heads", "3", "--seed", "3", *flags]
    assert main(argv) == 0, capsys.readouterr().err
    want_selector = {"top": "probe_accuracy", "random": "random"}[want_heads]
    assert f"heads by {want_selector}, {want_direction} directions" in capsys.readouterr().out
    got = Intervention.load(out / "iti_intervention")
    assert (got.meta["selector"], got.meta["method"]) == (want_selector, want_direction)
    mc2 = load_features(features / "tinyllama_tqa_mc2", mmap=False)
    g = mc2.geometry
    fit = fit_head_probes(mc2.head_wise, mc2.labels, mc2.question_ids, val_ratio=0.2, seed=3)
    if want_heads == "top":
        assert got.heads == top_heads(fit.accuracies, 3)
    else:
        flat = np.random.default_rng(3).choice(g.num_total_heads, size=3, replace=False)
        assert got.heads == sorted((int(i) // g.num_heads, int(i) % g.num_heads) for i in flat)
    li, hi = np.array([l for l, _ in got.heads]), np.array([h for _, h in got.heads])
    X, y = mc2.head_wise[:, li, hi].astype(np.float64), mc2.labels
    if want_direction == "mass_mean":
        expected = _unit(X[y == 1].mean(axis=0) - X[y == 0].mean(axis=0))
    elif want_direction == "probe":
        expected = _unit(np.stack([fit.probes.coef_[l, h] for l, h in got.heads]).astype(np.float64))
    else:
        expected = _unit(np.random.default_rng(3).normal(size=(3, g.head_dim)))
    np.testing.assert_allclose(got.directions, expected, atol=1e-5)


def test_edit_weights_dataset_and_val_ratio_flags_set_the_fit(tiny_bake_setup, capsys):
    """edit_weight.py's --dataset_name, --activations_dataset and --val_ratio: the probe split and the std rows are
    the ones named (checked against the probes' top heads on that split, written out here)."""
    from iti import Intervention, load_features
    from iti.cli import main
    from iti.directions import fit_head_probes, top_heads

    root, model_dir, features = tiny_bake_setup
    out = root / "baked_val_ratio"
    argv = ["bake", "--model_name", str(model_dir), "--features_dir", str(features), "--output_dir", str(out),
            "--num_heads", "3", "--seed", "3", "--val_ratio", "0.5", "--dataset_name", "tqa_mc2",
            "--activations_dataset", "tqa_gen_end_q"]
    assert main(argv) == 0, capsys.readouterr().err
    got = Intervention.load(out / "iti_intervention")
    mc2 = load_features(features / "tinyllama_tqa_mc2", mmap=False)
    fit = fit_head_probes(mc2.head_wise, mc2.labels, mc2.question_ids, val_ratio=0.5, seed=3)
    assert got.meta["val_ratio"] == 0.5 and got.heads == top_heads(fit.accuracies, 3)
    assert "probes on a 50/50 split" in capsys.readouterr().out
    argv[argv.index("--output_dir") + 1] = str(root / "never_written")
    assert main([*argv[:-6], "--val_ratio", "1.5"]) == 2
    assert "--val_ratio: a share strictly between 0 and 1" in capsys.readouterr().err


def test_honest_llamas_device_flag_is_a_gpu_index_or_a_one_line_refusal(capsys):
    import torch

    from iti.cli import main
    from iti.models import device_map_from_index

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        assert device_map_from_index(0) == "cuda:0"
    assert main(["validate", "--device", str(gpus), "--no_generate"]) == 2
    err = capsys.readouterr().err
    assert f"--device: the index of a CUDA device (this machine has {gpus}); leave --device out" in err
    assert err.count("\n") == 1


def test_judge_name_and_info_name_select_the_judges(monkeypatch):
    """validate_2fold.py's --judge_name / --info_name: the endpoint judge with those served names (ITI_JUDGE_URL,
    default OpenAI's API where the original's fine-tuned judges live), or the in-process judges with --judge hf."""
    from iti.truthfulqa.experiment import prepare_judge
    from iti.truthfulqa.judge import OPENAI_URL

    from ..conftest import serve_openai

    monkeypatch.delenv("ITI_JUDGE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = ValidationConfig(judge_name="ft:davinci-002:org:truthful", info_name="ft:davinci-002:org:informative")
    assert cfg.judge == "endpoint"
    with serve_openai(models={"ft:davinci-002:org:truthful": "a", "ft:davinci-002:org:informative": "b"}) as (url, _):
        monkeypatch.setenv("ITI_JUDGE_URL", url)
        judge = prepare_judge(cfg)  # reachable and serving both names: checked before any row
    assert judge.identity() == {"url": url.rstrip("/"), "true_model": "ft:davinci-002:org:truthful",
                                "info_model": "ft:davinci-002:org:informative"}
    monkeypatch.delenv("ITI_JUDGE_URL")
    from iti.truthfulqa.judge import JudgeConfig

    assert JudgeConfig.from_names("t", "i") == JudgeConfig(OPENAI_URL, "t", "i", "sk-test")
    hf = ValidationConfig(judge="hf", judge_name="org/true-judge", info_name="org/info-judge")
    assert (hf.judge, hf.judge_model, hf.judge_info_model) == ("hf", "org/true-judge", "org/info-judge")
    with pytest.raises(InvalidOptionError, match="--info_name without --judge_name"):
        ValidationConfig(info_name="x")
