"""Probe training: the batched all-head probes vs a per-head scikit-learn loop on the same SmolLM2 features."""
from __future__ import annotations

import time

import numpy as np

from iti import build_prompt_set, load_model, write_features
from iti.features import load_features, output_name
from iti.paths import features_dir
from iti.probes import HeadProbes, split_questions

from .common import BenchResult, Row, bench_main, stats


def _features(max_questions: int | None):
    """The tqa_mc2 features from features/ (collected here if missing)."""
    out = features_dir() if max_questions is None else features_dir() / "bench"
    path = out / output_name("smollm2-135m", "tqa_mc2")
    if not (path / "manifest.json").exists():
        model, tok = load_model("smollm2-135m")
        write_features(model, tok, build_prompt_set("tqa_mc2", max_questions=max_questions), out, model_name="smollm2-135m")
    return load_features(path)


def run(quick: bool = False, repeats: int = 3) -> BenchResult:
    from sklearn.linear_model import LogisticRegression

    fs = _features(12 if quick else None)
    X = np.asarray(fs.head_wise, dtype=np.float32)
    train, val = split_questions(fs.question_ids, 0.2, seed=42)
    tr, va = np.isin(fs.question_ids, train), np.isin(fs.question_ids, val)
    L, H = X.shape[1], X.shape[2]
    ours_t = []
    for _ in range(repeats if not quick else 1):
        t = time.perf_counter()
        acc = HeadProbes().fit(X[tr], fs.labels[tr]).score(X[va], fs.labels[va])
        ours_t.append(time.perf_counter() - t)
    t = time.perf_counter()
    sk = np.zeros((L, H))
    for l in range(L):
        for h in range(H):
            clf = LogisticRegression(random_state=42, max_iter=1000).fit(X[tr][:, l, h], fs.labels[tr])
            sk[l, h] = (clf.predict(X[va][:, l, h]) == fs.labels[va]).mean()
    sk_t = time.perf_counter() - t
    diff = float(np.abs(sk - acc).mean())
    ours = stats(ours_t)["median"]
    r = BenchResult("probes", f"Probe training ({L}x{H} heads, {int(tr.sum())} train rows of tqa_mc2, SmolLM2-135M features)",
                    "python -m benchmarks.bench_probes")
    r.rows.append(Row("all heads at once (batched Newton) vs per-head sklearn LogisticRegression(max_iter=1000)", f"{ours:.2f} s",
                      f"{sk_t:.2f} s", sk_t / ours, ">= 20x", sk_t / ours >= 20))
    r.rows.append(Row("validation accuracy, mean |ours - sklearn| over heads", f"{diff * 100:.2f} points", "0", 1.0, "< 1 point", diff < 0.01))
    r.data = {"ours_s": stats(ours_t), "sklearn_s": sk_t, "mean_abs_acc_diff": diff, "max_abs_acc_diff": float(np.abs(sk - acc).max()),
              "mean_acc_ours": float(acc.mean()), "mean_acc_sklearn": float(sk.mean())}
    return r


def main(argv=None) -> None:
    bench_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
