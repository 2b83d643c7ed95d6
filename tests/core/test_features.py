import json
import subprocess
import sys

import numpy as np
import pytest

from iti import build_prompt_set, collect_head_activations, load_features, merge_shards, write_features
from iti.errors import EmptyInputError, FeatureFileError, OutputExistsError
from iti.features import PromptSet, output_name, parse_shard

from ..conftest import REPO, make_tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def small_set(tqa):
    return build_prompt_set("tqa_gen_end_q", truthfulqa=tqa, max_questions=5)


@pytest.fixture
def llama():
    return make_tiny_model("llama"), tiny_tokenizer()


def _write(model, tok, ps, out, **kw):
    kw.setdefault("batch_size", 4)
    return write_features(model, tok, ps, out, model_name="tiny", progress=False, **kw)


def test_written_features_match_in_memory_collection(llama, small_set, tmp_path):
    model, tok = llama
    path = _write(model, tok, small_set, tmp_path, dtype="float32")
    fs = load_features(path, layer_wise=True)
    ref = collect_head_activations(model, tok, small_set.prompts, batch_size=4, residual=True, progress=False)
    np.testing.assert_array_equal(fs.head_wise, ref.heads.numpy())
    np.testing.assert_array_equal(fs.layer_wise, ref.residual.numpy())
    np.testing.assert_array_equal(fs.labels, small_set.labels)
    np.testing.assert_array_equal(fs.question_ids, small_set.question_ids)
    m = fs.manifest
    assert m["dataset"]["name"] == "tqa_gen_end_q" and m["dataset"]["prompt_format"].startswith("Q: {question}")
    assert m["files"]["head_wise"]["shape"] == [len(small_set), 3, 4, 8] and m["dtype"] == "float32"
    assert m["versions"]["iti"] and m["model"]["geometry"]["num_kv_heads"] == 2
    assert len(m["categories"]) == len(small_set)


def test_default_dtype_is_float16_and_rerun_is_a_no_op(llama, small_set, tmp_path):
    model, tok = llama
    path = _write(model, tok, small_set, tmp_path)
    fs = load_features(path)
    assert fs.head_wise.dtype == np.float16
    stamp = (path / "head_wise.safetensors").stat().st_mtime_ns
    assert _write(model, tok, small_set, tmp_path) == path
    assert (path / "head_wise.safetensors").stat().st_mtime_ns == stamp


def test_mismatched_output_is_refused_without_force(llama, small_set, tmp_path):
    model, tok = llama
    path = _write(model, tok, small_set, tmp_path)
    with pytest.raises(OutputExistsError, match="force"):
        _write(model, tok, small_set, tmp_path, batch_size=2)
    assert load_features(path).manifest["batch_size"] == 4  # nothing lost
    _write(model, tok, small_set, tmp_path, batch_size=2, force=True)
    assert load_features(path).manifest["batch_size"] == 2


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_byte_identical(llama, small_set, tmp_path):
    model, tok = llama
    straight = _write(model, tok, small_set, tmp_path / "a")

    def stop_after_two(done, total):
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _write(model, tok, small_set, tmp_path / "b", on_batch=stop_after_two)
    partial = tmp_path / "b" / (output_name("tiny", small_set.name) + ".partial")
    assert json.loads((partial / "progress.json").read_text())["done_batches"] == [0, 1]
    with pytest.raises(FeatureFileError, match="unfinished collection"):
        load_features(tmp_path / "b" / output_name("tiny", small_set.name))
    seen = []
    resumed = _write(model, tok, small_set, tmp_path / "b", on_batch=lambda d, t: seen.append(d))
    assert seen[0] == 3  # batches 0 and 1 were not recomputed
    for name in ("head_wise.safetensors", "layer_wise.safetensors", "labels.safetensors"):
        assert (straight / name).read_bytes() == (resumed / name).read_bytes()
    assert not partial.exists()


def test_partial_of_another_job_is_refused(llama, small_set, tmp_path):
    model, tok = llama
    with pytest.raises(Interrupt):
        _write(model, tok, small_set, tmp_path, on_batch=lambda d, t: (_ for _ in ()).throw(Interrupt()))
    with pytest.raises(OutputExistsError, match="unfinished collection"):
        _write(model, tok, small_set, tmp_path, batch_size=3)


def test_corrupt_and_truncated_files_name_the_file(llama, small_set, tmp_path):
    model, tok = llama
    path = _write(model, tok, small_set, tmp_path)
    head = path / "head_wise.safetensors"
    data = head.read_bytes()
    head.write_bytes(data[:-100])
    with pytest.raises(FeatureFileError, match="head_wise.safetensors is truncated"):
        load_features(path)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    head.write_bytes(bytes(flipped))
    with pytest.raises(FeatureFileError, match="head_wise.safetensors is corrupt"):
        load_features(path)
    head.write_bytes(data)
    load_features(path)
    (path / "manifest.json").write_text('{"format": "iti-feat')
    with pytest.raises(FeatureFileError, match="manifest.json is not valid JSON"):
        load_features(path)


def test_empty_prompt_set_and_bad_shard_text(llama, tmp_path):
    model, tok = llama
    empty = PromptSet("tqa_mc2", [], [], [], "Q: {question} A: {answer}")
    with pytest.raises(EmptyInputError):
        _write(model, tok, empty, tmp_path)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def _collect_cli(model_dir, out, *extra):
    cmd = [sys.executable, str(REPO / "get_activations" / "get_activations.py"), "--model_name", str(model_dir),
           "--dataset_name", "tqa_mc2", "--max_questions", "6", "--batch_size", "4", "--output_dir", str(out), "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_two_process_shards_merge_to_the_single_process_result(tmp_path):
    model, tok = make_tiny_model("gpt2"), tiny_tokenizer()
    model_dir = tmp_path / "tiny-gpt2"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    shards = [_collect_cli(model_dir, tmp_path / "sharded", "--shard", f"{i}/2") for i in range(2)]
    single = _collect_cli(model_dir, tmp_path / "single")
    for p in shards + [single]:
        _finish(p)
    with pytest.raises(OutputExistsError):  # merging must not clobber an unrelated existing output
        (tmp_path / "sharded" / "tiny-gpt2_tqa_mc2").mkdir()
        (tmp_path / "sharded" / "tiny-gpt2_tqa_mc2" / "manifest.json").write_text("{}")
        merge_shards(tmp_path / "sharded" / "tiny-gpt2_tqa_mc2")
    import shutil

    shutil.rmtree(tmp_path / "sharded" / "tiny-gpt2_tqa_mc2")
    _finish(_collect_cli(model_dir, tmp_path / "sharded", "--merge"))
    merged = load_features(tmp_path / "sharded" / "tiny-gpt2_tqa_mc2", layer_wise=True)
    ref = load_features(tmp_path / "single" / "tiny-gpt2_tqa_mc2", layer_wise=True)
    np.testing.assert_array_equal(merged.head_wise, ref.head_wise)
    np.testing.assert_array_equal(merged.layer_wise, ref.layer_wise)
    np.testing.assert_array_equal(merged.labels, ref.labels)
    assert merged.manifest["question_ids"] == ref.manifest["question_ids"]
    assert merged.manifest["job_id"] == ref.manifest["job_id"]


def test_merge_refuses_missing_or_disagreeing_shards(llama, small_set, tmp_path):
    model, tok = llama
    _write(model, tok, small_set, tmp_path, shard=(0, 3))
    final = tmp_path / output_name("tiny", small_set.name)
    with pytest.raises(FeatureFileError, match=r"shards \[1, 2\] of 3"):
        merge_shards(final)
    _write(model, tok, small_set, tmp_path, shard=(1, 3))
    _write(model, tok, small_set, tmp_path, shard=(2, 3), dtype="float32", force=True)
    with pytest.raises(FeatureFileError, match="disagree"):
        merge_shards(final)
    with pytest.raises(FeatureFileError, match="no shards"):
        merge_shards(tmp_path / "nothing_here")


def test_validate_without_features_says_how_to_collect(tmp_path, capsys):
    from iti.cli import main

    code = main(["validate", "--features_dir", str(tmp_path), "--model_name", "smollm2-135m"])
    err = capsys.readouterr().err
    assert code == 2 and "no tqa_mc2 features for smollm2-135m" in err and "get_activations.py" in err


def test_row_writer_puts_rows_at_their_offsets_in_any_order(tmp_path):
    from safetensors.numpy import load_file

    from iti.io import SafetensorsRowWriter, allocate_safetensors

    path = tmp_path / "t.safetensors"
    allocate_safetensors(path, {"a": ("float16", (7, 3, 2)), "b": ("float32", (7, 4))})
    a = np.random.default_rng(0).normal(size=(7, 3, 2)).astype(np.float16)
    with SafetensorsRowWriter(path, "a") as w:
        w.write(np.array([5, 0, 1, 2]), a[[5, 0, 1, 2]])  # one run of three and a lone row
        w.write(np.array([6, 4, 3]), a[[6, 4, 3]])
        w.flush()
        with pytest.raises(ValueError, match="do not fit"):
            w.write(np.array([0]), a[:2])
        with pytest.raises(IndexError, match="0..6"):
            w.write(np.array([7]), a[:1])
    got = load_file(str(path))
    assert np.array_equal(got["a"], a) and not got["b"].any()  # the other tensor is untouched
    with pytest.raises(FeatureFileError, match="no tensor named 'c'"):
        SafetensorsRowWriter(path, "c")


_KILLED = """
import os, signal, sys
sys.path.insert(0, "tests")
import numpy as np
from conftest import TEXTS, make_tiny_model, tiny_tokenizer
from iti import write_features
from iti.features import PromptSet

def die(done, total):
    if done == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # no finally blocks, no flush: as if the machine's OOM killer struck

ps = PromptSet("killed", TEXTS * 6, np.arange(24) % 2, np.arange(24), "{t}")
write_features(make_tiny_model("llama"), tiny_tokenizer(), ps, sys.argv[1], model_name="tiny", batch_size=4,
               progress=False, on_batch=die if len(sys.argv) > 2 else None)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_collection_killed_with_sigkill_resumes_byte_identical(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-c", _KILLED, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    assert run(tmp_path / "straight").returncode == 0
    killed = run(tmp_path / "killed", 3)
    assert killed.returncode == -9  # really killed, half-way (3 of 6 batches on disk)
    partial = tmp_path / "killed" / "tiny_killed.partial"
    assert json.loads((partial / "progress.json").read_text())["done_batches"] == [0, 1, 2]
    resumed = run(tmp_path / "killed")
    assert resumed.returncode == 0 and "resuming" in resumed.stdout and "3/6 batches already on disk" in resumed.stdout
    for name in ("head_wise.safetensors", "layer_wise.safetensors", "labels.safetensors"):
        assert (tmp_path / "straight" / "tiny_killed" / name).read_bytes() == (tmp_path / "killed" / "tiny_killed" / name).read_bytes()


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    import os

    from iti.io import atomic_write_json

    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "plain.json"]  # no temporary left behind
    assert os.access(tmp_path / "a.json", os.R_OK)


@pytest.mark.parametrize("edit", [
    ("model", "geometry", "num_heads", 2), ("model", "geometry", "head_dim", 16), ("model", "geometry", "num_layers", 2),
    ("model", "geometry", "hidden_size", 64), ("dataset", "num_rows", 7),
])
def test_a_manifest_that_disagrees_with_the_arrays_is_refused(llama, small_set, tmp_path, edit):
    model, tok = llama
    path = _write(model, tok, small_set, tmp_path)
    load_features(path, layer_wise=True)
    manifest = json.loads((path / "manifest.json").read_text())
    *keys, last, value = edit
    node = manifest
    for k in keys:
        node = node[k]
    node[last] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureFileError) as err:
        load_features(path, layer_wise=True)
    msg = str(err.value)
    assert "manifest.json" in msg and f"{last}" in msg and str(value) in msg and ".safetensors" in msg, msg


def test_every_file_written_gets_the_mode_of_a_plain_open(llama, small_set, tmp_path):
    import os

    from iti.bake import bake, save_baked

    from ..conftest import make_intervention

    model, tok = llama
    old = os.umask(0o022)
    try:
        features = _write(model, tok, small_set, tmp_path / "features")
        inter = make_intervention(model)
        saved = inter.save(tmp_path / "intervention")
        baked = save_baked(bake(make_tiny_model("llama"), inter), tok, tmp_path / "baked", inter)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
             for d in (features, saved, baked) for p in d.rglob("*") if p.is_file()}
    assert "features/tiny_tqa_gen_end_q/labels.safetensors" in modes and "intervention/intervention.safetensors" in modes
    assert "baked/model.safetensors" in modes
    assert {k: v for k, v in modes.items() if v != "0o644"} == {}


def test_features_of_another_checkpoint_with_the_same_name_are_not_returned(small_set, tmp_path):
    """runs/a/final and runs/b/final into one output directory: the weights differ, so the second is refused
    with what differs in words (it used to print 'already complete ... nothing to do')."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    for run, seed in (("a", 0), ("b", 1)):
        make_tiny_model("llama", seed=seed).save_pretrained(tmp_path / "runs" / run / "final")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "a" / "final")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "b" / "final")
    out = tmp_path / "features"
    write_features(a, tok, small_set, out, model_name="final", progress=False, batch_size=4)
    with pytest.raises(OutputExistsError, match=r"model\.weights: content differs"):
        write_features(b, tok, small_set, out, model_name="final", progress=False, batch_size=4)
    with pytest.raises(OutputExistsError, match=r"dataset\.num_rows|prompts_sha256: content differs"):
        write_features(a, tok, build_prompt_set("tqa_gen_end_q", max_questions=4), out, model_name="final", progress=False, batch_size=4)


def test_a_second_collection_into_the_same_output_is_refused_at_once(llama, small_set, tmp_path):
    from iti.errors import OutputLockedError
    from iti.locks import output_lock

    model, tok = llama
    name = output_name("tiny", small_set.name)
    with output_lock(tmp_path, "features", name=f".{name}.lock"):
        with pytest.raises(OutputLockedError, match="being written by another process"):
            _write(model, tok, small_set, tmp_path)
    assert not (tmp_path / f"{name}.partial").exists()


def test_force_recovers_a_damaged_unfinished_collection(llama, small_set, tmp_path):
    model, tok = llama

    class Stop(Exception):
        pass

    def stop_after_one(done, total):
        raise Stop

    with pytest.raises(Stop):
        _write(model, tok, small_set, tmp_path, on_batch=stop_after_one)
    partial = tmp_path / (output_name("tiny", small_set.name) + ".partial")
    (partial / "head_wise.safetensors").unlink()  # what two writers at once used to leave behind
    with pytest.raises(FeatureFileError, match="damaged: pass force=True"):
        _write(model, tok, small_set, tmp_path)
    path = _write(model, tok, small_set, tmp_path, force=True)
    reference = _write(model, tok, small_set, tmp_path / "clean")
    assert (path / "head_wise.safetensors").read_bytes() == (reference / "head_wise.safetensors").read_bytes()
