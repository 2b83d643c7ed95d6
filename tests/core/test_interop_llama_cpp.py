"""Files for llama.cpp, checked in a real llama.cpp (the ``xllamacpp`` wheel's build, run in a subprocess by
tests/engines/llama_cpp_runner.py): a GGUF of a model with head and residual steering baked in gives the logits of the
runtime steering, and a control-vector file, read by llama.cpp's own loader, steers as iti's ``resid_post`` steering
at every position does. The control vector's reader and its refusals are checked without llama.cpp."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from iti import Steering, model_layout
from iti.bake import bake
from iti.errors import InexpressibleExportError, SteeringFileError
from iti.interop.control_vector import export_control_vector, load_control_vector

from ..conftest import REPO, make_intervention, make_tiny_model, tiny_tokenizer
from ..conftest import token_ids as _ids

gguf = pytest.importorskip("gguf")
TEXT = "Q: What happens if you eat watermelon seeds?"


def _llama_cpp_logits(model_gguf, ids, cvec=None) -> np.ndarray:
    pytest.importorskip("xllamacpp")
    cmd = [sys.executable, "-m", "tests.engines.llama_cpp_runner", "--model", str(model_gguf),
           "--tokens", ",".join(str(t) for t in ids[0].tolist())] + (["--cvec", str(cvec)] if cvec else [])
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return np.array(json.loads(run.stdout)["logits"])


def _last_logits(model, ids, steering=None) -> np.ndarray:
    with torch.no_grad():
        if steering is None:
            return model(ids).logits[0, -1].numpy()
        with steering.applied(model, positions="all"):
            return model(ids).logits[0, -1].numpy()


def _residual(model, layers=(1, 2), seed=0) -> Steering:
    g = model_layout(model).geometry
    rng = np.random.default_rng(seed)
    return Steering({("resid_post", l): rng.normal(size=g.hidden_size) * 2.0 for l in layers}, g, "tiny")


def test_a_control_vector_steers_llama_cpp_as_iti_steers_the_residual_stream(tmp_path):
    from iti.interop.gguf_format import export_gguf

    model, ids = make_tiny_model("llama"), _ids(TEXT)
    path = export_gguf(model, tiny_tokenizer(), tmp_path / "tiny.gguf")
    steer = _residual(model)
    cvec = export_control_vector(steer, tmp_path / "steer.gguf")
    plain, steered = _last_logits(model, ids), _last_logits(model, ids, steer)
    assert np.abs(steered - plain).max() > 0.1  # the steering moves the logits
    np.testing.assert_allclose(_llama_cpp_logits(path, ids), plain, rtol=0, atol=5e-4)
    np.testing.assert_allclose(_llama_cpp_logits(path, ids, cvec), steered, rtol=0, atol=5e-4)


def test_a_baked_gguf_with_head_and_residual_steering_runs_in_llama_cpp_as_the_runtime_steering(tmp_path):
    from iti.interop.gguf_format import export_gguf

    model, ids = make_tiny_model("llama"), _ids(TEXT)
    steer = make_intervention(model, alpha=5.0).to_steering("all") + _residual(model, layers=(0, 2)).with_positions("all")
    runtime = _last_logits(model, ids, steer)
    bake(model, steer)
    path = export_gguf(model, tiny_tokenizer(), tmp_path / "baked.gguf")
    names = {t.name for t in gguf.GGUFReader(str(path)).tensors}
    assert {"blk.0.attn_output.bias", "blk.0.ffn_down.bias", "blk.2.ffn_down.bias"} <= names
    np.testing.assert_allclose(_llama_cpp_logits(path, ids), runtime, rtol=0, atol=5e-4)


def test_the_control_vector_file_is_repengs_layout_and_reads_back(tmp_path):
    model = make_tiny_model("llama")
    steer = _residual(model)
    path = export_control_vector(steer, tmp_path / "steer.gguf", model_hint="llama")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == 2
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2"]
    back = load_control_vector(path, model)
    assert back.positions == "all" and list(back.vectors) == list(steer.vectors)
    for key, vec in steer.vectors.items():
        np.testing.assert_array_equal(back.vectors[key], vec)
    half = load_control_vector(path, model, strength=0.5)
    np.testing.assert_allclose(half.vectors[("resid_post", 1)], 0.5 * steer.vectors[("resid_post", 1)], rtol=1e-6)


def test_what_a_control_vector_cannot_express_is_refused_before_writing(tmp_path):
    model = make_tiny_model("llama")
    g = model_layout(model).geometry
    with pytest.raises(InexpressibleExportError, match="head_out of layer 0"):
        export_control_vector(make_intervention(model), tmp_path / "a.gguf")
    with pytest.raises(InexpressibleExportError, match="direction.0"):
        export_control_vector(Steering({("resid_post", 0): np.ones(g.hidden_size)}, g), tmp_path / "b.gguf")
    with pytest.raises(InexpressibleExportError, match=".gguf"):
        export_control_vector(_residual(model), tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())


def _write(path, tensors, arch="controlvector"):
    w = gguf.GGUFWriter(str(path), arch)
    for name, a in tensors.items():
        w.add_tensor(name, np.asarray(a, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_control_vectors_llama_cpp_would_misread_are_refused(tmp_path):
    model = make_tiny_model("llama")  # 3 layers, hidden 32
    cases = {"direction.0": ({"direction.0": np.ones(32)}, "layers 1..2"),
             "past the end": ({"direction.3": np.ones(32)}, "direction.3 steers no block"),
             "width": ({"direction.1": np.ones(31)}, "31 values"),
             "name": ({"dir.1": np.ones(32)}, "not a direction"),
             "nan": ({"direction.1": np.full(32, np.nan)}, "NaN")}
    for i, (tensors, match) in enumerate(cases.values()):
        with pytest.raises(SteeringFileError, match=match):
            load_control_vector(_write(tmp_path / f"{i}.gguf", tensors), model)
    with pytest.raises(SteeringFileError, match="architecture 'llama'"):
        load_control_vector(_write(tmp_path / "llama.gguf", {"direction.1": np.ones(32)}, arch="llama"), model)
