"""introspect's seven data sets in its three splits, checked against what introspect and the data's curators say:
split sizes from introspect's own tests (tests/test_dataset.py), the bAbI and MCTest test splits against the
question files derived for ../shared/data independently of iti (see each SOURCE.md), and a raw bAbI story parsed by
hand."""
from __future__ import annotations

import json

import pytest

from iti.errors import DataNotFoundError
from iti.faithfulness.datasets import MULTI_CHOICE, SENTIMENT, babi_questions, load_faithfulness_dataset

from ..conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "faithfulness").is_dir(), reason="needs the shared faithfulness data")

#: introspect tests/test_dataset.py: (train, valid, test) sizes; SST2 from the GLUE sizes and datasets' 80% rounding.
INTROSPECT_SIZES = {"imdb": (20000, 5000, 25000), "rte": (1992, 498, 277), "babi1": (8000, 2000, 1000),
                    "babi2": (8000, 2000, 1000), "babi3": (8000, 2000, 1000), "mctest": (1200, 200, 600),
                    "sst2": (53879, 13470, 872)}
#: Splits with no local copy (SOURCE.md says why): the loader must say so and name the hub.
NO_LOCAL_COPY = {("imdb", "train"), ("imdb", "valid"), ("babi3", "train"), ("babi3", "valid")}


@pytest.mark.parametrize("name", sorted(INTROSPECT_SIZES))
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_split_sizes_are_introspects(name, split):
    if (name, split) in NO_LOCAL_COPY:
        with pytest.raises(DataNotFoundError, match=f"{name} {split} split not found"):
            load_faithfulness_dataset(name, SHARED_DATA, allow_hub=False, split=split)
        return
    ds = load_faithfulness_dataset(name, SHARED_DATA, allow_hub=False, split=split)
    want = INTROSPECT_SIZES[name][("train", "valid", "test").index(split)]
    if (name, split) == ("imdb", "test"):
        want = 1000  # the local copy is a 1,000-review sample of the 25,000 (its SOURCE.md)
    assert len(ds) == want and ds.split == split
    assert sorted(s.idx for s in ds.samples) == list(range(want))  # introspect numbers a split's rows from 0
    if ds.kind == MULTI_CHOICE:
        assert all(s.label in s.choices and list(s.choices) == sorted(s.choices) for s in ds.samples)


def _rte_row(text: str, line: int) -> str:
    import csv
    import io

    return list(csv.reader(io.StringIO(text), delimiter="\t"))[line][0]


def test_train_and_valid_are_the_two_parts_of_the_train_file():
    train = load_faithfulness_dataset("rte", SHARED_DATA, allow_hub=False, split="train")
    valid = load_faithfulness_dataset("rte", SHARED_DATA, allow_hub=False, split="valid")
    rows = (SHARED_DATA / "faithfulness/rte/glue_rte_train.tsv").read_text(encoding="utf-8")
    assert next(s for s in train.samples if s.idx == 0).paragraph == _rte_row(rows, 1)
    assert next(s for s in valid.samples if s.idx == 0).paragraph == _rte_row(rows, 1992 + 1)
    assert len(train) + len(valid) == 2490


def test_babi_test_split_equals_the_curated_question_file():
    ds = load_faithfulness_dataset("babi1", SHARED_DATA, allow_hub=False)
    by_idx = {s.idx: s for s in ds.samples}
    rows = [json.loads(line) for line in (SHARED_DATA / "faithfulness/babi1/babi1_test_introspect.jsonl").open()]
    assert len(rows) == len(by_idx) == 1000
    for r in rows:
        s = by_idx[r["idx"]]
        assert (s.paragraph, s.question, s.label, s.choices) == (r["paragraph"], r["question"], r["label"],
                                                                  tuple(sorted(r["choices"])))


def test_mctest_test_split_equals_the_curated_question_file_but_for_tab_marks():
    ds = load_faithfulness_dataset("mctest", SHARED_DATA, allow_hub=False)
    by_idx = {s.idx: s for s in ds.samples}
    rows = [json.loads(line) for line in (SHARED_DATA / "faithfulness/mctest/mc500_test_introspect.jsonl").open()]
    differ = 0
    for i, r in enumerate(rows):
        s = by_idx[i]
        assert (s.question, s.label, s.choices) == (r["question"], r["label"], tuple(r["choices"]))
        # introspect replaces only \newline; the curated file also turned MCTest's \tab mark into a tab
        assert s.paragraph.replace("\\tab", "\t") == r["story"]
        differ += s.paragraph != r["story"]
    assert differ == 8


def test_babi_story_parsed_by_hand():
    text = ("1 Mary moved to the bathroom.\n2 John went to the hallway.\n3 Where is Mary? \tbathroom\t1\n"
            "4 Daniel went back to the hallway.\n5 Where is Daniel? \thallway\t4\n"
            "1 Sandra journeyed to the office.\n2 Where is Sandra? \toffice\t1\n")
    got = babi_questions(text)
    assert [(s.idx, s.paragraph, s.question, s.label, s.choices) for s in got] == [
        (0, "Mary moved to the bathroom. Then, John went to the hallway.", "Where is Mary?", "bathroom",
         ("bathroom", "hallway")),
        (1, "Mary moved to the bathroom. Then, John went to the hallway. Then, Daniel went back to the hallway.",
         "Where is Daniel?", "hallway", ("bathroom", "hallway")),
        (2, "Sandra journeyed to the office.", "Where is Sandra?", "office", ("office",)),
    ]


def test_sst2_keeps_glues_sentence():
    test = load_faithfulness_dataset("sst2", SHARED_DATA, allow_hub=False)
    first = next(s for s in test.samples if s.idx == 0)
    assert (first.kind, first.paragraph, first.label) == (SENTIMENT, "it 's a charming and often affecting journey . ",
                                                          "positive")
    train = load_faithfulness_dataset("sst2", SHARED_DATA, allow_hub=False, split="train")
    first = next(s for s in train.samples if s.idx == 0)
    assert (first.paragraph, first.label) == ("hide new secretions from the parental units ", "negative")


@pytest.mark.parametrize("alias,name", [("bAbI-1", "babi1"), ("bAbI-2", "babi2"), ("bAbI-3", "babi3"), ("SST2", "sst2"),
                                        ("IMDB", "imdb"), ("RTE", "rte"), ("MCTest", "mctest")])
def test_introspects_data_set_names_are_accepted(alias, name):
    assert load_faithfulness_dataset(alias, SHARED_DATA, allow_hub=False).name == name
