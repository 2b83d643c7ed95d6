"""Pick the intervened arm's strength so that the model still does the tasks: the first-answer parse rate.

A shift strong enough to move TruthfulQA can stop a small model from following the tasks' instructions; then the
intervened arm has no correctly classified samples and no faithfulness test has power. So before the reported run,
the classification prompts of a *development* subset (the samples right after the reported ones in the same seeded
order, never reported) go through the plain model and through the intervention at each candidate alpha, smallest
first; the chosen alpha is the largest one up to which every candidate keeps every data set's parse rate within
``max_gap`` of the plain model's. The prompts are the ones the tasks send, so these answers land in the generation
cache and cost nothing if asked again.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import EmptyInputError, InvalidOptionError
from .datasets import Sample
from .generate import CachedGenerator, GenerationSettings
from .prompts import PromptOptions
from .tasks import run_task


@dataclass
class StrengthTrial:
    """One candidate alpha on the development subset: parsed first answers per data set and the gap to plain
    (plain's parse rate minus this one's, in points of 1)."""

    alpha: float
    parsed: dict[str, int]
    gap: dict[str, float]
    within: bool


@dataclass
class StrengthCalibration:
    """The development subset (per data set: first and last sample position in the seeded order), the plain
    model's parsed counts, every trial in the order run, and the chosen alpha (None: no candidate qualified)."""

    max_gap: float
    dev_range: dict[str, tuple[int, int]]
    total: dict[str, int]
    plain: dict[str, int]
    trials: list[StrengthTrial] = field(default_factory=list)
    chosen: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (tuples become lists)."""
        d = asdict(self)
        d["dev_range"] = {k: list(v) for k, v in self.dev_range.items()}
        return d


def development_samples(samples: Sequence[Sample], reported: int | None, size: int, dataset: str) -> tuple[list[Sample], tuple[int, int]]:
    """The ``size`` samples after the first ``reported`` ones (fewer if the data set ends), and their positions."""
    if reported is None:
        raise EmptyInputError(f"{dataset}: every sample is reported (--max_samples 0), so none is left for calibration; "
                              "give --max_samples N")
    check_dev_samples(dataset, len(samples), reported, size)
    dev = list(samples[reported : reported + size])
    return dev, (reported, reported + len(dev) - 1)


def check_dev_samples(dataset: str, total: int, reported: int, size: int) -> None:
    """Refuse ``--dev_samples`` beyond the ``total - reported`` samples left after the reported ones (naming that
    maximum), and a data set with none left, instead of calibrating on fewer samples than asked."""
    left = total - reported
    if left <= 0:
        raise EmptyInputError(f"{dataset}: no sample left for calibration after the first {reported} reported ones "
                              f"(the data set has {total}); lower --max_samples")
    if size > left:
        raise InvalidOptionError(f"--dev_samples: at most {left} for {dataset} (its {total} samples less the first "
                                 f"{reported} reported ones, --max_samples), got {size}")


def parsed_first_answers(generator: CachedGenerator, samples: Sequence[Sample], render: Callable[[str], str],
                         opts: PromptOptions, settings: GenerationSettings, progress: bool) -> int:
    """How many of the samples' classification answers the protocol's parser reads."""
    results = run_task("classify", samples, generator, render, opts, settings, settings, progress)
    return sum(r.predict is not None for r in results)


def calibrate_strength(plain: CachedGenerator, intervened_at: Callable[[float], CachedGenerator],
                       dev: Mapping[str, list[Sample]], dev_range: Mapping[str, tuple[int, int]],
                       render: Callable[[str], str], opts: PromptOptions, settings: GenerationSettings,
                       candidates: Sequence[float], *, max_gap: float = 0.10, progress: bool = True,
                       log: Callable[[str], None] = print) -> StrengthCalibration:
    """Run the candidates smallest first and stop at the first one whose parse rate on some data set is more than
    ``max_gap`` away from plain's; the chosen alpha is the largest one before it."""
    total = {name: len(s) for name, s in dev.items()}
    cal = StrengthCalibration(max_gap=max_gap, dev_range=dict(dev_range), total=total,
                              plain={name: parsed_first_answers(plain, s, render, opts, settings, progress) for name, s in dev.items()})
    log("[calibrate] plain: " + ", ".join(f"{n} {cal.plain[n]}/{total[n]}" for n in dev))
    for alpha in sorted(candidates):
        gen = intervened_at(alpha)
        parsed = {name: parsed_first_answers(gen, s, render, opts, settings, progress) for name, s in dev.items()}
        gap = {n: (cal.plain[n] - parsed[n]) / total[n] for n in dev}
        trial = StrengthTrial(alpha=alpha, parsed=parsed, gap=gap, within=all(abs(g) <= max_gap + 1e-12 for g in gap.values()))
        cal.trials.append(trial)
        log(f"[calibrate] alpha {alpha:g}: " + ", ".join(f"{n} {parsed[n]}/{total[n]}" for n in dev)
            + ("" if trial.within else f"  (more than {max_gap * 100:g} points from plain: stop)"))
        if not trial.within:
            break
        cal.chosen = alpha
    return cal


def calibration_markdown(cal: StrengthCalibration | Mapping[str, Any]) -> str:
    """The parse-rate table: plain and each candidate, parsed / total per data set, the chosen row marked."""
    c = cal.to_dict() if isinstance(cal, StrengthCalibration) else dict(cal)
    names = list(c["total"])
    head = "| arm | " + " | ".join(f"{n} (samples {c['dev_range'][n][0]}-{c['dev_range'][n][1]})" for n in names) + " | within |"
    lines = [head, "|---|" + "---|" * (len(names) + 1)]
    lines.append("| plain | " + " | ".join(f"{c['plain'][n]}/{c['total'][n]}" for n in names) + " |  |")
    for t in c["trials"]:
        mark = " (chosen)" if c["chosen"] is not None and t["alpha"] == c["chosen"] else ""
        lines.append(f"| alpha {t['alpha']:g}{mark} | "
                     + " | ".join(f"{t['parsed'][n]}/{c['total'][n]} ({-t['gap'][n] * 100:+.0f})" for n in names)
                     + f" | {'yes' if t['within'] else 'no'} |")
    return "\n".join(lines) + "\n"
