"""Content fingerprints: the same content gives the same digest, any change gives another, and the per-file
hash is remembered by size and mtime."""
import os

import pytest

from iti.fingerprint import (
    checkpoint_fingerprint,
    describe_difference,
    file_sha256,
    model_fingerprint,
    settings_fingerprint,
    state_fingerprint,
)

from ..conftest import make_tiny_model


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ITI_CACHE", str(tmp_path / "cache"))


def test_checkpoint_fingerprint_follows_content_not_names(tmp_path):
    a, b = tmp_path / "runs" / "a" / "final", tmp_path / "runs" / "b" / "final"
    for d, byte in ((a, b"\x01"), (b, b"\x02")):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"weights" + byte)
    assert checkpoint_fingerprint(a) != checkpoint_fingerprint(b)  # same basename, other weights
    before = checkpoint_fingerprint(a)
    (a / "model.safetensors").write_bytes(b"weights\x03")  # overwritten in place
    os.utime(a / "model.safetensors", ns=(1, 1))
    assert checkpoint_fingerprint(a) != before
    (a / "model.safetensors").write_bytes(b"weights\x01")
    assert checkpoint_fingerprint(a) == before
    with pytest.raises(FileNotFoundError):
        checkpoint_fingerprint(tmp_path)


def test_file_hash_is_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 100)
    first = file_sha256(f)
    import iti.fingerprint as fp

    monkeypatch.setattr(fp, "sha256_file", lambda p: pytest.fail("hashed again although size and mtime are unchanged"))
    assert file_sha256(f) == first


def test_model_fingerprint_reads_the_checkpoint_or_the_tensors(tmp_path):
    model = make_tiny_model("llama")
    state = model_fingerprint(model)
    assert state.startswith("state:") and state == "state:" + state_fingerprint(model)
    model.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model_fingerprint(loaded).startswith("ckpt:")
    other = make_tiny_model("llama", seed=1)
    assert state_fingerprint(other) != state_fingerprint(model)


def test_settings_fingerprint_and_difference_in_words():
    a = {"max_questions": 4, "preset": "qa", "alpha": 15.0}
    b = {"preset": "lm-eval", "alpha": 15.0, "max_questions": 8}
    assert settings_fingerprint(a) == settings_fingerprint(dict(reversed(list(a.items()))))
    assert settings_fingerprint(a) != settings_fingerprint(b)
    assert describe_difference(a, b) == "max_questions 4 -> 8; preset 'qa' -> 'lm-eval'"
    assert describe_difference(a, a) == "nothing"
