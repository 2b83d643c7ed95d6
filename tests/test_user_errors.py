"""User-facing failures that used to end in a raw traceback: each is one ItiError naming the fix."""
import errno
import shutil

import pytest

from iti.errors import DataFileError, DiskFullError, ModelLoadError

from .conftest import SHARED_DATA


def _data_copy(tmp_path, relative, cut_bytes=None, keep_lines=None):
    target = tmp_path / "data" / relative
    target.parent.mkdir(parents=True)
    text = (SHARED_DATA / relative).read_bytes()
    if cut_bytes is not None:
        text = text[:cut_bytes]
    if keep_lines is not None:
        text = b"\n".join(text.split(b"\n")[:keep_lines]) + b"\n"
    target.write_bytes(text)
    return tmp_path / "data"


def test_a_truncated_imdb_file_is_a_clear_error(tmp_path):
    from iti.faithfulness.datasets import load_faithfulness_dataset
    from iti.truthfulqa.lm_cost import load_neutral_texts

    size = (SHARED_DATA / "faithfulness/imdb/imdb_test_sample_1000.csv").stat().st_size
    root = _data_copy(tmp_path, "faithfulness/imdb/imdb_test_sample_1000.csv", cut_bytes=size // 2)  # cut mid-row
    with pytest.raises(DataFileError, match="imdb_test_sample_1000.csv .*(not a valid imdb file|holds \\d+ imdb samples)"):
        load_faithfulness_dataset("imdb", root, allow_hub=False)
    with pytest.raises(DataFileError, match="imdb_test_sample_1000.csv (is not a valid IMDB sample|holds \\d+ reviews)"):
        load_neutral_texts(4, data_dir=root)


def test_a_cut_rte_file_is_refused_with_the_counts(tmp_path):
    from iti.faithfulness.datasets import load_faithfulness_dataset

    root = _data_copy(tmp_path, "faithfulness/rte/glue_rte_validation.tsv", keep_lines=101)
    with pytest.raises(DataFileError, match="holds 100 rte samples; the file has 277"):
        load_faithfulness_dataset("rte", root, allow_hub=False)


def test_a_damaged_model_cache_names_the_directory_to_delete(tmp_path, monkeypatch, smollm2):
    from iti.models import embedded_model_dir, load_model

    real = embedded_model_dir("smollm2-135m")
    cache = tmp_path / "cache" / "models" / "smollm2-135m"
    cache.mkdir(parents=True)
    for f in real.iterdir():
        if f.name == "model.safetensors":
            with open(f, "rb") as src:
                (cache / f.name).write_bytes(src.read(1 << 20))  # cut short, as by a full disk or a killed copy
        else:
            shutil.copy(f, cache / f.name)
    monkeypatch.setenv("ITI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match=f"delete the directory {cache} and rerun"):
        load_model("smollm2-135m")


def test_a_full_disk_says_where_and_how_much(tmp_path, monkeypatch, capsys):
    import os

    from iti.io import allocate_safetensors

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match=r"needs 4\.0 MB, .* MB are free"):
        allocate_safetensors(tmp_path / "x.safetensors", {"a": ("float32", (1000, 1000))})

    # any other write that hits a full disk: one line from the CLI, not a traceback
    from iti.cli import commands as cli  # where main looks build_parser up

    def run_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "f.json"))

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=run_full)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iti: error: no space left on the device holding") and "MB are free" in err[0]
