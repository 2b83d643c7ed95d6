"""The vLLM plugin's steering library (``plugins/vllm/iti_vllm/library.py``, which runs in vLLM's environment without
iti): values saved by iti load as the shifts iti applies, and bad files and bad requests are refused with one line.
The served equivalence against the real engine is benchmarks/bench_vllm_plugin.py (``make serve-check``)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from iti.intervention import Intervention
from iti.steering import Steering

from ..conftest import make_intervention, make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins" / "vllm"))
from iti_vllm.library import (  # noqa: E402
    SteeringChoice,
    SteeringLibraryError,
    SteeringRequestError,
    check_geometry,
    load_library,
    parse_request,
)


@pytest.fixture()
def library_dir(tmp_path):
    model = make_tiny_model("llama")
    inter: Intervention = make_intervention(model, alpha=7.0)
    inter.save(tmp_path / "lib" / "truthful")
    steering = inter.with_alpha(1.0).to_steering("all") * 2.0
    steering.save(tmp_path / "lib" / "doubled")
    return tmp_path / "lib", inter


def test_saved_values_load_as_the_shifts_iti_applies(library_dir):
    root, inter = library_dir
    lib = load_library(root)
    assert sorted(lib) == ["doubled", "truthful"]
    truthful, doubled = lib["truthful"], lib["doubled"]
    assert (truthful.kind, truthful.default_strength, truthful.default_positions) == ("intervention", 7.0, "last")
    want = inter.layer_shifts()  # alpha * std * direction in each head's slice
    assert set(truthful.unit) == set(want)
    for layer, vec in want.items():
        np.testing.assert_allclose(7.0 * truthful.unit[layer], vec, rtol=1e-6)
        np.testing.assert_allclose(doubled.unit[layer], 2.0 * vec / 7.0, rtol=1e-6)
    assert (doubled.kind, doubled.default_strength, doubled.default_positions) == ("steering", 1.0, "all")
    g = inter.geometry
    check_geometry(lib, g.num_layers, g.num_heads, g.head_dim)
    with pytest.raises(SteeringLibraryError, match="made for"):
        check_geometry(lib, g.num_layers, g.num_heads + 1, g.head_dim)


def test_requests_are_parsed_and_bad_ones_refused_in_one_line(library_dir):
    lib = load_library(library_dir[0])
    assert parse_request(None, lib) is None and parse_request({"kv_transfer_params": 1}, lib) is None
    assert parse_request({"iti": "truthful"}, lib) == SteeringChoice("truthful", 7.0, "last")
    assert parse_request({"iti": "doubled", "iti_strength": "0.5", "iti_positions": "last"}, lib) == \
        SteeringChoice("doubled", 0.5, "last")
    for args, message in [({"iti": "nope"}, "unknown steering 'nope' (known: doubled, truthful)"),
                          ({"iti": "truthful", "iti_strength": "inf"}, "must be finite"),
                          ({"iti": "truthful", "iti_strength": "strong"}, "must be a number"),
                          ({"iti": "truthful", "iti_positions": "first"}, "one of last, all"),
                          ({"iti_strength": 2}, "without iti")]:
        with pytest.raises(SteeringRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_request(args, lib)


def test_corrupt_partial_and_foreign_files_are_refused(library_dir, tmp_path):
    root, _ = library_dir
    tensors = root / "truthful" / "intervention.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-8])
    with pytest.raises(SteeringLibraryError, match="sha256 differs"):
        load_library(root)
    tensors.unlink()
    with pytest.raises(SteeringLibraryError, match="is missing"):
        load_library(root)
    (root / "truthful").rename(tmp_path / "gone")
    residual = Steering({("resid_post", 0): np.ones(library_dir[1].geometry.hidden_size, np.float32)}, library_dir[1].geometry, "m", "last")
    residual.save(root / "residual")
    with pytest.raises(SteeringLibraryError, match="only head_out"):
        load_library(root)
    (root / "residual" / "steering.json").unlink()
    (root / "residual" / "notes.txt").write_text("x")
    with pytest.raises(SteeringLibraryError, match="neither intervention.json nor steering.json"):
        load_library(root)
    with pytest.raises(SteeringLibraryError, match="not a directory"):
        load_library(tmp_path / "nowhere")
    assert load_library("") == {}
