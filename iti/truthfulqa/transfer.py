"""The ITI paper's transfer sets (its Table 4): NQ-open and TriviaQA questions, each with gold answers and one
GPT-4 written "most plausible sounding but false" answer (hub ``OamPatel/iti_nq_open_val`` and
``OamPatel/iti_trivia_qa_val``, read by honest_llama's ``load_nq`` / ``load_triviaqa``).

The protocol (the paper, section 5.3; no public code runs it, see docs/architecture.md): a TruthfulQA-fitted
intervention, unchanged, scores two candidates per question, the truthful answer and the false one, in honest_llama's
MC prompt (instruction + QA primer + ``"\\n\\nQ: " + question + "\\nA:"``, answers closed with a period as TruthfulQA's
``format_best`` / ``split_multi_answer`` do); a question counts when the truthful answer's summed log-probability is
strictly higher (TruthfulQA's MC1, "if the truthful answer ranks first"). The truthful answer is the first gold answer
(the loaders keep the hub's list in its order; the paper says "one truthful answer"). Where the false answer is itself
a gold answer (241 NQ and 1,330 TriviaQA rows of the shipped copies), the comparison measures nothing: those rows are
counted apart and left out of the headline.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFileError, DataNotFoundError, EmptyInputError
from ..paths import data_search
from .data import close_answer
from .mc_scoring import tokenize_choices
from .prompts import MCQuestion


@dataclass(frozen=True)
class TransferSet:
    """Where one transfer set lives: the local file (relative to a data root) and the hub id."""

    name: str
    relative: str
    hub_id: str
    title: str


TRANSFER_SETS: dict[str, TransferSet] = {
    "nq_open": TransferSet("nq_open", "transfer/nq_open/iti_nq_open_val.reconstructed.jsonl", "OamPatel/iti_nq_open_val",
                           "Natural Questions"),
    "trivia_qa": TransferSet("trivia_qa", "transfer/trivia_qa/iti_trivia_qa_val.reconstructed.jsonl",
                             "OamPatel/iti_trivia_qa_val", "TriviaQA"),
}


@dataclass(frozen=True)
class TransferItem:
    """One question: its gold answers in the hub's order and the one false answer."""

    question: str
    answers: tuple[str, ...]
    false_answer: str

    @property
    def false_is_gold(self) -> bool:
        """Whether the "false" answer is one of the gold answers (compared stripped, case-insensitive)."""
        false = self.false_answer.strip().lower()
        return any(a.strip().lower() == false for a in self.answers)


@dataclass(frozen=True)
class TransferData:
    """A transfer set as read, and where from."""

    name: str
    items: tuple[TransferItem, ...]
    origin: str

    def __len__(self) -> int:
        return len(self.items)

    @cached_property
    def sha256(self) -> str:
        """Content hash of the items (what a stored result was computed on)."""
        from ..fingerprint import settings_fingerprint

        return settings_fingerprint({"name": self.name, "items": [i.__dict__ for i in self.items]})


def _item(name: str, row: dict, where: str) -> TransferItem:
    answer = row.get("answer")
    if name == "trivia_qa" and isinstance(answer, dict):  # load_triviaqa reads answer['aliases'] only
        answer = answer.get("aliases")
    if not isinstance(row.get("question"), str) or not isinstance(row.get("false_answer"), str) or not isinstance(answer, list) \
            or not answer or not all(isinstance(a, str) for a in answer):
        shape = "answer: [str, ...]" if name == "nq_open" else "answer: {aliases: [str, ...]}"
        raise DataFileError(f"{where}: not a {TRANSFER_SETS[name].hub_id} row (question: str, {shape}, false_answer: str), "
                            f"got keys {sorted(row)}")
    return TransferItem(row["question"], tuple(answer), row["false_answer"])


def _read_file(name: str, path: Path) -> tuple[TransferItem, ...]:
    """A JSON-lines file (one row per line) or a JSON list of rows."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path} is not UTF-8 text ({e.reason}): restore it (see SOURCE.md beside it)") from None
    rows: list[tuple[dict, str]] = []
    if text.lstrip().startswith("["):
        try:
            rows = [(r, f"{path} row {i}") for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): truncated or edited?") from None
    else:
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): a question may hold U+0085 (NEL)
            if not line.strip():
                continue
            try:
                rows.append((json.loads(line), f"{path} line {n}"))
            except json.JSONDecodeError as e:
                raise DataFileError(f"{path} line {n} is not JSON ({e.msg}): truncated or edited? Restore it (see "
                                    "SOURCE.md beside it)") from None
    if not rows:
        raise EmptyInputError(f"{path} holds no rows")
    return tuple(_item(name, r if isinstance(r, dict) else {}, where) for r, where in rows)


def load_transfer(name: str, data_dir: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None,
                  allow_hub: bool = True) -> TransferData:
    """One transfer set (``nq_open`` or ``trivia_qa``): ``path`` (a file), else ``transfer/...`` under ``data_dir``,
    ``$ITI_DATA_DIR`` and ``../shared/data``, else the hub id honest_llama reads."""
    if name not in TRANSFER_SETS:
        raise DataNotFoundError(f"unknown transfer set {name!r}; choose one of {', '.join(TRANSFER_SETS)}")
    spec = TRANSFER_SETS[name]
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataNotFoundError(f"{name}: no file {p}")
        return TransferData(name, _read_file(name, p), str(p))
    search = data_search(data_dir)
    found = search.find(spec.relative)
    if found is not None:
        return TransferData(name, _read_file(name, found), str(found))
    hub_error = "not tried (allow_hub=False)"
    if allow_hub:
        try:
            import datasets

            rows = datasets.load_dataset(spec.hub_id)["validation"]
            return TransferData(name, tuple(_item(name, dict(r), f"hub:{spec.hub_id} row {i}") for i, r in enumerate(rows)),
                                f"hub:{spec.hub_id}")
        except DataFileError:
            raise
        except Exception as e:  # offline, or the dataset is gone: said with the local misses
            hub_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise DataNotFoundError(f"{spec.title} ({name}) not found. Looked for {spec.relative} in:\n{search.describe(spec.relative)}\n"
                            f"  then the Hugging Face hub ({spec.hub_id}): {hub_error}\n"
                            "Pass --data_dir (a data root holding transfer/), or set ITI_DATA_DIR.")


def transfer_questions(data: TransferData, prefix: str, indices=None) -> list[MCQuestion]:
    """The two-candidate MC questions in honest_llama's MC format: ``prefix + "\\n\\nQ: " + question + "\\nA:"``, the first
    gold answer (index 0, true) against the false answer (index 1), both closed with a period and after a space."""
    rows = range(len(data)) if indices is None else indices
    out = []
    for i in rows:
        item = data.items[int(i)]
        context = prefix + "\n\nQ: " + item.question + "\nA:"
        out.append(MCQuestion(int(i), context, (" " + close_answer(item.answers[0]), " " + close_answer(item.false_answer)),
                              (0,), (1,), 0))
    return out


#: the token-count classes of the transfer tables: the gold answer has more tokens than the false one, as many, fewer
LENGTH_CLASSES = {"more": 1, "equal": 0, "fewer": -1}


def length_order(tokenizer: Any, questions: Sequence[MCQuestion]) -> np.ndarray:
    """Per two-candidate question, the sign of (gold answer's tokens - false answer's tokens), the tokens as MC scoring
    splits them (:data:`LENGTH_CLASSES`). Why: a summed log-probability favours the candidate with fewer tokens, so
    accuracy is read apart for each class."""
    _, conts = tokenize_choices(tokenizer, questions)
    return np.array([int(np.sign(len(c[0]) - len(c[1]))) for c in conts], dtype=int)
