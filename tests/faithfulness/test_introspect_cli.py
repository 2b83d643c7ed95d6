"""introspect's ``experiments/analysis.py`` command line, option by option, read by ``iti faithfulness`` with
introspect's meaning. The option list and each meaning are written out here from introspect's argparse definitions
and its ``default_args.py`` (commit be801d9), not taken from iti."""
from __future__ import annotations

import argparse

import pytest

from iti.cli import build_parser
from iti.cli.config_args import config_from_args
from iti.faithfulness.datasets import canonical_dataset
from iti.faithfulness.experiment import FaithfulnessConfig, chat_format, output_paths, run_faithfulness, system_message
from iti.models import resolve_model

from ..conftest import SHARED_DATA
from .test_chat_formats import FALCON_PREAMBLE

#: Every option of introspect's analysis.py, in its order.
INTROSPECT_OPTIONS = ("--persistent-dir", "--endpoint", "--client", "--model-name", "--model-type", "--model-id",
                      "--system-message", "--dataset", "--split", "--task", "--task-config", "--seed", "--max-workers",
                      "--debug", "--clean-cache", "--dry")
def _config(*argv: str) -> FaithfulnessConfig:
    args = build_parser().parse_args(["faithfulness", *argv])
    return config_from_args(FaithfulnessConfig, args)


def _accepted() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["faithfulness"]
    return {o for a in sub._actions for o in a.option_strings}


def test_every_introspect_option_is_accepted():
    assert {o for o in INTROSPECT_OPTIONS if o not in _accepted()} == set()


def test_each_option_means_what_it_means_in_introspect(tmp_path):
    # --model-name: a short name; default_model_id maps falcon-7b to the instruct checkpoint
    assert resolve_model(_config("--model-name", "falcon-7b").model).location == "tiiuae/falcon-7b-instruct"
    assert _config("--model-id", "mistralai/Mistral-7B-Instruct-v0.2").model == "mistralai/Mistral-7B-Instruct-v0.2"
    # --model-type: introspect's model classes Falcon / Llama2 / Mistral are its prompt formats
    assert [chat_format(_config("--model-type", t)) for t in ("Falcon", "Llama2", "Mistral")] == [
        "falcon", "llama2", "mistral"]
    # --system-message: none, or default = the model type's own (Falcon: its preamble; Llama2 / Mistral: none)
    assert system_message(_config("--model-name", "falcon-7b", "--system-message", "none")) is None
    assert system_message(_config("--model-name", "falcon-7b", "--system-message", "default")) == FALCON_PREAMBLE
    assert system_message(_config("--model-name", "llama2-7b", "--system-message", "default")) is None
    # --endpoint: the server's address; its OpenAI-compatible routes are under /v1
    assert _config("--endpoint", "http://127.0.0.1:20002").remote_url == "http://127.0.0.1:20002/v1"
    assert _config("--endpoint", "http://127.0.0.1:8000/v1").remote_url == "http://127.0.0.1:8000/v1"
    # --dataset in introspect's spelling, --split, --task, --task-config, --seed
    cfg = _config("--dataset", "bAbI-2", "--split", "valid", "--task", "answerable", "--task-config", "i-options",
                  "--seed", "3")
    assert ([canonical_dataset(d) for d in cfg.datasets], cfg.split, list(cfg.tasks), list(cfg.task_config),
            cfg.seed) == (["babi2"], "valid", ["answerable"], ["i-options"], 3)
    # --persistent-dir: introspect keeps its cache in DIR/database and its results in DIR/results/analysis
    out, cache = output_paths(_config("--persistent-dir", str(tmp_path)))
    assert cache.parent == tmp_path / "database" and out.parent == tmp_path / "results" / "analysis"
    # --client: TGI and VLLM both speak the OpenAI routes at --endpoint; Offline replays from the cache
    assert _config("--client", "Offline").client == "Offline"
    from iti.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="--client: TGI needs the server's address"):
        _config("--client", "TGI").validate()
    _config("--client", "VLLM", "--endpoint", "http://127.0.0.1:8000").validate()
    # --max-workers: requests in flight at once, introspect's default 50
    assert (_config().max_workers, _config("--max-workers", "16").max_workers) == (50, 16)
    assert (_config("--debug").debug, _config("--clean-cache").clean_cache, _config("--dry").dry) == (True, True, True)


@pytest.mark.skipif(not (SHARED_DATA / "faithfulness").is_dir(), reason="needs the shared faithfulness data")
def test_an_introspect_command_line_plans_without_a_model(capsys):
    args = build_parser().parse_args([
        "faithfulness", "--model-name", "falcon-7b", "--system-message", "default", "--dataset", "SST2", "--split", "test",
        "--task", "answerable", "--task-config", "i-persona-you", "i-options", "--seed", "0", "--dry",
        "--data_dir", str(SHARED_DATA), "--max_samples", "0"])
    plan = run_faithfulness(config_from_args(FaithfulnessConfig, args))
    # answerable: the classify prompt and the yes / no question for each of SST2's 872 validation sentences
    assert plan["plan"] == [{"dataset": "sst2", "task": "answerable", "arms": ["plain"], "samples": 872, "prompts": 1744,
                             "follow_up_prompts_at_most": 0}]
