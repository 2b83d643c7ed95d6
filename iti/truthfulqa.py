"""TruthfulQA, read from local files (or the hub), in the two orders the protocol needs.

``mc`` follows the Hugging Face ``multiple_choice`` order (``mc_task.json``), which is the order of activations
and folds; ``gen`` follows the ``generation`` order (``TruthfulQA.csv``). Question ids everywhere in this
library are indices into the ``mc`` order.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import DataNotFoundError, FeatureFileError
from .paths import data_search

MC_FILE = "truthfulqa/mc_task.json"
GEN_FILE = "truthfulqa/TruthfulQA.csv"
HUB_ID = "truthful_qa"


@dataclass(frozen=True)
class MCItem:
    question: str
    mc1: tuple[tuple[str, int], ...]
    mc2: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class GenItem:
    type: str
    category: str
    question: str
    best_answer: str
    correct_answers: tuple[str, ...]
    incorrect_answers: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class TruthfulQA:
    mc: tuple[MCItem, ...]
    gen: tuple[GenItem, ...]
    mc_index_of_gen: tuple[int, ...]
    """For each generation row, the index of the same question in the ``mc`` order."""
    origin: str

    def __len__(self) -> int:
        return len(self.mc)


def _split_answers(cell: str) -> tuple[str, ...]:
    # As the hub's ``generation`` config: split on ';' and strip, keeping empty items (31 in the v0 CSV),
    # which is how honest_llama arrives at 5,918 generation prompts.
    return tuple(a.strip() for a in cell.split(";"))


def _read_local(mc_path: Path, gen_path: Path) -> tuple[list[MCItem], list[GenItem]]:
    try:
        raw = json.loads(mc_path.read_text(encoding="utf-8"))
        mc = [MCItem(r["question"], tuple(r["mc1_targets"].items()), tuple(r["mc2_targets"].items())) for r in raw]
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise FeatureFileError(f"{mc_path} is not a TruthfulQA mc_task.json: {e}") from None
    df = pd.read_csv(gen_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    needed = ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"]
    if missing := [c for c in needed if c not in df.columns]:
        raise FeatureFileError(f"{gen_path} lacks TruthfulQA columns {missing}")
    gen = [
        GenItem(r["Type"], r["Category"], r["Question"], r["Best Answer"], _split_answers(r["Correct Answers"]),
                _split_answers(r["Incorrect Answers"]), r["Source"])
        for r in df.to_dict("records")
    ]
    return mc, gen


def _read_hub() -> tuple[list[MCItem], list[GenItem]]:
    import datasets

    mc_ds = datasets.load_dataset(HUB_ID, "multiple_choice")["validation"]
    gen_ds = datasets.load_dataset(HUB_ID, "generation")["validation"]
    mc = [
        MCItem(r["question"], tuple(zip(r["mc1_targets"]["choices"], r["mc1_targets"]["labels"])),
               tuple(zip(r["mc2_targets"]["choices"], r["mc2_targets"]["labels"])))
        for r in mc_ds
    ]
    gen = [
        GenItem(r["type"], r["category"], r["question"], r["best_answer"], tuple(r["correct_answers"]),
                tuple(r["incorrect_answers"]), r["source"])
        for r in gen_ds
    ]
    return mc, gen


def load_truthfulqa(data_dir: str | os.PathLike | None = None, *, allow_hub: bool = True) -> TruthfulQA:
    """Load TruthfulQA: ``data_dir``, then ``$ITI_DATA_DIR``, then ``../shared/data``, then the hub.

    ``data_dir`` is a data root holding ``truthfulqa/mc_task.json`` and ``truthfulqa/TruthfulQA.csv``.
    """
    search = data_search(data_dir)
    mc_path, gen_path = search.find(MC_FILE), search.find(GEN_FILE)
    if mc_path is not None and gen_path is not None and mc_path.parent == gen_path.parent:
        mc, gen = _read_local(mc_path, gen_path)
        origin = str(mc_path.parent)
    else:
        hub_error = "not tried (allow_hub=False)"
        if allow_hub:
            try:
                mc, gen = _read_hub()
                origin = f"hub:{HUB_ID}"
            except Exception as e:  # network, missing dataset, ...: reported with the local misses below
                hub_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                mc = None  # type: ignore[assignment]
        if not allow_hub or mc is None:
            raise DataNotFoundError(
                "TruthfulQA not found. Looked for truthfulqa/mc_task.json and truthfulqa/TruthfulQA.csv in:\n"
                f"{search.describe('truthfulqa')}\n  then the Hugging Face hub ({HUB_ID}): {hub_error}\n"
                "Pass data_dir=/path/to/data (or --data_dir), or set ITI_DATA_DIR."
            )
    by_question = {item.question.strip(): i for i, item in enumerate(mc)}
    try:
        mc_index_of_gen = tuple(by_question[g.question.strip()] for g in gen)
    except KeyError as e:
        raise FeatureFileError(f"TruthfulQA files at {origin} disagree: generation question {e} is not in mc_task.json") from None
    return TruthfulQA(tuple(mc), tuple(gen), mc_index_of_gen, origin)
