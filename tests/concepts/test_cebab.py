"""CEBaB in SparseCBM's "pure" setting: sizes, label mapping, counterfactual pairs, the majority baseline."""
from __future__ import annotations

import json

import numpy as np
import pytest

from iti.concepts.cebab import ASPECTS, load_cebab, majority_baseline


@pytest.fixture(scope="module")
def splits():
    return {s: load_cebab(s, allow_hub=False) for s in ("train_exclusive", "dev", "test")}


def test_sizes_after_dropping_no_majority(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train_exclusive": 1463, "dev": 1673, "test": 1689}
    assert splits["train_exclusive"].dropped_no_majority == 292
    assert set(np.unique(splits["test"].ratings)) == {0, 1, 2, 3, 4}


def test_concept_labels_and_majority_baseline(splits):
    test = splits["test"]
    counts = {a: list(np.bincount(test.concepts[:, j], minlength=3)) for j, a in enumerate(ASPECTS)}
    assert counts == {"food": [558, 717, 414], "service": [426, 449, 814], "ambiance": [243, 303, 1143], "noise": [201, 161, 1327]}
    base = majority_baseline(splits["train_exclusive"], test)
    assert base["mean"] == pytest.approx(0.592, abs=0.001) and base["food"] == pytest.approx(717 / 1689)


def test_ids_stay_strings_and_pairs_match_their_originals(splits):
    test = splits["test"]
    assert all(isinstance(r.id, str) and "_" in r.id for r in test.reviews)
    pairs = test.pairs()
    assert len(pairs) == 1417 and len(splits["dev"].pairs()) == 1401 and splits["train_exclusive"].pairs() == []
    assert all(p.original.original_id == p.edited.original_id and p.original.is_original for p in pairs)
    by_goal = {g: np.mean([p.rating_change for p in pairs if p.goal == g]) for g in ("Negative", "Positive", "unknown")}
    assert by_goal == pytest.approx({"Negative": -1.21, "Positive": 0.80, "unknown": -0.01}, abs=0.005)


def test_bad_files_and_splits_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown CEBaB split"):
        load_cebab("train")
    (tmp_path / "cebab").mkdir()
    (tmp_path / "cebab" / "dev.json").write_text("[{")
    with pytest.raises(ValueError, match="not valid CEBaB JSON"):
        load_cebab("dev", tmp_path)
    (tmp_path / "cebab" / "dev.json").write_text(json.dumps([{"id": "1", "review_majority": "3"}]))
    with pytest.raises(ValueError, match="not in CEBaB's format"):
        load_cebab("dev", tmp_path)
