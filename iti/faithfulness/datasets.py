"""The four classification data sets of the self-explanation protocol, in the protocol's shape.

Each item becomes a :class:`Sample` whose ``label`` is already the class word the prompts ask for ("positive",
"yes", a choice text), so tasks never see dataset-specific label ids. Multiple-choice options are sorted
alphabetically, as introspect does. Order: the split shuffled with the seed exactly as ``datasets.Dataset.shuffle``
does (``numpy.random.default_rng(seed).permutation``), so the first N samples are those introspect's run starts with
whenever the split matches.
"""
from __future__ import annotations

import csv
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
    """One loaded data set: prompt family, the split evaluated, where it was read from (a path or
    ``hub:...``), and the samples in seeded-shuffle order."""
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


def _imdb_hub() -> list[Sample]:
    from datasets import load_dataset

    ds = load_dataset("stanfordnlp/imdb", "plain_text", split="test")
    return [Sample(i, SENTIMENT, r["text"].replace("<br />", "\n"), ("negative", "positive")[int(r["label"])])
            for i, r in enumerate(ds)]


def _rte_local(path: Path) -> list[Sample]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [Sample(int(r["idx"]), ENTAILMENT, r["sentence1"], ("yes", "no")[int(r["label"])], hypothesis=r["sentence2"])
            for r in rows]


def _rte_hub() -> list[Sample]:
    from datasets import load_dataset

    ds = load_dataset("nyu-mll/glue", "rte", split="validation")
    return [Sample(int(r["idx"]), ENTAILMENT, r["sentence1"], ("yes", "no")[int(r["label"])], hypothesis=r["sentence2"])
            for r in ds]


def _babi_local(path: Path) -> list[Sample]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Sample(int(r["idx"]), MULTI_CHOICE, r["paragraph"], r["label"], question=r["question"],
                   choices=tuple(sorted(r["choices"]))) for r in rows]


def _mctest_local(path: Path) -> list[Sample]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Sample(i, MULTI_CHOICE, r["story"], r["label"], question=r["question"], choices=tuple(sorted(r["choices"])))
            for i, r in enumerate(rows)]


def _mctest_hub() -> list[Sample]:
    from datasets import load_dataset

    ds = load_dataset("sagnikrayc/mctest", split="test")
    out = []
    for i, r in enumerate(ds):
        options = r["answer_options"]
        out.append(Sample(i, MULTI_CHOICE, r["story"].replace("\\newline", "\n"), options[r["answer"]],
                          question=r["question"], choices=tuple(sorted(options.values()))))
    return out


@dataclass(frozen=True)
class _Source:
    kind: str
    split: str
    relative: str
    read_local: Callable[[Path], list[Sample]]
    read_hub: Callable[[], list[Sample]] | None
    hub_id: str | None
    size: int | None = None
    """How many samples the local file must hold (a shorter file is cut off, not a subset)."""


#: name -> where it lives. ``split`` is the split introspect evaluates (its "test").
SOURCES: dict[str, _Source] = {
    "imdb": _Source(SENTIMENT, "test (1,000-review sample)", "faithfulness/imdb/imdb_test_sample_1000.csv",
                    _imdb_local, _imdb_hub, "stanfordnlp/imdb", 1000),
    "rte": _Source(ENTAILMENT, "validation", "faithfulness/rte/glue_rte_validation.tsv", _rte_local, _rte_hub, "nyu-mll/glue", 277),
    "babi1": _Source(MULTI_CHOICE, "test", "faithfulness/babi1/babi1_test_introspect.jsonl", _babi_local, None, None, 1000),
    "mctest": _Source(MULTI_CHOICE, "test (mc500)", "faithfulness/mctest/mc500_test_introspect.jsonl", _mctest_local,
                      _mctest_hub, "sagnikrayc/mctest", 600),
}
ALIASES = {"babi": "babi1", "babi-1": "babi1", "mctest500": "mctest", "mc500": "mctest"}


def dataset_names() -> tuple[str, ...]:
    """The canonical data set names, in a fixed order (aliases such as ``mc500`` are not listed)."""
    return tuple(SOURCES)


def load_faithfulness_dataset(name: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0,
                              allow_hub: bool = True) -> FaithfulnessDataset:
    """Load ``name`` from ``data_dir``, ``$ITI_DATA_DIR``, ``../shared/data``, then the hub; shuffled with ``seed``."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SOURCES:
        raise UnknownDatasetError(f"unknown faithfulness data set {name!r}; choose one of {', '.join(SOURCES)}")
    src = SOURCES[key]
    search = data_search(data_dir)
    path = search.find(src.relative)
    if path is not None:
        try:
            samples, origin = src.read_local(path), str(path)
        except (KeyError, ValueError, IndexError, TypeError, json.JSONDecodeError, csv.Error) as e:  # a cut-off row: None fields
            raise DataFileError(f"{path} is not a valid {key} file ({type(e).__name__}: {e}); truncated or corrupt? "
                                "restore it from its SOURCE.md") from e
        if src.size is not None and len(samples) != src.size:
            raise DataFileError(f"{path} holds {len(samples)} {key} samples; the data set has {src.size} (truncated or "
                                "another file?): restore it from its SOURCE.md")
    else:
        hub_error = "not tried (allow_hub=False)" if not allow_hub else "no hub copy of this data set"
        samples = None
        if allow_hub and src.read_hub is not None:
            try:
                samples, origin = src.read_hub(), f"hub:{src.hub_id}"
            except Exception as e:  # offline, missing package...: reported with the local misses
                hub_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if samples is None:
            raise DataNotFoundError(
                f"{key} not found. Looked for {src.relative} in:\n{search.describe(src.relative)}\n"
                f"  then the Hugging Face hub ({src.hub_id or '-'}): {hub_error}\n"
                "Pass data_dir=/path/to/data (or --data_dir), or set ITI_DATA_DIR.")
    if not samples:
        raise EmptyInputError(f"{origin} holds no samples")
    order = np.random.default_rng(seed).permutation(len(samples))
    return FaithfulnessDataset(key, src.kind, src.split, origin, tuple(samples[int(i)] for i in order))
