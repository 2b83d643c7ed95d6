"""One fold of honest_llama's validate_2fold: probes on the fold's training questions, then an intervention, both
through the library's one recipe (:func:`iti.directions.fit_head_probes`, :func:`iti.fitting.fit_intervention`)."""
from __future__ import annotations

import numpy as np

from ..architectures import HeadGeometry
from ..directions import ProbeFit, fit_head_probes
from ..errors import GeometryMismatchError, InvalidOptionError
from ..features import FeatureSet
from ..fitting import fit_intervention, fit_steering
from ..intervention import Intervention
from ..selectors import TopByProbeAccuracy
from ..steering import Steering

#: Probes trained on one fold's train split, with their validation accuracy per head (the library's ProbeFit).
FoldProbes = ProbeFit


def train_fold_probes(features: FeatureSet, train_questions: np.ndarray, *, val_ratio: float = 0.2, seed: int = 42) -> FoldProbes:
    """Split the fold's training questions into train and validation (by question, seeded), fit every head's
    probe on train and score it on validation."""
    return fit_head_probes(features.head_wise, features.labels, features.question_ids, val_ratio=val_ratio, seed=seed,
                           split_groups=train_questions)


def build_intervention(
    features: FeatureSet,
    tuning: FeatureSet,
    fold: FoldProbes,
    *,
    num_heads: int,
    alpha: float,
    model_name: str,
    method: str = "mass_mean",
    selector: str = "probe_accuracy",
    seed: int = 42,
    tune_on_all_questions: bool = False,
) -> Intervention:
    """selector: "probe_accuracy" (the top heads by validation accuracy) or "random"; method: "mass_mean", "probe"
    or "random" (:mod:`iti.selectors`, :mod:`iti.methods` names).

    Mass-mean directions pool the train and validation questions of the fold (as the original). The std of the
    projections comes from the tuning set (tqa_gen_end_q) restricted to the fold's training questions; the
    original used every question, test fold included (``tune_on_all_questions=True``).
    """
    train_q = np.concatenate([fold.train_questions, fold.val_questions])
    rows = np.isin(features.question_ids, train_q)
    tune_rows = slice(None) if tune_on_all_questions else np.isin(tuning.question_ids, train_q)
    std_from = tuning.head_wise[tune_rows]
    meta = {"selector": selector, "method": method, "seed": seed, "num_heads": num_heads,
            "train_questions": int(len(train_q)), "tuning_rows": int(len(std_from))}
    return fit_intervention(features.head_wise[rows], features.labels[rows], features.question_ids[rows], num_heads=num_heads,
                            method=method, selector=selector, alpha=alpha,
                            std_from=std_from, probes=fold, seed=seed, geometry=features.geometry, model_name=model_name, meta=meta)


def train_fold_layer_probes(features: FeatureSet, train_questions: np.ndarray, *, val_ratio: float = 0.2,
                            seed: int = 42) -> FoldProbes:
    """The fold's probes on the residual stream after each block (``layer_wise``, one unit per layer), split as
    :func:`train_fold_probes` splits them: they rank the layers for the residual-stream methods."""
    if features.layer_wise is None:
        raise InvalidOptionError(f"{features.path} has no layer_wise features (collected with --no_layer_wise): the "
                                 "CAA and RepE rows steer the residual stream; collect the features again without that flag")
    return fit_head_probes(features.layer_wise[:, :, None, :], features.labels, features.question_ids, val_ratio=val_ratio,
                           seed=seed, split_groups=train_questions)


def build_residual_steering(features: FeatureSet, fold: FoldProbes, *, method: str, model_name: str, seed: int = 42) -> Steering:
    """One vector on the residual stream after the layer whose probe scores best on the fold's validation
    questions, at strength 1 (the budget search scales it): CAA (``mean_diff``: the mean over the fold's
    questions of mean(true) - mean(false), raw), RepE (``pca_diff``: the first principal component of those
    per-question differences, unit) or a seeded random unit direction (the site's control). The question is the
    contrast pair: TruthfulQA has several true and false answers per question, not one of each."""
    train_q = np.concatenate([fold.train_questions, fold.val_questions])
    rows = np.isin(features.question_ids, train_q)
    assert features.layer_wise is not None  # checked by train_fold_layer_probes
    meta = {"method": method, "site": "resid_post", "seed": seed, "train_questions": int(len(train_q))}
    return fit_steering(features.layer_wise[rows], features.labels[rows], features.question_ids[rows], site="resid_post",
                        method=method, selector=TopByProbeAccuracy(1), probes=fold, alpha=1.0,
                        scale="unit" if method == "random" else None, seed=seed, geometry=features.geometry,
                        model_name=model_name, positions="last", meta=meta)


#: what ``meta["fitted_on"]`` says of an intervention fitted by :func:`fit_on_all_questions`
ALL_QUESTIONS = "all questions"


def fit_on_all_questions(
    features: FeatureSet,
    tuning: FeatureSet,
    *,
    num_heads: int,
    alpha: float,
    model_name: str,
    method: str = "probe",
    selector: str = "probe_accuracy",
    seed: int = 42,
    val_ratio: float = 0.2,
) -> Intervention:
    """honest_llama's edit_weight.py: the intervention fitted on every question of the features (817 for the full
    TruthfulQA), not on a fold. Probes on a seeded 80/20 split of all questions pick the top heads ("probe_accuracy";
    "random" draws them), directions from all rows ("mass_mean", "probe" or "random"), stds from every tuning row
    (tqa_gen_end_q), as the original. ``meta["fitted_on"]`` is :data:`ALL_QUESTIONS`."""
    questions = int(len(np.unique(features.question_ids)))
    meta = {"fitted_on": ALL_QUESTIONS, "questions": questions, "selector": selector, "method": method, "seed": seed,
            "num_heads": num_heads, "val_ratio": val_ratio, "tuning_rows": int(len(tuning.question_ids)),
            "features": {fs.manifest["dataset"]["name"]: fs.manifest.get("job_id") for fs in (features, tuning)}}
    return fit_intervention(features, num_heads=num_heads, method=method, selector=selector,
                            alpha=alpha, std_from=tuning, val_ratio=val_ratio, seed=seed, model_name=model_name, meta=meta)


def _shape(g: HeadGeometry) -> str:
    return (f"{g.num_layers} layers x {g.num_heads} heads x {g.head_dim} dims, {g.num_kv_heads} KV heads, "
            f"hidden size {g.hidden_size}")


def check_features_geometry(geometry: HeadGeometry, model_name: str, *feature_sets: FeatureSet) -> None:
    """Refuse features whose head geometry is not the model's, before anything is fitted or evaluated:
    :class:`~iti.errors.GeometryMismatchError` naming the features directory, the model it was collected as, and
    the model run (an intervention fitted on them would otherwise fail on the first steered row, naming
    ``model_name`` as the model it was made for)."""
    for fs in feature_sets:
        if fs.geometry != geometry:
            dataset = fs.manifest.get("dataset", {}).get("name", fs.path.name)
            collected_as = fs.manifest.get("model", {}).get("name", "?")
            raise GeometryMismatchError(
                f"the {dataset} features in {fs.path} (collected as {collected_as!r}) have {_shape(fs.geometry)}, but "
                f"the model {model_name!r} has {_shape(geometry)}: they come from another model; collect this model's "
                f"own (python get_activations/get_activations.py --model_name {model_name} --dataset_name {dataset}) "
                "or run the model they came from")


def config_geometry(name_or_path: str) -> HeadGeometry | None:
    """The head geometry of a model from its config alone, without loading weights; None when its config lacks
    the usual fields (the geometry is then checked once the model has loaded)."""
    from ..architectures import geometry_from_config
    from ..models import load_model_config

    config = load_model_config(name_or_path)
    try:
        return geometry_from_config(config)
    except (AttributeError, TypeError):
        return None
