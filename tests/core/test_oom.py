"""Out-of-memory fallback: batches that do not fit are split and the run goes on with the same results."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from iti import collect_head_activations, load_features, write_features
from iti.errors import OutOfMemoryError
from iti.faithfulness.generate import GenerationSettings, LocalGenerator
from iti.features import PromptSet
from iti.oom import AdaptiveBatchSize, is_out_of_memory
from iti.truthfulqa.mc_scoring import score_choices

from ..conftest import REPO, TEXTS, make_tiny_model, tiny_tokenizer
from ..truthfulqa.test_mc_scoring import PREFIX, _questions


class RowLimit:
    """A forward pre-hook on the first decoder layer that fails like a full GPU above ``rows`` rows per batch."""

    def __init__(self, model, rows: int):
        self.rows, self.seen = rows, []
        self.handle = model.model.layers[0].register_forward_pre_hook(self)

    def __call__(self, module, args):
        n = args[0].shape[0]
        self.seen.append(n)
        if n > self.rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB for {n} rows")


def test_adaptive_batch_size_halves_keeps_order_and_says_what_to_set(capsys):
    calls = []

    def fn(chunk):
        calls.append(len(chunk))
        if len(chunk) > 3:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")
        return list(chunk)

    sizes = AdaptiveBatchSize(8, what="prompt")
    parts = sizes.run(list(range(19)), fn)
    assert [x for p in parts for x in p] == list(range(19)) and sizes.limit == 2
    assert calls[:3] == [8, 4, 2] and max(calls[3:]) <= 2  # later chunks start at the size that worked
    err = capsys.readouterr().err
    assert "out of memory with 8 prompts per batch; going on with 4. Pass --batch_size 4" in err
    assert err.count("going on with") == 2


def test_a_single_row_that_does_not_fit_gives_a_clear_error_and_other_errors_pass_through():
    def never(chunk):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemoryError, match="single answer per batch.*smaller dtype"):
        AdaptiveBatchSize(4, what="answer").run([1, 2, 3], never)

    def broken(chunk):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        AdaptiveBatchSize(4).run([1, 2, 3], broken)
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(OutOfMemoryError("final")) and is_out_of_memory(RuntimeError("MPS backend out of memory"))
    with pytest.raises(ValueError, match="at least 1"):
        AdaptiveBatchSize(0)


def test_collection_goes_on_with_smaller_batches_and_writes_the_same_features(tmp_path, capsys):
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    prompts = TEXTS * 5
    ps = PromptSet("oom", prompts, np.arange(len(prompts)) % 2, np.arange(len(prompts)), "{text}")
    ref = load_features(write_features(model, tok, ps, tmp_path / "ref", model_name="tiny", batch_size=8, progress=False), layer_wise=True)
    limit = RowLimit(model, 3)
    got = load_features(write_features(model, tok, ps, tmp_path / "oom", model_name="tiny", batch_size=8, progress=False), layer_wise=True)
    limit.handle.remove()
    assert max(limit.seen) == 8 and limit.seen[-1] <= 2
    np.testing.assert_allclose(np.asarray(got.head_wise, np.float32), np.asarray(ref.head_wise, np.float32), atol=1e-3)
    np.testing.assert_allclose(np.asarray(got.layer_wise, np.float32), np.asarray(ref.layer_wise, np.float32), atol=1e-3)
    assert "going on with 2. Pass --batch_size 2" in capsys.readouterr().err
    acts = collect_head_activations(model, tok, prompts, positions="all", batch_size=8, progress=False)
    RowLimit(model, 1)
    small = collect_head_activations(model, tok, prompts, positions="all", batch_size=8, progress=False)
    for a, b in zip(acts.heads, small.heads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_generation_and_mc_scoring_go_on_with_smaller_batches():
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    greedy = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=6)
    prompts = TEXTS * 2
    plain = [g.response for g in LocalGenerator(model, tok, model_id="tiny", batch_size=8).generate(prompts, greedy, progress=False)]
    qs = _questions()
    scores = score_choices(model, tok, qs, prefix=PREFIX, batch_size=4, progress=False)
    limit = RowLimit(model, 1)
    gen = LocalGenerator(model, tok, model_id="tiny", batch_size=8)
    assert [g.response for g in gen.generate(prompts, greedy, progress=False)] == plain and gen.sizes.limit == 1
    for a, b in zip(score_choices(model, tok, qs, prefix=PREFIX, batch_size=4, progress=False), scores):
        np.testing.assert_allclose(a, b, atol=1e-5)
    limit.rows = 0  # not even one row fits: a clear error, not a loop
    with pytest.raises(OutOfMemoryError, match="single prompt"):
        LocalGenerator(model, tok, model_id="tiny").generate(prompts[:2], greedy, progress=False)


_REAL = textwrap.dedent("""
    import resource, sys
    import torch
    sys.path.insert(0, "tests")
    torch.set_num_threads(1)
    import transformers as tf
    from conftest import tiny_tokenizer
    from iti import collect_head_activations
    tok = tiny_tokenizer()
    cfg = tf.LlamaConfig(vocab_size=len(tok), num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                         intermediate_size=8192, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    prompts = [("the quick brown fox jumps over the lazy dog " * 40)[: 700 + i] for i in range(32)]
    ref = collect_head_activations(model, tok, prompts, batch_size=1, progress=False).heads
    vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 200 * 2**20, vm + 200 * 2**20))  # 32 rows need about 2 GB
    got = collect_head_activations(model, tok, prompts, batch_size=32, progress=False).heads
    print("max_diff", (got - ref).abs().max().item())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit and /proc are Linux features")
def test_a_real_allocation_failure_under_a_memory_limit_lowers_the_batch_size():
    """No injection: the CPU allocator itself fails under RLIMIT_AS and collection still finishes."""
    proc = subprocess.run([sys.executable, "-c", _REAL], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "out of memory with 32 prompts per batch; going on with 16" in proc.stderr
    assert float(proc.stdout.split("max_diff")[1]) < 1e-5
