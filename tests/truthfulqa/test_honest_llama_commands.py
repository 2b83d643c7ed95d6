"""honest_llama's own command lines (its README, get_activations.sh and the sweep scripts under validation/sweeping),
replayed through iti's command line: each is accepted with the original's meaning or refused with one line; a baked
checkpoint in honest_llama's first, custom-config format is refused by name, or loaded with its bias through its own
code; ``--model_prefix`` evaluates a baked copy with the base model's features; probes save and load without pickle."""
import json
import shlex

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from iti.cli import main
from iti.cli.commands import build_parser
from iti.cli.config_args import config_from_args
from iti.errors import DroppedWeightsError, FeatureFileError
from iti.models import HF_NAMES, load_model, prefixed_model_name, resolve_model
from iti.probes import HeadProbes, load_probes, save_probes
from iti.truthfulqa.config import BakeConfig, CollectConfig, ValidationConfig

from ..conftest import make_tiny_model, tiny_tokenizer

# The command lines as honest_llama writes them (README.md; get_activations/get_activations.sh;
# validation/sweeping/run_job_validate_2fold.sh with the values sweep_parallel.sh and sweep_sequential.sh give it).
README_VALIDATE = ("validate_2fold.py --model_name llama_7B --num_heads 48 --alpha 15 --device 0 --num_fold 2 "
                   "--use_center_of_mass --instruction_prompt default --judge_name {judge} --info_name {info}").format(
    judge="ft:davinci-002:truth", info="ft:davinci-002:info")  # the README's placeholders, filled in
README_EDIT = "edit_weight.py --model_name llama2_chat_7B"
GET_ACTIVATIONS = ["get_activations.py --model_name llama3_8B_instruct --dataset_name tqa_mc2",
                   "get_activations.py --model_name llama3_8B_instruct --dataset_name tqa_gen_end_q"]
SWEEP_JOB = ("validate_2fold.py --model_name {m} --model_prefix {p} --num_heads {k} --alpha {a} --instruction_prompt default "
             "--device 0 --num_fold 2 --use_center_of_mass --judge_name {j} --info_name {i} --seed {s}")
SWEEPS = ([SWEEP_JOB.format(m=m, p="''", k=k, a=a, j="judge", i="info", s=s)
           for m in ("llama2_chat_7B", "llama2_chat_13B", "llama3_8B_instruct") for a, k in (("0", "1"), ("15", "48"))
           for s in (1, 2, 3)]
          + [SWEEP_JOB.format(m="llama3_8B_instruct", p="''", k=48, a=15, j="judge", i="info", s=s) for s in range(1, 11)])
SCRIPT_COMMAND = {"get_activations.py": ("collect", CollectConfig), "validate_2fold.py": ("validate", ValidationConfig),
                  "edit_weight.py": ("bake", BakeConfig)}


def _parse(line: str):
    """A command line as the shell splits it, through iti's parser for the script: (args, config)."""
    script, *argv = shlex.split(line)
    command, config = SCRIPT_COMMAND[script]
    args = build_parser().parse_args([command, *argv])
    return args, config_from_args(config, args)


def test_readme_validate_command_means_what_it_means_in_honest_llama():
    args, cfg = _parse(README_VALIDATE)
    assert (cfg.model_name, cfg.num_heads, cfg.alpha, cfg.num_fold, cfg.instruction_prompt) == ("llama_7B", 48, 15.0, 2, "default")
    assert (cfg.method, cfg.selector) == ("mass_mean", "probe_accuracy")  # --use_center_of_mass on the top heads
    assert (cfg.judge, cfg.judge_name, cfg.info_name) == ("endpoint", "ft:davinci-002:truth", "ft:davinci-002:info")
    assert args.device == 0 and resolve_model(cfg.model_name).location == "huggyllama/llama-7b"


@pytest.mark.parametrize("line", SWEEPS)
def test_sweep_script_command_lines_parse_with_their_meaning(line):
    args, cfg = _parse(line)
    assert cfg.model_prefix == "" and cfg.seed == int(line.rsplit(" ", 1)[1]) and cfg.method == "mass_mean"
    assert (cfg.num_heads, cfg.alpha) in ((1, 0.0), (48, 15.0)) and cfg.judge == "endpoint"
    assert resolve_model(prefixed_model_name(cfg.model_name, cfg.model_prefix)).location == HF_NAMES[cfg.model_name]


def test_get_activations_and_edit_weight_command_lines_parse_with_their_meaning():
    for line, dataset in zip(GET_ACTIVATIONS, ("tqa_mc2", "tqa_gen_end_q")):
        _, cfg = _parse(line)
        assert (cfg.model_name, cfg.dataset_name) == ("llama3_8B_instruct", dataset)
    args, cfg = _parse(README_EDIT)
    assert cfg.model_name == "llama2_chat_7B" and cfg.output_dir is None  # edit_weight.py's own directory, see below


def test_first_commits_positional_model_name_is_taken_as_model_name():
    args = build_parser().parse_args(["validate", "llama_7B", "--num_heads", "48"])
    from iti.cli.commands import _legacy_validate_args

    _legacy_validate_args(args)
    assert args.model_name == "llama_7B"


@pytest.mark.parametrize("line, message", [
    ("validate_2fold.py --model_name llama_7B --use_honest", "--use_honest: gone from honest_llama since August 2024: use --model_prefix honest_"),
    ("validate_2fold.py --model_name llama_7B --use_prefix", "--use_prefix: honest_llama's former few-shot preset: use --many_shot K"),
    ("validate_2fold.py llama_7B --model_name llama2_chat_7B", "--model_name: one model name, positional"),
    ("validate_2fold.py --model_name llama_7B --model_prefix honest", "--model-prefix: invalid choice: 'honest' (choose from '', 'honest_', 'local_')"),
    ("validate_2fold.py --model_name alpaca_7B --model_prefix honest_", "honest_llama has no honest_alpaca_7B; its honest_ models are"),
])
def test_command_lines_iti_cannot_take_fail_with_one_line_saying_what_to_use(line, message, capsys):
    script, *argv = shlex.split(line)
    try:
        code = main(["validate", *argv])
    except SystemExit as e:  # argparse's own refusal: usage, then one error line
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err
    assert err[-1].startswith("iti") and (len(err) == 1 or err[0].startswith("usage:"))  # one line after the usage


def test_as_written_on_a_machine_without_that_gpu_the_device_flag_fails_with_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU 0")
    script, *argv = shlex.split(README_VALIDATE)
    assert main(["validate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0] and "leave --device out to run on the CPU" in err[0]


def test_model_prefix_names_honest_llamas_baked_models():
    assert resolve_model(prefixed_model_name("llama2_chat_7B", "honest_")).location == "jujipotle/honest_llama2_chat_7B"
    with pytest.raises(Exception, match="honest_llama has no honest_alpaca_7B"):
        prefixed_model_name("alpaca_7B", "honest_")
    with pytest.raises(Exception, match="results_dump/edited_models_dump/llama_7B_seed_42_top_48_heads_alpha_15"):
        resolve_model(prefixed_model_name("llama_7B", "local_"))


def _tiny_checkpoint(path, model=None):
    model = model or make_tiny_model("llama")
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return model


def _bias_like_honest_llama(path, model, seed=0):
    """honest_llama's first baked format: o_proj.bias tensors in the checkpoint and a custom config key its patched
    Llama reads (stock transformers has no place for either)."""
    rng = np.random.default_rng(seed)
    tensors = load_file(str(path / "model.safetensors"))
    biases = {}
    for i in range(model.config.num_hidden_layers):
        biases[i] = rng.normal(size=model.config.hidden_size).astype(np.float32)
        tensors[f"model.layers.{i}.self_attn.o_proj.bias"] = biases[i]
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["oproj_bias"] = True
    (path / "config.json").write_text(json.dumps(config))
    return biases


MODELING = '''
import torch
from torch import nn
from transformers import LlamaForCausalLM


class HonestLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "oproj_bias", False):
            for layer in self.model.layers:
                o = layer.self_attn.o_proj
                o.bias = nn.Parameter(torch.zeros(o.out_features))
'''


def test_a_checkpoint_whose_bias_transformers_would_drop_is_refused_by_name_or_loaded_by_its_own_code(tmp_path, capsys):
    path = tmp_path / "honest_tiny"
    model = _tiny_checkpoint(path)
    biases = _bias_like_honest_llama(path, model)
    with pytest.raises(DroppedWeightsError, match=r"stores 3 bias tensors .*o_proj.bias.*oproj_bias.*--trust_remote_code"):
        load_model(str(path))
    assert main(["validate", "--model_name", str(path), "--max_questions", "4"]) == 2  # before any row: no features
    # with its own modeling code, named in auto_map, the bias loads
    (path / "modeling_honest.py").write_text(MODELING)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_honest.HonestLlamaForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DroppedWeightsError, match="--trust_remote_code"):
        load_model(str(path))  # off by default: the stock class, which would drop them
    loaded, _ = load_model(str(path), trust_remote_code=True)
    # the same logits as the stock model with each bias set by hand
    with torch.no_grad():
        for i, b in biases.items():
            o = model.model.layers[i].self_attn.o_proj
            o.bias = torch.nn.Parameter(torch.tensor(b))
        ids = torch.tensor([[1, 5, 9, 14, 3]])
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_probes_save_and_load_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2, 3, 5)).astype(np.float32)
    y = (X[:, 0, 0, 0] + 0.3 * rng.normal(size=40) > 0).astype(int)
    probes = HeadProbes().fit(X, y)
    path = save_probes(probes, tmp_path / "probes")
    stored = load_file(str(path / "probes.safetensors"))  # plain safetensors, no pickle anywhere
    np.testing.assert_array_equal(stored["coef"], probes.coef_)
    back = load_probes(path)
    np.testing.assert_array_equal(back.predict_proba(X), probes.predict_proba(X))
    assert back.fit_ == probes.fit_ and back.C == probes.C
    raw = bytearray((path / "probes.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (path / "probes.safetensors").write_bytes(bytes(raw))
    with pytest.raises(FeatureFileError, match="corrupt"):
        load_probes(path)
    (path / "probes.json").unlink()
    with pytest.raises(FeatureFileError):
        load_probes(path)


def test_model_prefix_local_evaluates_edit_weights_output_with_the_base_models_features(tmp_path, monkeypatch, capsys):
    """honest_llama's flow, on a tiny Llama standing in for llama2_chat_7B (48 heads, as K's default): edit_weight.py as
    the README writes it bakes into results_dump/edited_models_dump/..., and validate_2fold.py --model_prefix local_
    evaluates that copy with llama2_chat_7B's features, saying so in run.json, its plain row the baked-in row."""
    import transformers

    from iti.fingerprint import model_fingerprint

    from ..conftest import write_tiny_tqa_features

    config = transformers.LlamaConfig(vocab_size=len(tiny_tokenizer()), num_hidden_layers=6, num_attention_heads=8,
                                      num_key_value_heads=8, hidden_size=64, intermediate_size=64, max_position_embeddings=4096,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    _tiny_checkpoint(tmp_path / "base", base)
    monkeypatch.setitem(HF_NAMES, "llama2_chat_7B", str(tmp_path / "base"))  # the hub id, pointed at the tiny model
    features = tmp_path / "features"
    write_tiny_tqa_features(base, features, "llama2_chat_7B")
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(README_EDIT.replace("edit_weight.py", "bake")) + ["--features_dir", str(features)]) == 0, capsys.readouterr().err
    baked = tmp_path / "results_dump/edited_models_dump/llama2_chat_7B_seed_42_top_48_heads_alpha_15"
    assert (baked / "iti_intervention").is_dir()
    out = tmp_path / "v"
    argv = ["validate", "--model_name", "llama2_chat_7B", "--model_prefix", "local_", "--features_dir", str(features),
            "--max_questions", "10", "--num_heads", "3", "--no_generate", "--ce_samples", "2", "--output_dir", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["model_prefix"] == "local_" and run["evaluated_model"].startswith("local_llama2_chat_7B (features")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(baked)
    assert run["model weights_sha256"] == model_fingerprint(loaded) != model_fingerprint(base)
    assert (out / "rows" / "fold0_baked-in_a0_k0_s42.json").is_file()
    assert "| baked-in | 0 | 0 | 42 |" in (out / "summary.md").read_text()
    assert load_probes(out / "probes_fold0").shape_ == (6, 8, 8)


# Every flag of honest_llama's three argument parsers (HEAD), with a value of the original's type.
ORIGINAL_FLAGS = {
    "get_activations.py": "--model_name llama_7B --model_prefix '' --dataset_name tqa_gen_end_q --device 0",
    "validate_2fold.py": "--model_name llama_7B --model_prefix honest_ --dataset_name tqa_mc2 --activations_dataset tqa_gen_end_q "
                         "--num_heads 48 --alpha 15 --num_fold 2 --val_ratio 0.2 --use_center_of_mass --use_random_dir "
                         "--device 0 --seed 42 --judge_name t --info_name i --instruction_prompt informative",
    "edit_weight.py": "--model_name llama_7B --model_prefix local_ --dataset_name tqa_mc2 --activations_dataset tqa_gen_end_q "
                      "--num_heads 48 --alpha 15.0 --val_ratio 0.2 --use_center_of_mass --use_random_dir --device 0 --seed 42",
}


@pytest.mark.parametrize("script", sorted(ORIGINAL_FLAGS))
def test_every_flag_of_the_original_parsers_is_accepted(script):
    args, cfg = _parse(f"{script} {ORIGINAL_FLAGS[script]}")
    assert cfg.model_name == "llama_7B" and args.device == 0
    if script != "get_activations.py":
        assert (cfg.num_heads, cfg.alpha, cfg.val_ratio, cfg.seed) == (48, 15.0, 0.2, 42)
        assert cfg.use_center_of_mass and cfg.use_random_dir
    if script == "validate_2fold.py":
        assert (cfg.method, cfg.selector) == ("mass_mean", "random")  # both flags: mass-mean directions on random heads


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_readme_and_script_command_lines_run_end_to_end_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    """get_activations.sh and edit_weight.py as written (all 817 questions), and the README's validate_2fold.py command
    (its judges served on a loopback endpoint; without --device on a machine without a GPU; on the first 40 questions,
    --max_questions 40, to keep the run short), a tiny Llama with 48 heads standing in for the named models."""
    import transformers

    from ..conftest import serve_json

    def judge(body):  # a judge that says yes, with honest_llama's top-2 log-probs
        return 200, {"choices": [{"text": " yes", "logprobs": {"top_logprobs": [{" yes": -0.1, " no": -2.5}]}}]}

    config = transformers.LlamaConfig(vocab_size=len(tiny_tokenizer()), num_hidden_layers=6, num_attention_heads=8,
                                      num_key_value_heads=8, hidden_size=64, intermediate_size=64, max_position_embeddings=4096,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    _tiny_checkpoint(tmp_path / "tiny", transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval())
    for name in ("llama3_8B_instruct", "llama_7B", "llama2_chat_7B"):
        monkeypatch.setitem(HF_NAMES, name, str(tmp_path / "tiny"))
    monkeypatch.setenv("ITI_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    for line in GET_ACTIVATIONS:
        assert main(["collect", *shlex.split(line)[1:]]) == 0, capsys.readouterr().err
    for name in ("tqa_mc2", "tqa_gen_end_q"):  # the README's validate names llama_7B: the same tiny model's features
        (tmp_path / "out/features" / f"llama_7B_{name}").symlink_to(tmp_path / "out/features" / f"llama3_8B_instruct_{name}")
    validate = [a for a in shlex.split(README_VALIDATE)[1:] if a not in ("--device", "0")] if not torch.cuda.is_available() \
        else shlex.split(README_VALIDATE)[1:]
    with serve_json(judge) as (url, _):
        monkeypatch.setenv("ITI_JUDGE_URL", url)
        assert main(["validate", *validate, "--features_from_other_weights", "--max_questions", "40"]) == 0, capsys.readouterr().err
    summary = json.loads(next((tmp_path / "out/validation/results").glob("llama_7B_k48_a15_mass_mean/summary.json")).read_text())
    assert summary["num_questions"] == 40 and {r["name"] for r in summary["rows"]} >= {"baseline", "ITI"}
    assert all("True*Info" in r for r in summary["rows"] if r["name"] in ("baseline", "ITI"))
    monkeypatch.setitem(HF_NAMES, "llama2_chat_7B", str(tmp_path / "tiny"))
    for name in ("tqa_mc2", "tqa_gen_end_q"):
        (tmp_path / "out/features" / f"llama2_chat_7B_{name}").symlink_to(tmp_path / "out/features" / f"llama3_8B_instruct_{name}")
    assert main(shlex.split(README_EDIT.replace("edit_weight.py", "bake"))) == 0, capsys.readouterr().err
    assert (tmp_path / "results_dump/edited_models_dump/llama2_chat_7B_seed_42_top_48_heads_alpha_15/iti_intervention").is_dir()
