"""The demo's one-line reading of its own table is computed from the CIs, not a fixed sentence."""
from iti.truthfulqa.demo import read_table


def _row(name, mean, lo, hi, alpha=15.0, k=48, seed=42):
    return {"name": name, "alpha": alpha, "num_heads": k, "seed": seed, "dMC2": {"mean": mean, "ci": [lo, hi]}}


def _summary(*rows, n=40):
    return {"num_questions": n, "rows": [{"name": "baseline", "alpha": 0.0, "num_heads": 0, "seed": 42}, *rows]}


def test_overlapping_intervals_say_the_subset_cannot_tell():
    text = read_table(_summary(_row("ITI", -0.007, -0.13, 0.12), _row("random heads", 0.01, -0.10, 0.12),
                               _row("random direction", 0.032, -0.09, 0.15)))
    assert text.startswith("40 questions give 95% CIs of about ±0.12 on ΔMC2")
    assert "ITI's interval includes 0" in text and "cannot tell ITI from its controls" in text
    assert "random direction +0.032 [-0.090, +0.150]" in text and "validation/results.md" in text


def test_separated_intervals_are_reported_as_such():
    text = read_table(_summary(_row("ITI", 0.30, 0.20, 0.40), _row("random heads", 0.01, -0.10, 0.12),
                               _row("random direction", 0.02, -0.09, 0.15), n=300))
    assert "lies above 0" in text and "above the random heads and random direction controls" in text
    assert "separates from its controls" in text and "±0.12" in text


def test_mixed_case_and_rows_of_other_settings_are_left_out():
    text = read_table(_summary(_row("ITI", 0.10, 0.05, 0.15), _row("random heads", 0.0, -0.02, 0.02),
                               _row("random direction", 0.09, 0.04, 0.14), _row("random heads", 0.5, 0.4, 0.6, alpha=5.0)))
    assert "overlaps the random direction control" in text and "above the random heads control" in text
    assert "+0.500" not in text and "cannot tell" in text


def test_no_iti_row():
    assert read_table(_summary()) == "no ITI row finished: nothing to read."
