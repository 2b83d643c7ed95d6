"""Every ``iti`` subcommand (collect, validate, bake, export, import, faithfulness, concepts, demo) is generated from its config dataclass: every
field has a flag, the defaults parse to the dataclass defaults, values round-trip, help comes from the field; and
default output locations follow :func:`iti.paths.output_root`. Nothing here loads a model."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from iti.cli import build_parser
from iti.cli.config_args import config_from_args, flag_specs
from iti.concepts.experiment import ConceptConfig
from iti.faithfulness.experiment import FaithfulnessConfig
from iti.interop.config import ExportConfig, ImportConfig
from iti.truthfulqa.config import BakeConfig, CollectConfig, DemoConfig, ValidationConfig

COMMANDS = {"validate": ValidationConfig, "faithfulness": FaithfulnessConfig, "concepts": ConceptConfig, "collect": CollectConfig,
            "bake": BakeConfig, "demo": DemoConfig, "export": ExportConfig, "import": ImportConfig}
#: values of the fields without a default (required flags)
REQUIRED = {"bake": {"output_dir": "out"}, "export": {"format": "pyvene", "output": "o"},
            "import": {"format": "gguf", "input": "i", "model_name": "m"}}


def _required_argv(command: str) -> list[str]:
    return [a for k, v in REQUIRED.get(command, {}).items() for a in (f"--{k}", v)]


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _parse(command: str, argv: list[str]):
    return config_from_args(COMMANDS[command], _subparser(command).parse_args(argv))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_has_a_flag_with_help_from_the_field(command):
    cls = COMMANDS[command]
    parser = _subparser(command)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) is False:
            continue
        assert f.name in actions, f"{command}: no flag for {f.name}"
        action = actions[f.name]
        flag = f.metadata.get("flag", f.name)
        assert f"--{flag}" in action.option_strings and f"--{flag.replace('_', '-')}" in action.option_strings
        assert f.metadata["help"].replace("%", "%%") in action.help, f.name
    text = "".join(parser.format_help().split())  # argparse wraps lines anywhere in a long word
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            assert "".join(f.metadata["help"].split()) in text, f.name


@pytest.mark.parametrize("command", COMMANDS)
def test_defaults_parse_to_the_dataclass_defaults(command, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = _parse(command, _required_argv(command))
    expected = COMMANDS[command](**REQUIRED.get(command, {}))
    assert cfg == expected  # control_seeds: [--seed] = [42], the field's default


def test_values_round_trip_into_the_configs():
    v = _parse("validate", ["--num-heads", "7", "--alpha", "2.5", "--seed", "3", "--no_generate", "--use_center_of_mass",
                            "--sweep_alphas", "1", "2", "--preset", "lm-eval", "--max_questions", "10"])
    assert (v.num_heads, v.alpha, v.seed, v.generate, v.use_center_of_mass) == (7, 2.5, 3, False, True)
    assert (v.sweep_alphas, v.preset, v.max_questions, v.control_seeds) == ([1.0, 2.0], "lm-eval", 10, [3])
    assert _parse("validate", ["--control_seeds", "1", "2"]).control_seeds == [1, 2]

    f = _parse("faithfulness", ["--dataset", "rte", "--task", "classify", "--task-config", "c-persona-you",
                                "--max_samples", "0", "--quiet", "--remote_timeout", "5", "--alpha", "3"])
    assert (f.datasets, f.tasks, f.task_config) == (("rte",), ("classify",), ("c-persona-you",))
    assert (f.max_samples, f.progress, f.remote_timeout, f.alpha) == (None, False, 5.0, 3.0)
    assert _parse("faithfulness", ["--max-samples", "7"]).max_samples == 7

    c = _parse("concepts", ["--ks", "2", "8", "--max_pairs", "0", "--no-dense", "--l1_strengths", "--output_dir", "x"])
    assert (c.ks, c.max_pairs, c.dense_baseline, c.l1_strengths, c.output_dir) == ((2, 8), None, False, (), "x")
    with pytest.raises(SystemExit):
        _subparser("faithfulness").parse_args(["--task", "bogus"])


def test_unsupported_field_types_are_refused():
    @dataclasses.dataclass
    class Bad:
        mapping: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="mapping"):
        flag_specs(Bad)


def test_default_output_locations(monkeypatch, tmp_path):
    """The checkout when running from one, the working directory for an installed copy, $ITI_OUTPUT_DIR above both."""
    from iti import paths
    from iti.faithfulness.experiment import default_output_dir
    from iti.truthfulqa.config import VALIDATION_RESULTS

    monkeypatch.delenv(paths.OUTPUT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.in_checkout() and paths.results_dir(VALIDATION_RESULTS) == paths.CHECKOUT_DIR / "validation" / "results"
    assert paths.features_dir() == paths.CHECKOUT_DIR / "features"
    monkeypatch.setattr(paths, "CHECKOUT_DIR", tmp_path / "site-packages")  # an installed copy: no pyproject.toml
    assert not paths.in_checkout()
    assert paths.results_dir("validation/concepts_results") == tmp_path / "validation" / "concepts_results"
    assert ConceptConfig().output_dir == str(tmp_path / "validation" / "concepts_results" / "run")
    assert default_output_dir(FaithfulnessConfig()).parent == tmp_path / "validation" / "faithfulness_results"
    monkeypatch.setenv(paths.OUTPUT_ENV, str(tmp_path / "out"))
    assert paths.features_dir() == tmp_path / "out" / "features"
    assert ValidationConfig().features_path("tqa_mc2") == tmp_path / "out" / "features" / "smollm2-135m_tqa_mc2"
    with pytest.raises(ValueError, match="relative to the output root"):
        paths.results_dir("/abs")


def test_collect_bake_and_demo_round_trip_and_a_required_flag_is_required(capsys):
    c = _parse("collect", ["--model_name", "m", "--dataset-name", "tqa_gen_end_q", "--no_layer_wise", "--quiet", "--shard", "0/2"])
    assert (c.model_name, c.dataset_name, c.layer_wise, c.progress, c.shard) == ("m", "tqa_gen_end_q", False, False, "0/2")
    b = _parse("bake", ["--output_dir", "o", "--num_heads", "4", "--use_center_of_mass", "--alpha", "3"])
    assert (b.output_dir, b.num_heads, b.use_center_of_mass, b.alpha, b.intervention) == ("o", 4, True, 3.0, None)
    assert _parse("demo", ["--max_questions", "8"]).max_questions == 8
    assert _parse("bake", []).output_dir is None  # edit_weight.py's own directory (as written in honest_llama's README)
    with pytest.raises(SystemExit):
        _subparser("export").parse_args([])
    assert "--format" in capsys.readouterr().err
