"""Concept-level intervention: steer one aspect of a review toward a goal class and compare the effect on the
rating with the effect of the human edit that did the same in text (CEBaB's counterfactual pairs).

The shift is applied at the prompt's last token only, so everything before it is the same with or without it: each
review is encoded once up to its last token, and each intervention re-runs that one token on the cached prefix.
What is read there: the heads (for the bottleneck's concept and rating probes) and the model's own next-token
distribution over the rating digits.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..architectures import model_device, model_layout
from ..batching import batch_inputs, forward_kwargs, pad_token_id, plan_batches
from ..directions import random_directions, unit
from ..fitting import fit_intervention
from ..hooks import HeadTrace
from ..intervention import Intervention
from ..kv_cache import fork_cache, returned_cache, with_cache
from ..oom import AdaptiveBatchSize
from .bottleneck import SparseConceptBottleneck, review_prompt
from .cebab import ASPECTS, CONCEPT_CLASSES, EditPair

VARIANTS = ("concept", "random_direction", "wrong_concept")


def rating_token_ids(tokenizer: Any) -> list[int]:
    """One token per star rating 1..5 as the model would write it after "Rating (1-5):" (" 4", else "4")."""
    for fmt in (" {}", "{}"):
        ids = [tokenizer(fmt.format(i), add_special_tokens=False)["input_ids"] for i in range(1, 6)]
        if all(len(x) == 1 for x in ids) and len({x[0] for x in ids}) == 5:
            return [x[0] for x in ids]
    raise ValueError("the tokenizer has no single-token digits 1-5; the model's own rating cannot be read")


def zero_shot_rating_probabilities(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16,
                                   progress: bool = True) -> np.ndarray:
    """``[N, 5]`` the model's own p(rating = 1..5) at the end of each prompt (next-token logits restricted to the
    digit tokens): the zero-shot rating the bottleneck is compared with. Left-padded, length-sorted batches."""
    digits = rating_token_ids(tokenizer)
    encoded = [list(e) for e in tokenizer(list(prompts))["input_ids"]]
    out = np.zeros((len(encoded), 5))
    device, pad, kwargs = model_device(model), pad_token_id(tokenizer), forward_kwargs(model)
    sizes = AdaptiveBatchSize(batch_size, what="review")

    def run(part: np.ndarray) -> None:
        logits = model(**batch_inputs([encoded[i] for i in part], pad, device, padding_side="left"), **kwargs).logits
        out[part] = logits[:, -1].float().cpu()[:, digits].softmax(-1).numpy()

    with torch.inference_mode():
        for idx in tqdm(plan_batches([len(e) for e in encoded], batch_size), desc="zero-shot rating", unit="batch",
                        disable=not progress):
            sizes.run(idx, run)
    return out


class LastTokenReader:
    """Encode a prompt once up to its last token; re-run that token under any intervention."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.layout = model_layout(model)
        self.digits = torch.tensor(rating_token_ids(tokenizer))

    def prefix(self, prompt: str):
        """Run the prompt without its last token, keeping the KV cache; the returned (ids, cache) is the state
        :meth:`read` re-runs the last token on."""
        ids = torch.tensor([self.tokenizer(prompt)["input_ids"]], device=model_device(self.model))
        with torch.inference_mode():
            out = self.model(input_ids=ids[:, :-1], use_cache=True)
        return ids, returned_cache(out)

    def read(self, state, intervention: Intervention | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Heads [L, H, D] at the last token (after any shift) and p(rating = 1..5) from the next-token logits."""
        ids, past = state
        n = ids.shape[1] - 1
        ctx = intervention.applied(self.model, positions="all") if intervention is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx, HeadTrace(self.model, positions="all", layout=self.layout) as trace:
            # on a fork of the prefix's cache (iti.kv_cache, as MC scoring and greedy answers): the prefix stays as
            # encoded for the next read, whatever happens in this one
            out = self.model(input_ids=ids[:, n:], **with_cache(self.model, fork_cache(past)), use_cache=True)
            heads = trace.stacked_heads()[0, -1].float().cpu().numpy()
        probs = out.logits[0, -1].float().cpu()[self.digits].softmax(-1).numpy()
        return heads, probs


@dataclass
class ConceptDirections:
    """Per (aspect, goal): the aspect's selected heads, unit mass-mean directions toward the goal, projection stds."""

    heads: dict[str, list[tuple[int, int]]]
    directions: dict[tuple[str, str], np.ndarray]
    stds: dict[tuple[str, str], np.ndarray]

    @classmethod
    def fit(cls, X: np.ndarray, concepts: np.ndarray, heads: dict[str, list[tuple[int, int]]]) -> ConceptDirections:
        """Per aspect and goal class: unit mass-mean directions (goal class minus the other classes) on the aspect's
        heads, and the std of ``X`` projected on them."""
        dirs, stds = {}, {}
        for j, aspect in enumerate(ASPECTS):
            for c, goal in enumerate(CONCEPT_CLASSES):
                fitted = fit_intervention(X, (concepts[:, j] == c).astype(int), selector=heads[aspect], method="mass_mean",
                                          alpha=1.0)
                order = [fitted.heads.index((int(l), int(h))) for l, h in heads[aspect]]  # back to the aspect's head order
                dirs[(aspect, goal)], stds[(aspect, goal)] = fitted.directions[order], fitted.stds[order]
        return cls(heads, dirs, stds)

    def intervention(self, model: torch.nn.Module, aspect: str, goal: str, alpha: float, variant: str = "concept",
                     seed: int = 0) -> Intervention:
        """``concept``: this aspect's heads toward ``goal``; ``random_direction``: same heads and scale, random unit
        directions; ``wrong_concept``: the next aspect's heads and directions toward the same goal."""
        g = model_layout(model).geometry
        if variant == "wrong_concept":
            aspect = ASPECTS[(ASPECTS.index(aspect) + 1) % len(ASPECTS)]
        heads, d, s = self.heads[aspect], self.directions[(aspect, goal)], self.stds[(aspect, goal)]
        if variant == "random_direction":
            d = unit(random_directions(len(heads), g.head_dim, seed))
        elif variant not in ("concept", "wrong_concept"):
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        return Intervention(heads, d, s, alpha, "concepts", g, meta={"aspect": aspect, "goal": goal, "variant": variant})


def steer_pairs(model: torch.nn.Module, tokenizer: Any, bottleneck: SparseConceptBottleneck, directions: ConceptDirections,
                pairs: Sequence[EditPair], alphas: Sequence[float], variants: Sequence[str] = VARIANTS, seed: int = 0,
                progress: bool = True) -> list[dict]:
    """One record per (pair, alpha, variant): bottleneck and model rating changes next to the human change."""
    reader = LastTokenReader(model, tokenizer)
    by_original: dict[str, list[EditPair]] = defaultdict(list)
    for p in pairs:
        by_original[p.original.id].append(p)
    stars = np.arange(1, 6)
    records = []
    for group in tqdm(by_original.values(), desc="steering", unit="review", disable=not progress):
        state = reader.prefix(review_prompt(group[0].original.text))
        heads0, model0 = reader.read(state)
        cp0 = bottleneck.concept_probabilities(heads0[None])[0]
        bn0 = float(bottleneck.expected_rating(heads0[None])[0])
        for p in group:
            a, goal = ASPECTS.index(p.aspect), CONCEPT_CLASSES.index(p.goal)
            for alpha in alphas:
                for variant in variants:
                    inter = directions.intervention(model, p.aspect, p.goal, alpha, variant, seed)
                    heads1, model1 = reader.read(state, inter)
                    cp1 = bottleneck.concept_probabilities(heads1[None])[0]
                    others = [j for j in range(len(ASPECTS)) if j != a]
                    records.append({
                        "id": p.edited.id, "aspect": p.aspect, "goal": p.goal, "alpha": float(alpha), "variant": variant,
                        "human_delta": p.rating_change,
                        "bottleneck_delta": float(bottleneck.expected_rating(heads1[None])[0]) - bn0,
                        "model_delta": float(model1 @ stars - model0 @ stars),
                        "goal_prob_delta": float(cp1[a, goal] - cp0[a, goal]),
                        "spillover": float(np.abs(cp1[others] - cp0[others]).sum(-1).mean() / 2),
                    })
    return records


def summarize_steering(records: Sequence[dict]) -> list[dict]:
    """Per (alpha, variant): sign agreement with the human change (pairs where it is non-zero), Pearson r, mean
    absolute error of the rating change, the goal concept's probability change and the spill-over."""
    groups: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["alpha"], r["variant"])].append(r)
    out = []
    for (alpha, variant), rs in sorted(groups.items()):
        human = np.array([r["human_delta"] for r in rs], dtype=float)
        row = {"alpha": alpha, "variant": variant, "pairs": len(rs)}
        for who in ("bottleneck", "model"):
            d = np.array([r[f"{who}_delta"] for r in rs])
            moved = human != 0
            row[f"{who}_sign_agreement"] = float((np.sign(d[moved]) == np.sign(human[moved])).mean()) if moved.any() else float("nan")
            row[f"{who}_pearson"] = float(np.corrcoef(d, human)[0, 1]) if d.std() > 0 and human.std() > 0 else float("nan")
            row[f"{who}_mae"] = float(np.abs(d - human).mean())
            row[f"{who}_mean_delta"] = float(d.mean())
        row["goal_prob_delta"] = float(np.mean([r["goal_prob_delta"] for r in rs]))
        row["spillover"] = float(np.mean([r["spillover"] for r in rs]))
        out.append(row)
    return out
