"""honest_llama's feature arrays: ours written as theirs and read back give the same features, manifest and rows."""
import numpy as np
import pytest

from iti import PromptSet, load_features, model_layout, write_features
from iti.errors import HonestLlamaFeatureError, OutputExistsError
from iti.interop.honest_llama_features import (
    export_honest_llama_features,
    honest_llama_paths,
    import_honest_llama_features,
    read_honest_llama_features,
)

from ..conftest import TEXTS, make_tiny_model, tiny_tokenizer


def _prompt_set():
    return PromptSet("tqa_mc2", TEXTS * 2, np.array([1, 0, 1, 0, 0, 1, 1, 0]), np.array([0, 0, 1, 1, 2, 2, 3, 3]), "qa",
                     meta={"num_questions": 4})


@pytest.fixture
def ours(tmp_path):
    model = make_tiny_model("llama")
    path = write_features(model, tiny_tokenizer(), _prompt_set(), tmp_path / "ours", model_name="tiny", progress=False)
    return path, model_layout(model).geometry


def test_features_round_trip_through_honest_llama_files(ours, tmp_path):
    path, g = ours
    files = export_honest_llama_features(path, tmp_path / "hl", layer_wise=True)
    assert files == {k: p for k, p in honest_llama_paths(tmp_path / "hl", "tiny", "tqa_mc2").items()}
    head = np.load(files["head_wise"])
    assert head.shape == (8, g.num_layers, g.num_heads * g.head_dim) and head.dtype == np.float16
    assert np.load(files["labels"]).tolist() == [1, 0, 1, 0, 0, 1, 1, 0]
    back = import_honest_llama_features(tmp_path / "hl", _prompt_set(), model_name="tiny", geometry=g, out_dir=tmp_path / "back")
    a, b = load_features(path, layer_wise=True), load_features(back, layer_wise=True)
    assert np.array_equal(a.head_wise, b.head_wise) and np.array_equal(a.layer_wise, b.layer_wise)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.question_ids, b.question_ids)
    assert b.manifest["imported_from"]["format"] == "honest_llama" and b.geometry == g
    assert b.manifest["dataset"]["prompts_sha256"] == a.manifest["dataset"]["prompts_sha256"]


def test_honest_llama_layer_wise_with_its_embedding_row_is_read_without_it(ours, tmp_path):
    path, g = ours
    files = export_honest_llama_features(path, tmp_path / "hl", layer_wise=True)
    lw = np.load(files["layer_wise"])
    np.save(files["layer_wise"], np.concatenate([np.zeros_like(lw[:, :1]), lw], axis=1))  # [N, L + 1, hidden] as theirs
    arrays = read_honest_llama_features(tmp_path / "hl", "tiny", "tqa_mc2", g)
    assert np.array_equal(arrays["layer_wise"], lw)
    assert arrays["head_wise"].shape == (8, g.num_layers, g.num_heads, g.head_dim)


def test_mismatched_lengths_and_labels_are_refused_and_nothing_is_written(ours, tmp_path):
    path, g = ours
    files = export_honest_llama_features(path, tmp_path / "hl")
    labels = np.load(files["labels"])
    np.save(files["labels"], labels[:-1])
    with pytest.raises(HonestLlamaFeatureError, match="7 labels but"):
        import_honest_llama_features(tmp_path / "hl", _prompt_set(), model_name="tiny", geometry=g, out_dir=tmp_path / "back")
    np.save(files["labels"], 1 - labels)
    with pytest.raises(HonestLlamaFeatureError, match="labels differ"):
        import_honest_llama_features(tmp_path / "hl", _prompt_set(), model_name="tiny", geometry=g, out_dir=tmp_path / "back")
    np.save(files["labels"], labels)
    short = PromptSet("tqa_mc2", TEXTS, np.array([1, 0, 1, 0]), np.array([0, 0, 1, 1]), "qa")
    with pytest.raises(HonestLlamaFeatureError, match="8 rows but the prompt set"):
        import_honest_llama_features(tmp_path / "hl", short, model_name="tiny", geometry=g, out_dir=tmp_path / "back")
    other = type(g)(g.num_layers, g.num_heads * 2, g.num_kv_heads, g.head_dim // 2, g.hidden_size)
    np.save(files["head_wise"], np.load(files["head_wise"])[:, :2])
    with pytest.raises(HonestLlamaFeatureError, match="geometry needs"):
        import_honest_llama_features(tmp_path / "hl", _prompt_set(), model_name="tiny", geometry=other, out_dir=tmp_path / "back")
    assert not (tmp_path / "back").exists() or not any((tmp_path / "back").iterdir())


def test_object_arrays_are_not_unpickled(ours, tmp_path):
    path, g = ours
    files = export_honest_llama_features(path, tmp_path / "hl")
    np.save(files["labels"], np.array([object()] * 8, dtype=object), allow_pickle=True)
    with pytest.raises(HonestLlamaFeatureError, match="not a plain numpy array"):
        read_honest_llama_features(tmp_path / "hl", "tiny", "tqa_mc2", g)


def test_export_refuses_existing_files_and_missing_layer_wise(ours, tmp_path):
    path, _ = ours
    export_honest_llama_features(path, tmp_path / "hl")
    with pytest.raises(OutputExistsError):
        export_honest_llama_features(path, tmp_path / "hl")
    export_honest_llama_features(path, tmp_path / "hl", force=True)
    model = make_tiny_model("llama")
    bare = write_features(model, tiny_tokenizer(), _prompt_set(), tmp_path / "bare", model_name="tiny", layer_wise=False, progress=False)
    with pytest.raises(HonestLlamaFeatureError, match="without layer_wise"):
        export_honest_llama_features(bare, tmp_path / "hl2", layer_wise=True)
    assert not (tmp_path / "hl2").exists()
