"""The cost of an intervention on ordinary text: cross-entropy loss and KL(original || intervened).

honest_llama uses 100 texts of ``stas/openwebtext-10k`` (hub only), each cut to its first 128 tokens, with the
shift at every position. Offline, the default corpus here is the IMDB test sample shipped with the
faithfulness data (1,000 movie reviews, ``faithfulness/imdb/imdb_test_sample_1000.csv``); ``corpus="owt"``
uses the original (needs the hub). Texts are drawn with a seeded shuffle.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..architectures import model_device
from ..batching import pad_batch, pad_token_id
from ..errors import DataFileError, DataNotFoundError, EmptyInputError
from ..intervention import Intervention
from ..paths import data_search

IMDB_FILE = "faithfulness/imdb/imdb_test_sample_1000.csv"
IMDB_SIZE = 1000
OWT_HUB_ID = "stas/openwebtext-10k"


def load_neutral_texts(n: int = 100, *, seed: int = 0, corpus: str = "imdb", data_dir: str | os.PathLike | None = None) -> list[str]:
    """``n`` texts for CE/KL, shuffled with ``seed``."""
    if corpus == "owt":
        import datasets

        ds = datasets.load_dataset(OWT_HUB_ID)["train"].shuffle(seed=seed).select(range(n))
        return list(ds["text"])
    if corpus != "imdb":
        raise ValueError(f"unknown corpus {corpus!r}; choose imdb (offline) or owt (hub)")
    search = data_search(data_dir)
    path = search.find(IMDB_FILE)
    if path is None:
        raise DataNotFoundError(f"IMDB sample not found. Looked for {IMDB_FILE} in:\n{search.describe(IMDB_FILE)}\n"
                                "Pass data_dir, set ITI_DATA_DIR, or use corpus='owt' online.")
    try:
        texts = pd.read_csv(path, dtype=str, keep_default_na=False)["text"].tolist()
    except (pd.errors.ParserError, KeyError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path} is not a valid IMDB sample ({type(e).__name__}: {str(e).splitlines()[0]}); restore it "
                            "from its SOURCE.md") from None
    if len(texts) != IMDB_SIZE:
        raise DataFileError(f"{path} holds {len(texts)} reviews; the IMDB sample has {IMDB_SIZE} (truncated?): restore it from "
                            "its SOURCE.md")
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in order]


@dataclass
class LMCost:
    """Cost on neutral text: mean CE of the plain and intervened model (nats per token), mean KL, and KL per
    text; without an intervention ``ce`` equals ``ce_base`` and KL is 0."""
    ce_base: float
    ce: float
    kl: float
    per_text_kl: np.ndarray


def _per_text_ce(logp: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logp = logp[:, :-1].gather(2, ids[:, 1:, None]).squeeze(-1)
    m = mask[:, 1:].float()
    return -(logp * m).sum(1) / m.sum(1)


class NeutralCost:
    """CE and KL of interventions on fixed texts, with the plain model's log-probs computed once: an alpha search
    (:func:`~iti.truthfulqa.budget.alpha_for_budget`) then costs one intervened forward per step, not two. Keeps
    ``texts x max_tokens x vocabulary`` floats (20 x 128 x 49,152 for SmolLM2: 0.5 GB), so meant for the few
    search texts; :func:`ce_and_kl` measures once without keeping them."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, max_tokens: int = 128,
                 batch_size: int = 8, keep_base: bool = True) -> None:
        if len(texts) == 0:
            raise EmptyInputError("no texts for CE/KL")
        self.model = model
        device = model_device(model)
        pad = pad_token_id(tokenizer)
        encoded = [list(e[:max_tokens]) for e in tokenizer(list(texts))["input_ids"]]
        self.batches = []
        for start in range(0, len(encoded), batch_size):
            ids, mask = pad_batch(encoded[start : start + batch_size], pad)
            self.batches.append((ids.to(device), mask.to(device)))
        self.base_logp: list[torch.Tensor] | None = None
        if keep_base:
            self.base_logp = [self._logp(ids, mask) for ids, mask in self.batches]

    def _logp(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)

    def __call__(self, intervention: Intervention | None) -> LMCost:
        """The cost of ``intervention`` (shift at all positions) against the plain model on the texts."""
        ce_base, ce_iti, kls = [], [], []
        for b, (ids, mask) in enumerate(self.batches):
            base = self.base_logp[b] if self.base_logp is not None else self._logp(ids, mask)
            ce_base.append(_per_text_ce(base, ids, mask).cpu())
            if intervention is None:
                continue
            with intervention.applied(self.model, positions="all"):
                edited = self._logp(ids, mask)
            ce_iti.append(_per_text_ce(edited, ids, mask).cpu())
            kls.append(_per_text_kl(base, edited, mask).cpu())
        base_ce = float(torch.cat(ce_base).mean())
        if intervention is None:
            return LMCost(base_ce, base_ce, 0.0, np.zeros(len(torch.cat(ce_base))))
        per_text = torch.cat(kls).numpy()
        return LMCost(base_ce, float(torch.cat(ce_iti).mean()), float(per_text.mean()), per_text)


def _per_text_kl(base_logp: torch.Tensor, edited_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(original || intervened), probabilities clamped at 1e-10 as honest_llama does."""
    p = base_logp.exp().clamp_min(1e-10)
    q = edited_logp.exp().clamp_min(1e-10)
    kl_tok = (p * (p.log() - q.log())).sum(-1)  # [b, seq]
    m = mask.float()
    return (kl_tok * m).sum(1) / m.sum(1)


def ce_and_kl(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    intervention: Intervention | None,
    *,
    max_tokens: int = 128,
    batch_size: int = 8,
) -> LMCost:
    """Mean per-text CE of the plain and intervened model (shift at all positions), and the mean over texts of
    the per-token KL(original || intervened) summed over the vocabulary (probabilities clamped at 1e-10)."""
    cost = NeutralCost(model, tokenizer, texts, max_tokens=max_tokens, batch_size=batch_size, keep_base=False)
    return cost(intervention)
