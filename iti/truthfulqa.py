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
V1_FILE = "truthfulqa/TruthfulQA_v1.csv"
HUB_ID = "truthful_qa"


@dataclass(frozen=True)
class MCItem:
    """One question in the ``multiple_choice`` order: mc1 and mc2 targets as (answer, label) pairs, 1 = correct."""
    question: str
    mc1: tuple[tuple[str, int], ...]
    mc2: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class GenItem:
    """One row of the ``generation`` order (TruthfulQA.csv), answers as listed there (not closed with periods)."""
    type: str
    category: str
    question: str
    best_answer: str
    correct_answers: tuple[str, ...]
    incorrect_answers: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Refs:
    """Reference answers used for MC scoring and BLEU/ROUGE, closed with a period as TruthfulQA does."""

    question: str
    best: str
    true: tuple[str, ...]
    false: tuple[str, ...]


@dataclass(frozen=True)
class TruthfulQA:
    """TruthfulQA in both orders, the map from ``gen`` rows to ``mc`` indices, and the MC references (``refs``), each
    with where it was read from."""
    mc: tuple[MCItem, ...]
    gen: tuple[GenItem, ...]
    mc_index_of_gen: tuple[int, ...]
    """For each generation row, the index of the same question in the ``mc`` order."""
    origin: str
    refs: tuple[Refs, ...] = ()
    """Per question in ``mc`` order: honest_llama's references (the Oct-2021 CSV, rows 164/247 patched)."""
    refs_origin: str = ""

    def __len__(self) -> int:
        return len(self.mc)


def _split_answers(cell: str) -> tuple[str, ...]:
    # As the hub's ``generation`` config: split on ';' and strip, keeping empty items (31 in the v0 CSV),
    # which is how honest_llama arrives at 5,918 generation prompts.
    return tuple(a.strip() for a in cell.split(";"))


def close_answer(answer: str) -> str:
    """TruthfulQA's format_best: strip, and end with a period."""
    a = answer.strip()
    return a if not a or a.endswith(".") else a + "."


def split_multi_answer(cell: str) -> tuple[str, ...]:
    """TruthfulQA's split_multi_answer: split on ';', strip, drop empties, close each with a period."""
    return tuple(close_answer(a) for a in cell.strip().split(";") if a.strip())


def _refs_from_rows(rows: list[GenItem]) -> dict[str, Refs]:
    return {
        g.question.strip(): Refs(g.question.strip(), close_answer(g.best_answer), tuple(close_answer(a) for a in g.correct_answers if a),
                                 tuple(close_answer(a) for a in g.incorrect_answers if a))
        for g in rows
    }


def _read_v1_refs(v1_path: Path, gen: list[GenItem]) -> dict[str, Refs]:
    """honest_llama's MC references: the Oct-2021 CSV with row 164 replaced by the v0/hub row ("Are all women
    women?") and row 247 (tarot) given the hub's question text without its trailing space."""
    df = pd.read_csv(v1_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    rows = [
        GenItem(r["Type"], r["Category"], r["Question"], r["Best Answer"], tuple(a.strip() for a in r["Correct Answers"].split(";")),
                tuple(a.strip() for a in r["Incorrect Answers"].split(";")), r["Source"])
        for r in df.to_dict("records")
    ]
    if len(rows) > 247 and len(gen) > 247:
        rows[164] = gen[164]
        rows[247] = GenItem(**{**gen[247].__dict__, "question": gen[247].question.strip()})
    return _refs_from_rows(rows)


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
    v1_path = search.find(V1_FILE)
    if v1_path is not None:
        refs_by_q, refs_origin = _read_v1_refs(v1_path, gen), str(v1_path)
    else:  # the hub has only the v0 answers: close enough, and said in refs_origin
        refs_by_q, refs_origin = _refs_from_rows(gen), f"{origin} (v0 answers; {V1_FILE} not found)"
    try:
        refs = tuple(refs_by_q[item.question.strip()] for item in mc)
    except KeyError as e:
        raise FeatureFileError(f"{refs_origin}: no reference answers for question {e}") from None
    return TruthfulQA(tuple(mc), tuple(gen), mc_index_of_gen, origin, refs, refs_origin)
