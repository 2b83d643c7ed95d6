"""The seven classification data sets of the self-explanation protocol, in the protocol's shape, each in introspect's
three splits.

Each item becomes a :class:`Sample` whose ``label`` is already the class word the prompts ask for ("positive",
"yes", a choice text), so tasks never see dataset-specific label ids. Multiple-choice options are sorted
alphabetically, as introspect does. Splits are introspect's: ``train`` = the first 80% of the public train split and
``valid`` = the rest (``train[:80%]`` / ``train[80%:]``, the boundary rounded as ``datasets`` rounds it), ``test`` =
the public validation or test split (MCTest keeps its own train / validation / test). ``Sample.idx`` is the
position in the split, as introspect numbers it. Order: the split shuffled with the seed exactly as
``datasets.Dataset.shuffle`` does (``numpy.random.default_rng(seed).permutation``), so the first N samples are those
introspect's run starts with whenever the split matches.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataFileError, DataNotFoundError, EmptyInputError
from ..paths import data_search
from .errors import UnknownDatasetError

#: Which of the three prompt families a data set uses.
SENTIMENT, ENTAILMENT, MULTI_CHOICE = "sentiment", "entailment", "multi_choice"
#: introspect's split names (``--split``).
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Sample:
    """One observation. ``hypothesis`` is set for entailment, ``question``/``choices`` for multiple choice."""

    idx: int
    kind: str
    paragraph: str
    label: str
    hypothesis: str | None = None
    question: str | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class FaithfulnessDataset:
    """One loaded data set: prompt family, the split evaluated (``train`` / ``valid`` / ``test``), where it was read
    from (a path or ``hub:...``), and the samples in seeded-shuffle order."""
    name: str
    kind: str
    split: str
    origin: str
    samples: tuple[Sample, ...] = field(repr=False)

    def __len__(self) -> int:
        return len(self.samples)


def _imdb_local(path: Path) -> list[Sample]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [Sample(i, SENTIMENT, r["text"].replace("<br />", "\n"), ("negative", "positive")[int(r["label"])])
            for i, r in enumerate(rows)]


def _imdb_hub(split: str) -> list[Sample]:
    from datasets import load_dataset

    ds = load_dataset("stanfordnlp/imdb", "plain_text", split=split)
    return [Sample(i, SENTIMENT, r["text"].replace("<br />", "\n"), ("negative", "positive")[int(r["label"])])
            for i, r in enumerate(ds)]


def _sst2_dev(path: Path) -> list[Sample]:
    """GLUE ``SST-2/dev.tsv`` (``sentence<TAB>label``): the sentence as GLUE and the hub keep it, trailing space
    included."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [Sample(i, SENTIMENT, r["sentence"], ("negative", "positive")[int(r["label"])]) for i, r in enumerate(rows)]


def _sst2_train(path: Path) -> list[Sample]:
    """The shipped GLUE SST-2 train copy (``label<TAB>sentence``, trailing spaces stripped, see its SOURCE.md): one
    space is put back so that each sentence is the hub's."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [Sample(i, SENTIMENT, r["sentence"] + " ", ("negative", "positive")[int(r["label"])])
            for i, r in enumerate(rows)]


def _sst2_hub(split: str) -> list[Sample]:
    from datasets import load_dataset

    ds = load_dataset("nyu-mll/glue", "sst2", split=split)
    return [Sample(i, SENTIMENT, r["sentence"], ("negative", "positive")[int(r["label"])]) for i, r in enumerate(ds)]


def _rte_local(path: Path) -> list[Sample]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [Sample(i, ENTAILMENT, r["sentence1"], ("yes", "no")[int(r["label"])], hypothesis=r["sentence2"])
            for i, r in enumerate(rows)]


def _rte_hub(split: str) -> list[Sample]:
    from datasets import load_dataset

    ds = load_dataset("nyu-mll/glue", "rte", split=split)
    return [Sample(i, ENTAILMENT, r["sentence1"], ("yes", "no")[int(r["label"])], hypothesis=r["sentence2"])
            for i, r in enumerate(ds)]


def babi_questions(text: str) -> list[Sample]:
    """A raw bAbI file (``<n> <statement>`` / ``<n> <question>\t<answer>\t<support>``) as introspect's local bAbI
    builder reads it: one sample per question, the paragraph = the story's statements so far joined by " Then, ",
    the choices = the answers of all questions of the same story."""
    out: list[Sample] = []
    story: list[str] = []
    questions: list[tuple[list[str], str, str]] = []

    def push() -> None:
        choices, base = tuple(sorted({label for _, _, label in questions})), len(out)
        out.extend(Sample(base + i, MULTI_CHOICE, " Then, ".join(par), label, question=q, choices=choices)
                   for i, (par, q, label) in enumerate(questions))

    for line in text.splitlines():
        line = line.strip()
        tid, rest = line.split(" ", 1)
        parts = rest.split("\t")
        if tid == "1":
            push()
            story, questions = [], []
        if len(parts) == 1:
            story.append(parts[0].strip())
        else:
            questions.append((story[:], parts[0].strip(), parts[1].strip()))
    push()
    return out


def _babi_local(path: Path) -> list[Sample]:
    return babi_questions(path.read_text(encoding="utf-8"))


def mctest_questions(tsv: str, answers: str) -> list[Sample]:
    """An official MCTest ``.tsv`` (id, properties, story, then 4 x [question, A, B, C, D]) and its ``.ans`` (4
    letters a line) as introspect reads the hub copy: story with ``\newline`` as a line break, the question without
    its ``one:`` / ``multiple:`` type, the choices sorted, the label the correct option's text."""
    out: list[Sample] = []
    stories = [line for line in tsv.split("\n") if line.strip()]
    keys = [line.split("\t") for line in answers.split("\n") if line.strip()]
    if len(stories) != len(keys):
        raise ValueError(f"{len(stories)} stories but {len(keys)} answer lines")
    for line, letters in zip(stories, keys):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 23 or len(letters) != 4:
            raise ValueError(f"story {fields[0]!r}: {len(fields)} fields (23 expected), {len(letters)} answers (4)")
        story = fields[2].replace("\\newline", "\n")
        for q in range(4):
            question, *options = fields[3 + 5 * q: 8 + 5 * q]
            kind, _, question = question.partition(": ")
            if kind not in ("one", "multiple"):
                raise ValueError(f"story {fields[0]!r} question {q}: no one:/multiple: type")
            by_letter = dict(zip("ABCD", options))
            out.append(Sample(len(out), MULTI_CHOICE, story, by_letter[letters[q].strip()], question=question,
                              choices=tuple(sorted(options))))
    return out


def _mctest_local(path: Path) -> list[Sample]:
    return mctest_questions(path.read_text(encoding="utf-8"), path.with_suffix(".ans").read_text(encoding="utf-8"))


def _mctest_hub(split: str) -> list[Sample]:
    from datasets import load_dataset

    ds = load_dataset("sagnikrayc/mctest", split=split)
    out = []
    for i, r in enumerate(ds):
        options = r["answer_options"]
        out.append(Sample(i, MULTI_CHOICE, r["story"].replace("\\newline", "\n"), options[r["answer"]],
                          question=r["question"], choices=tuple(sorted(options.values()))))
    return out


@dataclass(frozen=True)
class _Split:
    """Where one split lives: a local file (holding ``size`` rows in all) of which the percent range ``part`` is
    taken, and the hub split that holds the same rows."""
    relative: str | None
    read_local: Callable[[Path], list[Sample]] | None
    size: int | None
    hub_split: str | None
    part: tuple[int, int] = (0, 100)

    @property
    def rows(self) -> int | None:
        """How many samples the split holds when read from its local file (None: not known before loading)."""
        if self.size is None:
            return None
        lo, hi = (_percent_of(p, self.size) for p in self.part)
        return hi - lo


@dataclass(frozen=True)
class _Source:
    kind: str
    splits: dict[str, _Split]
    read_hub: Callable[[str], list[Sample]] | None
    hub_id: str | None


def _percent_of(pct: int, n: int) -> int:
    """``datasets``' ``train[:80%]`` boundary ("closest" rounding: Python's round of pct * n / 100)."""
    return int(round(pct * n / 100.0))


def _babi(task: int, name: str, train_rows: int = 10000) -> _Source:
    folder = f"faithfulness/babi{task}/qa{task}_{name}"
    return _Source(MULTI_CHOICE, {
        "train": _Split(f"{folder}_train.txt", _babi_local, train_rows, None, (0, 80)),
        "valid": _Split(f"{folder}_train.txt", _babi_local, train_rows, None, (80, 100)),
        "test": _Split(f"{folder}_test.txt", _babi_local, 1000, None),
    }, None, None)


def _sliced(relative: str, read: Callable[[Path], list[Sample]], size: int) -> dict[str, _Split]:
    """introspect's train and valid: the first 80% and the rest of the public train split."""
    return {"train": _Split(relative, read, size, "train[:80%]", (0, 80)),
            "valid": _Split(relative, read, size, "train[80%:]", (80, 100))}


#: name -> its splits. ``test`` is the split introspect's paper reports.
SOURCES: dict[str, _Source] = {
    "imdb": _Source(SENTIMENT, {
        "train": _Split(None, None, None, "train[:80%]", (0, 80)),
        "valid": _Split(None, None, None, "train[80%:]", (80, 100)),
        "test": _Split("faithfulness/imdb/imdb_test_sample_1000.csv", _imdb_local, 1000, "test"),  # a 1,000-review sample
    }, _imdb_hub, "stanfordnlp/imdb"),
    "sst2": _Source(SENTIMENT, {
        **_sliced("faithfulness/sst2/sst2_train_awake020_modified.tsv", _sst2_train, 67349),
        "test": _Split("faithfulness/sst2/dev.tsv", _sst2_dev, 872, "validation"),
    }, _sst2_hub, "nyu-mll/glue sst2"),
    "rte": _Source(ENTAILMENT, {
        **_sliced("faithfulness/rte/glue_rte_train.tsv", _rte_local, 2490),
        "test": _Split("faithfulness/rte/glue_rte_validation.tsv", _rte_local, 277, "validation"),
    }, _rte_hub, "nyu-mll/glue rte"),
    "babi1": _babi(1, "single-supporting-fact"),
    "babi2": _babi(2, "two-supporting-facts"),
    "babi3": _babi(3, "three-supporting-facts"),
    "mctest": _Source(MULTI_CHOICE, {
        "train": _Split("faithfulness/mctest/mc500.train.tsv", _mctest_local, 1200, "train"),
        "valid": _Split("faithfulness/mctest/mc500.dev.tsv", _mctest_local, 200, "validation"),
        "test": _Split("faithfulness/mctest/mc500.test.tsv", _mctest_local, 600, "test"),
    }, _mctest_hub, "sagnikrayc/mctest"),
}
#: Other spellings, introspect's data set names among them (``--dataset bAbI-1`` as its README writes it).
ALIASES = {"babi": "babi1", "babi-1": "babi1", "babi-2": "babi2", "babi-3": "babi3", "mctest500": "mctest",
           "mc500": "mctest", "sst-2": "sst2"}


def dataset_names() -> tuple[str, ...]:
    """The canonical data set names, in a fixed order (aliases such as ``mc500`` are not listed)."""
    return tuple(SOURCES)


def canonical_dataset(name: str) -> str:
    """The canonical name of ``name`` (an alias or introspect's spelling, any case); UnknownDatasetError if none."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SOURCES:
        raise UnknownDatasetError(f"unknown faithfulness data set {name!r}; choose one of {', '.join(SOURCES)}")
    return key


def split_spec(name: str, split: str) -> _Split:
    """Where ``split`` of data set ``name`` lives; an unknown split is refused."""
    if split not in SPLITS:
        raise UnknownDatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return SOURCES[canonical_dataset(name)].splits[split]


def load_faithfulness_dataset(name: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0,
                              allow_hub: bool = True, split: str = "test") -> FaithfulnessDataset:
    """Load ``split`` of ``name`` from ``data_dir``, ``$ITI_DATA_DIR``, ``../shared/data``, then the hub; shuffled
    with ``seed``."""
    key = canonical_dataset(name)
    src, spec = SOURCES[key], split_spec(key, split)
    search = data_search(data_dir)
    path = search.find(spec.relative) if spec.relative is not None else None
    samples: list[Sample] | None = None
    if path is not None:
        assert spec.read_local is not None
        try:
            rows, origin = spec.read_local(path), str(path)
        except (KeyError, ValueError, IndexError, TypeError, json.JSONDecodeError, csv.Error, OSError) as e:
            raise DataFileError(f"{path} is not a valid {key} file ({type(e).__name__}: {e}); truncated or corrupt? "
                                "restore it from its SOURCE.md") from e
        if spec.size is not None and len(rows) != spec.size:
            raise DataFileError(f"{path} holds {len(rows)} {key} samples; the file has {spec.size} (truncated or "
                                "another file?): restore it from its SOURCE.md")
        lo, hi = (_percent_of(p, len(rows)) for p in spec.part)
        samples = [dataclasses.replace(s, idx=i) for i, s in enumerate(rows[lo:hi])]
    else:
        hub_error = "not tried (allow_hub=False)" if not allow_hub else "no hub copy of this data set"
        if allow_hub and src.read_hub is not None and spec.hub_split is not None:
            try:
                samples, origin = src.read_hub(spec.hub_split), f"hub:{src.hub_id} {spec.hub_split}"
            except Exception as e:  # offline, missing package...: reported with the local misses
                hub_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if samples is None:
            local = (f"Looked for {spec.relative} in:\n{search.describe(spec.relative)}\n" if spec.relative else
                     "No local copy of this split is known (see the data set's SOURCE.md).\n")
            raise DataNotFoundError(
                f"{key} {split} split not found. {local}"
                f"  then the Hugging Face hub ({src.hub_id or '-'}): {hub_error}\n"
                "Pass data_dir=/path/to/data (or --data_dir), or set ITI_DATA_DIR.")
    if not samples:
        raise EmptyInputError(f"{origin} holds no {split} samples")
    order = np.random.default_rng(seed).permutation(len(samples))
    return FaithfulnessDataset(key, src.kind, split, origin, tuple(samples[int(i)] for i in order))
