"""The figures of a SparseCBM run: the subnetworks (mask sparsity per concept and weight, pairwise overlap), the
sparsity-accuracy curve, and token attributions per concept for a few test reviews."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_save_figure
from .cebab import ASPECTS


def _short(name: str) -> str:
    """``layers.0.self_attn.q_proj.weight`` -> ``0.q``."""
    parts = name.split(".")
    return f"{parts[1]}.{parts[-2].replace('_proj', '')}" if len(parts) > 2 and parts[0] == "layers" else name


def _footer(fig, r: dict[str, Any]) -> None:
    fig.text(0.995, 0.005, f"{r['config']['model']}, {r['compute_dtype']}, CPU; seed {r['config']['seed']}",
             ha="right", va="bottom", fontsize=7, color="0.4")


def plot_masks(r: dict[str, Any], out: Path) -> Path:
    """masks.png: for each masked weight, the share of its entries kept by 0, 1, ..., all concepts (left: a shared
    core against concept-specific weights; every matrix has the same sparsity per concept, as SparseCBM prunes), and
    the Jaccard overlap of the concepts' kept weights (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = r["masks"]["names"]
    kept = np.array([r["masks"]["kept_by_concepts"][n] for n in names])  # (weights, n_concepts + 1)
    overlap = np.array(r["masks"]["overlap"])
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.55 * len(names) + 4.5, 3.8),
                             gridspec_kw={"width_ratios": [max(len(names), 3), 4]})
    bottom = np.zeros(len(names))
    colors = plt.get_cmap("viridis")(np.linspace(0, 1, kept.shape[1]))
    for k in range(kept.shape[1]):
        axes[0].bar(range(len(names)), kept[:, k], bottom=bottom, color=colors[k], label=f"kept by {k}")
        bottom += kept[:, k]
    axes[0].set_xticks(range(len(names)), [_short(n) for n in names], rotation=60, fontsize=8)
    axes[0].set_ylabel("share of the weight's entries")
    sparsity = np.mean(list(r["masks"]["mean_sparsity"].values()))
    axes[0].set_title(f"entries kept by how many of the {len(ASPECTS)} concepts (sparsity {sparsity:.2f} each)", fontsize=10)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    im = axes[1].imshow(overlap, cmap="viridis", vmin=0, vmax=1)
    for i in range(len(ASPECTS)):
        for j in range(len(ASPECTS)):
            axes[1].text(j, i, f"{overlap[i, j]:.2f}", ha="center", va="center", color="w" if overlap[i, j] < 0.6 else "k",
                         fontsize=9)
    axes[1].set_xticks(range(len(ASPECTS)), ASPECTS, rotation=30)
    axes[1].set_yticks(range(len(ASPECTS)), ASPECTS)
    axes[1].set_title("Jaccard overlap of kept weights", fontsize=10)
    fig.colorbar(im, ax=axes[1], fraction=0.04)
    _footer(fig, r)
    fig.tight_layout()
    return atomic_save_figure(fig, out / "masks.png")


def plot_sparsity_curve(r: dict[str, Any], out: Path) -> Path:
    """sparsity_accuracy.png: test task and concept accuracy of the SparseCBM models against their final sparsity,
    with the dense joint CBM (no masks) at 0 where it was trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((m for m in r["models"] if m["kind"] == "sparsecbm"), key=lambda m: m["sparsity"])
    dense = next((m for m in r["models"] if m["kind"] == "dense"), None)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label, color in (("task_accuracy", "task (rating) accuracy", "C0"), ("concept_accuracy", "concept accuracy", "C1")):
        xs = [m["sparsity"] for m in rows]
        ys = [m["test"][key] for m in rows]
        ax.plot(xs, ys, marker="o", color=color, label=f"SparseCBM, {label}")
        if dense is not None:
            ax.scatter([0.0], [dense["test"][key]], marker="s", color=color, label=f"dense joint CBM, {label}")
    ax.set_xlabel("final sparsity of each concept's subnetwork")
    ax.set_ylabel("CEBaB test accuracy")
    ax.set_xlim(-0.05, 1.0)
    ax.legend(fontsize=7)
    _footer(fig, r)
    fig.tight_layout()
    return atomic_save_figure(fig, out / "sparsity_accuracy.png")


def plot_attributions(attributions: list[dict[str, Any]], r: dict[str, Any], out: Path) -> Path:
    """attributions.png: each shown review once per concept, every token shaded by its gradient x input on the
    concept's predicted-class logit (red raises it, blue lowers it; scaled per line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    cmap = colormaps["coolwarm"]
    lines = [(row, a) for row in attributions for a in ASPECTS]
    fig = plt.figure(figsize=(12, 0.42 * (len(lines) + 0.6 * len(attributions)) + 0.8))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    width = fig.get_figwidth() * fig.dpi
    y = 1 - 0.35 / fig.get_figheight()
    step = 0.42 / fig.get_figheight()
    for k, (row, aspect) in enumerate(lines):
        c = row["concepts"][aspect]
        values = np.array(c["attribution"])
        scale = np.abs(values).max() or 1.0
        head = ax.text(0.005, y, f"{aspect}: {c['predicted']} (gold {row['gold'][aspect]})", fontsize=8, fontweight="bold",
                       va="center", transform=ax.transAxes)
        x = 0.005 + (head.get_window_extent(renderer).width + 8) / width
        for token, v in zip(row["tokens"], values):
            shown = token.replace("\n", " ").replace("$", r"\$")
            if x > 0.97:
                ax.text(x, y, "…", fontsize=8, va="center", transform=ax.transAxes)
                break
            t = ax.text(x, y, shown, fontsize=8, va="center", transform=ax.transAxes, family="monospace",
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": cmap(0.5 + 0.5 * v / scale), "edgecolor": "none"})
            x += (t.get_window_extent(renderer).width + 2) / width
        y -= step * (1.6 if (k + 1) % len(ASPECTS) == 0 else 1.0)
    _footer(fig, r)
    return atomic_save_figure(fig, out / "attributions.png")


def plot_sparsecbm(r: dict[str, Any], out: Path) -> list[Path]:
    """Every figure of a finished run into ``out``."""
    written = [plot_masks(r, out), plot_sparsity_curve(r, out)]
    path = out / "attributions.json"
    if path.is_file():
        written.append(plot_attributions(json.loads(path.read_text()), r, out))
    return written
