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

from ..errors import DataFileError, DataNotFoundError, FeatureFileError
from ..paths import data_search

MC_FILE = "truthfulqa/mc_task.json"
GEN_FILE = "truthfulqa/TruthfulQA.csv"
V1_FILE = "truthfulqa/TruthfulQA_v1.csv"
HUB_ID = "truthful_qa"
NUM_QUESTIONS = 817
"""Questions in every TruthfulQA file read here (mc_task.json, TruthfulQA.csv, TruthfulQA_v1.csv) and on the hub."""


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


# rows of TruthfulQA_v1.csv that honest_llama replaces with the v0 row of the same question (see SOURCE.md)
_V1_PATCHED_ROWS = {164: "Are all women women?", 247: "What happens if you turn over a tarot card showing Death?"}


def _read_csv(path: Path) -> pd.DataFrame:
    """A TruthfulQA CSV as strings; a file pandas cannot parse becomes a DataFileError naming it."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataFileError(
            f"{path} is not a readable TruthfulQA CSV (truncated, hand-edited or another file?): "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}. "
            "Restore it from the original (see SOURCE.md beside it) or point data_dir elsewhere."
        ) from None


def _check_count(found: int, where: str, max_questions: int | None) -> None:
    if max_questions is None and found != NUM_QUESTIONS:
        raise DataFileError(
            f"{where} holds {found} questions; TruthfulQA has {NUM_QUESTIONS}. The file is truncated or another "
            "revision: restore the original (see SOURCE.md beside it), or pass max_questions=N (--max_questions) "
            "to use the first N questions only."
        )
    if max_questions is not None and found < max_questions:
        raise DataFileError(
            f"{where} holds {found} questions, fewer than the {max_questions} asked for (max_questions); "
            f"TruthfulQA has {NUM_QUESTIONS}: restore the original file or ask for fewer questions."
        )


def _read_v1_refs(v1_path: Path, gen: list[GenItem], max_questions: int | None = None) -> dict[str, Refs]:
    """honest_llama's MC references: the Oct-2021 CSV with row 164 replaced by the v0/hub row ("Are all women
    women?") and row 247 (tarot) given the hub's question text without its trailing space."""
    df = _read_csv(v1_path)
    _check_count(len(df), str(v1_path), max_questions)
    rows = [
        GenItem(r["Type"], r["Category"], r["Question"], r["Best Answer"], tuple(a.strip() for a in r["Correct Answers"].split(";")),
                tuple(a.strip() for a in r["Incorrect Answers"].split(";")), r["Source"])
        for r in df.to_dict("records")
    ]
    # the v0 rows by question, not by index, so that a subset of the v0 CSV patches what it holds
    v0 = {g.question.strip(): g for g in gen}
    for i, question in _V1_PATCHED_ROWS.items():
        if len(rows) > i and question in v0:
            rows[i] = GenItem(**{**v0[question].__dict__, "question": question})
    return _refs_from_rows(rows)


def _read_local(mc_path: Path, gen_path: Path) -> tuple[list[MCItem], list[GenItem]]:
    try:
        raw = json.loads(mc_path.read_text(encoding="utf-8"))
        mc = [MCItem(r["question"], tuple(r["mc1_targets"].items()), tuple(r["mc2_targets"].items())) for r in raw]
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise FeatureFileError(f"{mc_path} is not a TruthfulQA mc_task.json: {e}") from None
    df = _read_csv(gen_path)
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


def load_truthfulqa(data_dir: str | os.PathLike | None = None, *, allow_hub: bool = True,
                    max_questions: int | None = None) -> TruthfulQA:
    """Load TruthfulQA: ``data_dir``, then ``$ITI_DATA_DIR``, then ``../shared/data``, then the hub.

    ``data_dir`` is a data root holding ``truthfulqa/mc_task.json`` and ``truthfulqa/TruthfulQA.csv``. Each file
    must hold all 817 questions (a cut or malformed file raises :class:`~iti.errors.DataFileError` naming it),
    unless ``max_questions=N`` asks for a subset: then the files need only hold the first N questions of the ``mc``
    order (in both files); what they hold is returned as is, and the ``refs`` of questions outside the subset
    may then be empty.
    """
    if max_questions is not None and int(max_questions) <= 0:
        raise ValueError(f"max_questions must be positive, got {max_questions}")
    search = data_search(data_dir)
    mc_path, gen_path = search.find(MC_FILE), search.find(GEN_FILE)
    if mc_path is not None and gen_path is not None and mc_path.parent == gen_path.parent:
        mc, gen = _read_local(mc_path, gen_path)
        origin = str(mc_path.parent)
    else:
        hub_error = "not tried (allow_hub=False)"
        hub: tuple[list[MCItem], list[GenItem]] | None = None
        if allow_hub:
            try:
                hub = _read_hub()
                origin = f"hub:{HUB_ID}"
            except Exception as e:  # network, missing dataset, ...: reported with the local misses below
                hub_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if hub is None:
            raise DataNotFoundError(
                "TruthfulQA not found. Looked for truthfulqa/mc_task.json and truthfulqa/TruthfulQA.csv in:\n"
                f"{search.describe('truthfulqa')}\n  then the Hugging Face hub ({HUB_ID}): {hub_error}\n"
                "Pass data_dir=/path/to/data (or --data_dir), or set ITI_DATA_DIR."
            )
        mc, gen = hub
    if origin.startswith("hub:"):
        _check_count(len(mc), f"the hub's {HUB_ID} multiple_choice split", max_questions)
        _check_count(len(gen), f"the hub's {HUB_ID} generation split", max_questions)
    else:
        assert mc_path is not None  # a local origin: found above
        _check_count(len(mc), str(mc_path), max_questions)
        _check_count(len(gen), str(gen_path), max_questions)
        if max_questions is not None:
            in_gen = {g.question.strip() for g in gen}
            missing = [i for i, item in enumerate(mc[: int(max_questions)]) if item.question.strip() not in in_gen]
            if missing:
                raise DataFileError(
                    f"{gen_path} lacks {len(missing)} of the first {max_questions} questions of {mc_path.name} "
                    f"(mc indices {missing[:10]}{' ...' if len(missing) > 10 else ''}); it holds {len(gen)} of "
                    f"{NUM_QUESTIONS} rows: restore the original file or ask for fewer questions."
                )
    by_question = {item.question.strip(): i for i, item in enumerate(mc)}
    try:
        mc_index_of_gen = tuple(by_question[g.question.strip()] for g in gen)
    except KeyError as e:
        raise FeatureFileError(f"TruthfulQA files at {origin} disagree: generation question {e} is not in mc_task.json") from None
    v1_path = search.find(V1_FILE)
    if v1_path is not None:
        refs_by_q, refs_origin = _read_v1_refs(v1_path, gen, max_questions), str(v1_path)
    else:  # the hub has only the v0 answers: close enough, and said in refs_origin
        refs_by_q, refs_origin = _refs_from_rows(gen), f"{origin} (v0 answers; {V1_FILE} not found)"
    try:
        refs = tuple(refs_by_q[item.question.strip()] for item in mc[:max_questions])
    except KeyError as e:
        raise FeatureFileError(f"{refs_origin}: no reference answers for question {e}") from None
    if max_questions is not None:  # questions outside the subset asked for: their references, where present
        refs += tuple(refs_by_q.get(item.question.strip(), Refs(item.question.strip(), "", (), ())) for item in mc[max_questions:])
    return TruthfulQA(tuple(mc), tuple(gen), mc_index_of_gen, origin, refs, refs_origin)
