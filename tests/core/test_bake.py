import pytest
import torch
from transformers import AutoModelForCausalLM

from iti.bake import bake, save_baked
from iti.errors import UnsupportedArchitectureError

from ..conftest import ARCHS, make_intervention, make_tiny_model, tiny_tokenizer, write_tiny_tqa_features
from ..conftest import token_ids as _ids

BAKEABLE = ARCHS  # every supported architecture; Mistral and Qwen2 are saved as Llama checkpoints


@pytest.mark.parametrize("arch", BAKEABLE)
def test_baked_logits_equal_runtime_all_positions(arch):
    model = make_tiny_model(arch)
    inter = make_intervention(model)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions="all"):
            runtime = model(ids).logits
        bake(model, inter)
        baked = model(ids).logits
    assert not torch.allclose(runtime, base, atol=1e-3)
    torch.testing.assert_close(baked, runtime, rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text", "falcon", "falcon_new"])
def test_baked_model_reloads_with_stock_transformers(arch, tmp_path):
    model = make_tiny_model(arch)
    inter = make_intervention(model)
    ids = _ids()
    bake(model, inter)
    save_baked(model, tiny_tokenizer(), tmp_path, inter)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "iti_intervention" / "intervention.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


def test_zero_alpha_bake_changes_nothing():
    model = make_tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        bake(model, make_intervention(model, alpha=0.0))
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_mistral_and_qwen2_are_saved_as_llama_checkpoints_equal_to_the_runtime_intervention(arch, tmp_path):
    """The saved checkpoint is a stock LlamaForCausalLM with attention biases (Qwen2's q/k/v biases kept, zeros
    where there were none); loaded with AutoModelForCausalLM it equals the runtime intervention at every position."""
    import json

    model = make_tiny_model(arch)
    inter = make_intervention(model)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        with inter.applied(model, positions="all"):
            runtime = model(ids).logits
    qkv_bias = {n: p.clone() for n, p in model.named_parameters() if n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))}
    save_baked(bake(model, inter), tiny_tokenizer(), tmp_path, inter)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["architectures"] == ["LlamaForCausalLM"] and saved["attention_bias"] is True
    assert "sliding_window" not in saved and saved["iti_baked"] == [inter.fingerprint()]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    params = dict(reloaded.named_parameters())
    if arch == "qwen2":
        assert qkv_bias and all(torch.equal(params[n], p) for n, p in qkv_bias.items())
    else:
        assert all(torch.count_nonzero(p) == 0 for n, p in params.items() if n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")))
    with torch.no_grad():
        logits = reloaded(ids).logits
    assert not torch.allclose(runtime, base, atol=1e-3)
    torch.testing.assert_close(logits, runtime, rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_a_zero_alpha_llama_checkpoint_of_mistral_and_qwen2_equals_the_original(arch, tmp_path):
    model = make_tiny_model(arch)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
    inter = make_intervention(model, alpha=0.0)
    save_baked(bake(model, inter), tiny_tokenizer(), tmp_path, inter)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, base, rtol=0, atol=1e-4)


def test_a_mistral_with_an_active_sliding_window_is_refused_with_the_reason():
    import transformers as tf

    from ..conftest import tiny_config

    config = tiny_config("mistral")
    config.sliding_window = 16  # < max_position_embeddings (512): a Llama checkpoint would attend further back
    torch.manual_seed(0)
    model = tf.MistralForCausalLM(config).eval()
    with pytest.raises(UnsupportedArchitectureError, match=r"sliding window \(16 tokens\) is active within its context \(512"):
        bake(model, make_intervention(model))
    assert all(p is None for p in (model.model.layers[0].self_attn.o_proj.bias,))  # refused before any change
    config.sliding_window = 512  # a window as long as the context is never used: bakeable
    bake(model, make_intervention(model))


def test_a_qwen2_with_sliding_layers_is_refused_with_the_reason():
    import transformers as tf

    from ..conftest import _common
    from ..conftest import tiny_tokenizer as tok

    config = tf.Qwen2Config(**_common(len(tok())), num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                            max_window_layers=1)
    model = tf.Qwen2ForCausalLM(config).eval()
    with pytest.raises(UnsupportedArchitectureError, match="sliding window"):
        bake(model, make_intervention(model))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_baking_twice_is_refused_unless_adding(arch, tmp_path):
    from iti.errors import ItiError

    model = make_tiny_model(arch)
    inter = make_intervention(model)
    bake(model, inter)
    biases = {n: p.clone() for n, p in model.named_parameters() if n.endswith("bias")}
    with pytest.raises(ItiError) as err:
        bake(model, inter)
    assert inter.fingerprint() in str(err.value) and "add_to_existing" in str(err.value)
    assert all(torch.equal(p, biases[n]) for n, p in model.named_parameters() if n.endswith("bias"))  # unchanged
    # a saved-then-reloaded baked model carries the mark too
    save_baked(model, tiny_tokenizer(), tmp_path, inter)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with pytest.raises(ItiError):
        bake(reloaded, inter)
    # adding on purpose works, and stacks the shift: the same as one bake at twice the alpha
    bake(reloaded, inter, add_to_existing=True)
    once_double = bake(make_tiny_model(arch), inter.with_alpha(2 * inter.alpha))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_ids()).logits, once_double(_ids()).logits, rtol=1e-4, atol=1e-4)
    assert list(reloaded.config.iti_baked) == [inter.fingerprint()] * 2


@pytest.mark.parametrize("arch", ["falcon", "falcon_new"])
def test_falcon_bake_switches_config_bias_and_stores_zero_biases_elsewhere(arch):
    """Falcon's config.bias also gives the fused QKV and the MLP biases: baking turns it on and stores those as
    explicit zeros, so only the dense (output projection) bias carries the shift."""
    model = make_tiny_model(arch)
    assert not model.config.bias
    bake(model, make_intervention(model))
    assert model.config.bias is True
    for name, p in model.named_parameters():
        if name.endswith(("query_key_value.bias", "dense_h_to_4h.bias", "dense_4h_to_h.bias")):
            assert torch.count_nonzero(p) == 0, name
    assert any(torch.count_nonzero(p) for n, p in model.named_parameters() if n.endswith("self_attention.dense.bias"))


def test_bake_without_intervention_fits_on_all_questions(tmp_path, capsys):
    """`iti bake` (edit_weight.py) without --intervention: fit_intervention on every row of the features (probes on
    an 80/20 split of all questions, stds from tqa_gen_end_q), baked, with meta saying it was fitted on all questions."""
    import numpy as np

    from iti import Intervention, load_features
    from iti.cli import main
    from iti.fitting import fit_intervention

    model_dir, features = tmp_path / "tinyllama", tmp_path / "features"
    model = make_tiny_model("llama")
    model.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "baked"
    features.mkdir()
    argv = ["bake", "--model_name", str(model_dir), "--features_dir", str(features), "--output_dir", str(out)]
    assert main(argv) == 2  # no features yet: refused before the model loads, with the command that collects them
    err = capsys.readouterr().err
    assert "get_activations.py --model_name tinyllama --dataset_name tqa_mc2" in err and not out.exists()
    write_tiny_tqa_features(model, features, "tinyllama")
    assert main([*argv, "--use_center_of_mass", "--num_heads", "3", "--alpha", "5", "--seed", "3"]) == 0
    assert "fitted on all questions (10 questions" in capsys.readouterr().out
    saved = Intervention.load(out / "iti_intervention")
    assert saved.meta["fitted_on"] == "all questions" and saved.meta["questions"] == 10
    mc2, gen = load_features(features / "tinyllama_tqa_mc2"), load_features(features / "tinyllama_tqa_gen_end_q")
    expected = fit_intervention(mc2, num_heads=3, method="mass_mean", alpha=5.0, std_from=gen, seed=3, model_name="tinyllama")
    assert saved.heads == expected.heads and saved.alpha == 5.0
    np.testing.assert_array_equal(saved.directions, expected.directions)
    np.testing.assert_array_equal(saved.stds, expected.stds)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    want = bake(make_tiny_model("llama"), expected)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_ids()).logits, want(_ids()).logits, rtol=0, atol=1e-6)
    # probe directions and the random control go through the same recipe
    for flags, method, heads in ((["--seed", "3"], "probe", "probe_accuracy"), (["--use_random_dir"], "random", "random")):
        assert main([*argv[:-1], str(tmp_path / method), "--num_heads", "2", *flags]) == 0
        got = Intervention.load(tmp_path / method / "iti_intervention")
        seed = 3 if method == "probe" else 42
        ref = fit_intervention(mc2, num_heads=2, method=method, selector=heads, alpha=15.0, std_from=gen, seed=seed, model_name="tinyllama")
        assert got.heads == ref.heads and got.meta["method"] == method
        np.testing.assert_allclose(got.directions, ref.directions, rtol=0, atol=1e-6)
    # a saved intervention says so; fitting flags next to it are refused
    assert main(["bake", "--model_name", str(model_dir), "--intervention", str(out / "iti_intervention"),
                 "--output_dir", str(tmp_path / "again")]) == 0
    assert Intervention.load(tmp_path / "again" / "iti_intervention").meta["fitted_on"] == "all questions"
    fold = expected.with_alpha(1.0)
    fold.meta = {"train_questions": 408}
    fold.save(tmp_path / "fold0")
    assert main(["bake", "--model_name", str(model_dir), "--intervention", str(tmp_path / "fold0"), "--output_dir", str(tmp_path / "f")]) == 0
    assert "408 training questions of a fold" in Intervention.load(tmp_path / "f" / "iti_intervention").meta["fitted_on"]
    capsys.readouterr()
    assert main(["bake", "--intervention", str(tmp_path / "fold0"), "--output_dir", str(tmp_path / "x"), "--num_heads", "4"]) == 2
    assert "--num_heads: only without --intervention" in capsys.readouterr().err and not (tmp_path / "x").exists()


def _saved_model(path, seed=0):
    """A tiny llama saved as a local checkpoint (weights and tokenizer), the way `iti bake --model_name DIR` reads it."""
    model = make_tiny_model("llama", seed=seed)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return model


def _tree(directory):
    """Every file under ``directory`` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_bake_refuses_a_non_empty_output_dir_and_leaves_it_as_it_was(tmp_path, capsys):
    """A user's config.json in --output_dir is not replaced file by file: the bake is refused before the model loads,
    naming --force, and the directory keeps its content."""
    from iti.cli import main

    model_dir = tmp_path / "tiny"  # the name make_intervention records
    make_intervention(_saved_model(model_dir)).save(tmp_path / "iv")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}\n')
    argv = ["bake", "--model_name", str(model_dir), "--intervention", str(tmp_path / "iv"), "--output_dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "config.json" in err and "--force" in err
    assert _tree(out) == {"config.json": b'{"mine": true}\n'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iv", "mine", "tiny"]  # nothing half-written beside it


def test_force_replaces_a_sharded_checkpoint_as_a_whole(tmp_path):
    """With --force, a directory holding a sharded checkpoint is replaced as a whole: no stale
    model.safetensors.index.json or shard is left beside the new single-file checkpoint (vLLM's loader rejects that)."""
    from iti.cli import main

    model_dir = tmp_path / "tiny"  # the name make_intervention records
    inter = make_intervention(_saved_model(model_dir))
    inter.save(tmp_path / "iv")
    out = tmp_path / "baked"
    make_tiny_model("llama", seed=5).save_pretrained(out, max_shard_size="30KB")
    assert (out / "model.safetensors.index.json").exists()
    argv = ["bake", "--model_name", str(model_dir), "--intervention", str(tmp_path / "iv"), "--output_dir", str(out)]
    assert main([*argv, "--force"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "iti_intervention" in names
    assert not [n for n in names if "index" in n or "-of-" in n], names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baked", "iv", "tiny"]
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    want = bake(make_tiny_model("llama"), inter)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_ids()).logits, want(_ids()).logits, rtol=0, atol=1e-6)


def test_an_interrupted_save_leaves_the_target_untouched(tmp_path, monkeypatch):
    """A save that fails half-way (the safetensors writer raises, as a full disk or a Ctrl-C would) leaves no half
    checkpoint: a new target does not appear, an existing bake replaced with force keeps every byte (no fold-1
    weights beside fold-0's iti_intervention/), and no temporary directory is left beside it."""
    import transformers.modeling_utils

    from iti import Intervention

    fold0, fold1 = make_intervention(make_tiny_model("llama")), make_intervention(make_tiny_model("llama"), seed=1)
    done = save_baked(bake(make_tiny_model("llama"), fold0), tiny_tokenizer(), tmp_path / "fold0", fold0)
    before = _tree(done)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_baked(bake(make_tiny_model("llama"), fold1), tiny_tokenizer(), tmp_path / "new", fold1)
    assert not (tmp_path / "new").exists()
    with pytest.raises(OSError, match="No space left"):
        save_baked(bake(make_tiny_model("llama"), fold1), tiny_tokenizer(), done, fold1, force=True)
    assert _tree(done) == before
    assert Intervention.load(done / "iti_intervention").fingerprint() == fold0.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0"]
