"""Command line: ``iti collect``, ``iti validate``, ``iti bake``, ``iti export``, ``iti import``, ``iti faithfulness``,
``iti concepts``, ``iti demo``. Scripts in the repo call :func:`main`."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidOptionError, ItiError
from ..faithfulness import models as _faithfulness_models  # noqa: F401  (the paper's short names, for every command)
from .config_args import add_config_args, config_from_args

if TYPE_CHECKING:
    from ..truthfulqa.config import BakeConfig



def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Accept honest_llama's underscore spelling and the dashed one."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=name, **kwargs)


def add_collect_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``iti collect``, generated from :class:`~iti.truthfulqa.config.CollectConfig`."""
    from ..truthfulqa.config import CollectConfig

    add_config_args(p, CollectConfig)


def _shard_from(shard_text: str | None) -> tuple[int, int] | None:
    from ..features import parse_shard

    if shard_text:
        return parse_shard(shard_text)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # one shard per process under accelerate launch / torchrun
        return int(os.environ.get("RANK", "0")), world
    return None


def _describe(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    return f"{path} ({', '.join(p.name for p in files)}; {size / 1e6:.1f} MB)"


def run_collect(args: argparse.Namespace) -> Path:
    """``iti collect``: write the feature directory of one model and prompt set (or merge its shards with
    ``--merge``) and return its path."""
    from ..features import merge_shards, output_name, write_features
    from ..models import check_dtype, device_map_from_index, load_model, prefixed_model_name, resolve_model
    from ..options import check_positive_int, check_seed, refuse
    from ..paths import features_dir
    from ..truthfulqa.config import CollectConfig
    from ..truthfulqa.prompt_sets import build_prompt_set

    cfg = config_from_args(CollectConfig, args)
    cfg.model_name = prefixed_model_name(cfg.model_name, cfg.model_prefix)  # features filed under the prefixed name

    check_positive_int("batch_size", cfg.batch_size)
    check_positive_int("max_questions", cfg.max_questions, none_ok=True)
    check_seed("seed", cfg.seed)
    check_dtype(cfg.dtype)
    device_map = device_map_from_index(cfg.device, cfg.device_map)
    shard = _shard_from(cfg.shard)
    out_root = Path(cfg.output_dir) if cfg.output_dir else features_dir()
    name = resolve_model(cfg.model_name).name
    if cfg.merge:
        path = merge_shards(out_root / output_name(name, cfg.dataset_name), force=cfg.force)
        print(f"[iti] merged shards into {_describe(path)}")
        return path
    ps = build_prompt_set(cfg.dataset_name, data_dir=cfg.data_dir, max_questions=cfg.max_questions, seed=cfg.seed)
    batches = -(-len(ps) // cfg.batch_size)  # write_features plans batches by count: ceil(prompts / batch_size)
    if shard is not None and shard[0] >= batches:
        raise refuse("shard", f"i/n with i < {batches}, the number of batches ({len(ps)} prompts, --batch_size {cfg.batch_size})",
                     f"{shard[0]}/{shard[1]}")
    model, tokenizer = load_model(cfg.model_name, device_map=device_map, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    start = time.perf_counter()
    path = write_features(
        model, tokenizer, ps, out_root, model_name=name, batch_size=cfg.batch_size, dtype=cfg.save_dtype,
        layer_wise=cfg.layer_wise, shard=shard, force=cfg.force, progress=cfg.progress,
    )
    print(f"[iti] {ps.name}: {len(ps)} prompts from {ps.meta['num_questions']} questions in {time.perf_counter() - start:.1f} s")
    print(f"[iti] wrote {_describe(path)}")
    return path


def add_validate_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``iti validate`` (honest_llama's validate_2fold options, plus controls, sweeps and seeds): one per
    field of :class:`~iti.truthfulqa.config.ValidationConfig`, plus where the run goes and how the model loads."""
    from ..truthfulqa.config import ValidationConfig

    add_config_args(p, ValidationConfig)
    _flag(p, "output_dir", default=None, help="default: validation/results/<model>_k<K>_a<alpha>_<method> (probe, "
                                               "mass_mean, random, or random-heads_mass_mean with both --use_center_of_mass "
                                               "and --use_random_dir) under the output root ($ITI_OUTPUT_DIR, else the checkout, else the working directory)")
    _flag(p, "device_map", default=None, help="e.g. auto (spread over GPUs), cpu, cuda:0")
    _flag(p, "device", default=None, type=int, help="honest_llama's GPU index: load the model on cuda:N (refused where "
                                                     "there is no such GPU; default: the CPU, or --device_map)")
    _flag(p, "dtype", default=None, help="compute dtype (default float32 on CPU, float16 on GPU; auto: bfloat16 instead on a CPU with AMX or AVX512-BF16)")
    _flag(p, "trust_remote_code", action="store_true", help="run the model repository's own code (off by default)")
    # honest_llama's first validate_2fold.py (June-July 2023): the model name as a positional argument, and two flags
    # it later replaced; the positional is taken as --model_name, the flags refused with what to use instead
    p.add_argument("positional_model_name", nargs="?", default=None, metavar="MODEL_NAME",
                   help="honest_llama's first spelling of --model_name")
    p.add_argument("--use_honest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--use_prefix", action="store_true", help=argparse.SUPPRESS)


def _legacy_validate_args(args: argparse.Namespace) -> None:
    """honest_llama's first validate_2fold.py: the positional model name is --model_name (refused beside another one);
    --use_honest and --use_prefix are refused with what replaced them."""
    from ..options import refuse

    if args.use_honest:
        raise refuse("use_honest", "gone from honest_llama since August 2024: use --model_prefix honest_ (its hub copy) or "
                     "local_ (edit_weight.py's output)", True)
    if args.use_prefix:
        raise refuse("use_prefix", "honest_llama's former few-shot preset: use --many_shot K (K training questions in the "
                     "prompt)", True)
    if args.positional_model_name is not None:
        from ..truthfulqa.config import ValidationConfig

        if args.model_name != ValidationConfig.model_name:  # --model_name given too (other than its default)
            raise refuse("model_name", "one model name, positional (honest_llama's first spelling) or --model_name, not both",
                         f"{args.positional_model_name} and {args.model_name}")
        args.model_name = args.positional_model_name


def run_validate(args: argparse.Namespace) -> None:
    """``iti validate``: refuse impossible settings, check that the features exist, load the model, run the k-fold
    validation and print summary.md."""
    from ..models import check_dtype, device_map_from_index, load_model, prefixed_model_name, resolve_model
    from ..paths import results_dir
    from ..truthfulqa.config import VALIDATION_RESULTS
    from ..truthfulqa.experiment import ValidationConfig, check_features, check_output, run_validation

    _legacy_validate_args(args)
    name = resolve_model(args.model_name).name
    cfg = config_from_args(ValidationConfig, args, model_name=name)
    evaluated = prefixed_model_name(args.model_name, cfg.model_prefix)  # honest_llama: HF_NAMES[model_prefix + model_name]
    if cfg.model_prefix:  # the features, probes and directions are the base model's: a declared use, in run.json
        cfg.features_from_other_weights = True
    out = Path(args.output_dir) if args.output_dir else \
        results_dir(VALIDATION_RESULTS) / f"{cfg.model_prefix}{name}_k{cfg.num_heads}_a{cfg.alpha:g}_{cfg.method_label}"
    cfg.validate()
    check_dtype(args.dtype)
    device_map = device_map_from_index(args.device, args.device_map)
    check_features(cfg)
    check_output(cfg, out)  # rows of other settings are refused before the model loads
    model, tokenizer = load_model(evaluated, device_map=device_map, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    start = time.perf_counter()
    run_validation(model, tokenizer, cfg, out)
    print((out / "summary.md").read_text())
    print(f"[validate] wrote {out} (summary.md, summary.json, rows/, intervention_fold*/, probes_fold*/, probe_accuracy.png, alpha_sweep.png) "
          f"in {time.perf_counter() - start:.0f} s")


def add_bake_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``iti bake`` (honest_llama's edit_weight options), generated from
    :class:`~iti.truthfulqa.config.BakeConfig`."""
    from ..truthfulqa.config import BakeConfig

    add_config_args(p, BakeConfig)


#: bake flags that only mean something when the intervention is fitted (not with --intervention)
_FIT_ONLY = ("num_heads", "use_center_of_mass", "use_random_dir", "method", "selector", "seed", "val_ratio", "features_dir",
             "features_from_other_weights")


def run_bake(args: argparse.Namespace) -> None:
    """``iti bake``: the intervention (or a steering) is loaded (``--intervention``, with ``--alpha`` if given) or fitted on every
    question of the features (:func:`iti.truthfulqa.fit.fit_on_all_questions`, as honest_llama's edit_weight.py);
    it is added to the output-projection biases and the model saved with the intervention in ``iti_intervention/``,
    whose meta says what it was fitted on (``fitted_on``). Options, features and intervention files are checked
    before the model loads."""
    from ..bake import bake, check_output_dir, save_baked
    from ..intervention import Intervention
    from ..models import check_dtype, device_map_from_index, edited_model_dir, load_model, prefixed_model_name, resolve_model
    from ..options import check_finite_nonneg, refuse
    from ..truthfulqa.config import BakeConfig

    cfg = config_from_args(BakeConfig, args)
    check_finite_nonneg("alpha", cfg.alpha, none_ok=True)
    check_dtype(cfg.dtype)
    device_map = device_map_from_index(cfg.device)
    evaluated = prefixed_model_name(cfg.model_name, cfg.model_prefix)  # the weights baked into; features: model_name's
    if cfg.model_prefix:
        cfg.features_from_other_weights = cfg.intervention is None  # fitting on the base model's features, declared
    if cfg.output_dir is None and cfg.intervention is not None:
        raise refuse("output_dir", "where to save the baked model (the default, edit_weight.py's own directory, names "
                     "the settings of a fit, which --intervention does not make)", shown="none")
    if cfg.output_dir is None:  # edit_weight.py's own output directory
        cfg.output_dir = edited_model_dir(resolve_model(cfg.model_name).name, 42 if cfg.seed is None else cfg.seed,
                                          48 if cfg.num_heads is None else cfg.num_heads, 15 if cfg.alpha is None else cfg.alpha)
    if Path(cfg.output_dir).is_file():
        raise refuse("output_dir", "a directory to save the model in (existing or new), not a file", cfg.output_dir)
    check_output_dir(cfg.output_dir, cfg.force)  # a non-empty one only with --force, replaced as a whole
    name = resolve_model(cfg.model_name).name
    if cfg.intervention is not None:
        for option in _FIT_ONLY:
            if getattr(cfg, option) not in (None, False):
                raise refuse(option, "only without --intervention (it sets how the intervention is fitted; a saved one "
                             "is already fitted)", getattr(cfg, option))
        inter = _load_value(cfg.intervention, cfg.alpha)  # an intervention or a steering directory
        inter.check_made_for(cfg.model_name, cfg.intervention)  # as iti faithfulness: same geometry is not same model
        fitted = inter.meta.get("fitted_on")
        if fitted is None:
            n = inter.meta.get("train_questions")
            fitted = f"a saved intervention ({n} training questions of a fold)" if n else f"a saved {type(inter).__name__.lower()}"
        inter.meta = {**inter.meta, "fitted_on": fitted, "source": str(cfg.intervention)}
    else:
        inter = _fit_bake_intervention(cfg, name)
    model, tokenizer = load_model(evaluated, device_map=device_map, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.intervention is None:  # fitted here: on features of these weights (refused otherwise), said in the meta
        inter.meta["features_weights"] = _bake_features_weights(cfg, name, model)
    bake(model, inter, add_to_existing=cfg.add_to_existing)  # refuses an intervention made for another geometry
    out = save_baked(model, tokenizer, cfg.output_dir, inter, force=cfg.force)
    if isinstance(inter, Intervention):
        print(f"[bake] {len(inter.heads)} heads, alpha {inter.alpha:g}: o_proj bias = W_o @ shift; saved to {out} "
              f"(fitted on {inter.meta['fitted_on']}, in iti_intervention/)")
    else:
        print(f"[bake] {_describe_value(inter)} baked into the biases; saved to {out} (from {inter.meta['fitted_on']}, "
              "in iti_steering/)")


def _fit_bake_intervention(bake_cfg: BakeConfig, name: str):
    """edit_weight.py's fit: every question of the resolved model's tqa_mc2 features (probes, directions) and
    tqa_gen_end_q features (stds), refused with the collect command when they are missing."""
    from ..architectures import HeadGeometry
    from ..features import load_features, read_manifest
    from ..options import check_existing_path, check_range, check_seed, refuse
    from ..truthfulqa.config import ValidationConfig
    from ..truthfulqa.experiment import check_features
    from ..truthfulqa.fit import ALL_QUESTIONS, check_features_geometry, config_geometry, fit_on_all_questions

    if bake_cfg.val_ratio is not None and not 0 < bake_cfg.val_ratio < 1:
        raise refuse("val_ratio", "a share strictly between 0 and 1 of the questions to validate the probes on", bake_cfg.val_ratio)
    num_heads = 48 if bake_cfg.num_heads is None else bake_cfg.num_heads
    seed = 42 if bake_cfg.seed is None else bake_cfg.seed
    alpha = 15.0 if bake_cfg.alpha is None else bake_cfg.alpha
    check_seed("seed", seed)
    check_existing_path("features_dir", bake_cfg.features_dir)
    cfg = ValidationConfig(model_name=name, features_dir=bake_cfg.features_dir, num_heads=num_heads, alpha=alpha, seed=seed,
                           dataset_name=bake_cfg.dataset_name, activations_dataset=bake_cfg.activations_dataset,
                           val_ratio=0.2 if bake_cfg.val_ratio is None else bake_cfg.val_ratio,
                           use_center_of_mass=bake_cfg.use_center_of_mass, use_random_dir=bake_cfg.use_random_dir,
                           method=bake_cfg.method, selector=bake_cfg.selector)
    check_features(cfg)
    manifest = read_manifest(cfg.features_path(cfg.dataset_name))
    total = HeadGeometry.from_dict(manifest["model"]["geometry"]).num_total_heads
    check_range("num_heads", num_heads, 1, total, integer=True, why=f"the layers x heads of {name}")
    features = load_features(cfg.features_path(cfg.dataset_name), mmap=False)
    tuning = load_features(cfg.features_path(cfg.activations_dataset), mmap=False)
    geometry = config_geometry(bake_cfg.model_name)  # features of another model: refused before anything is fitted
    if geometry is not None:
        check_features_geometry(geometry, name, features, tuning)
    assert cfg.method is not None and cfg.selector is not None
    inter = fit_on_all_questions(features, tuning, num_heads=num_heads, alpha=alpha, model_name=name, method=cfg.method,
                                 selector=cfg.selector, seed=seed, val_ratio=cfg.val_ratio)
    held = round(100 * cfg.val_ratio)
    print(f"[bake] fitted on {ALL_QUESTIONS} ({inter.meta['questions']} questions; probes on a {100 - held}/{held} split, seed {seed}; "
          f"heads by {cfg.selector}, {cfg.method} directions; stds over {inter.meta['tuning_rows']} {cfg.activations_dataset} rows)",
          flush=True)
    return inter


def _bake_features_weights(bake_cfg: BakeConfig, name: str, model) -> str:
    """Whether the features ``iti bake`` fitted on were collected from ``model``'s weights: refused when not, unless
    ``--features_from_other_weights`` (:func:`iti.features.check_features_weights`)."""
    from ..features import UNRECORDED_WEIGHTS, check_features_weights, read_manifest
    from ..truthfulqa.config import ValidationConfig

    cfg = ValidationConfig(model_name=name, features_dir=bake_cfg.features_dir)
    paths = [cfg.features_path(d) for d in (cfg.dataset_name, cfg.activations_dataset)]
    status = check_features_weights({str(p): read_manifest(p) for p in paths}, model, allow_other=bake_cfg.features_from_other_weights)
    if status == UNRECORDED_WEIGHTS:
        print("[bake] the features manifests record no weights fingerprint (an older iti, or imported): cannot check that "
              "they come from this model's weights", flush=True)
    return status


def _load_value(path: str, alpha: float | None):
    """The saved intervention or steering at ``path`` (``steering.json`` tells which), with ``alpha`` replaced."""
    from ..intervention import Intervention
    from ..options import check_existing_path
    from ..steering import META_FILE, Steering

    check_existing_path("intervention", path)
    if (Path(path) / META_FILE).is_file():
        if alpha is not None:
            raise InvalidOptionError(f"{path} is a steering directory, which has no alpha; scale it in Python "
                                     "(k * iti.Steering.load(path)) and save that instead of passing --alpha")
        return Steering.load(path)
    inter = Intervention.load(path)
    return inter if alpha is None else inter.with_alpha(alpha)


def run_export(args: argparse.Namespace) -> Path:
    """``iti export --format {pyvene,lm-eval,gguf,honest-llama}``: write an intervention (gguf: the model with it
    baked in; honest-llama: a features directory) in another tool's format. Missing inputs and an existing output
    are refused before any model loads."""
    from ..interop.config import ExportConfig
    from ..interop.files import refuse_existing
    from ..models import check_dtype, load_model
    from ..options import check_existing_path, check_finite_nonneg, refuse

    cfg = config_from_args(ExportConfig, args)
    check_finite_nonneg("alpha", cfg.alpha, none_ok=True)
    check_dtype(cfg.dtype)
    out = Path(cfg.output)
    if cfg.format == "honest-llama":
        from ..interop.honest_llama_features import export_honest_llama_features

        if cfg.features is None:
            raise refuse("features", "our features directory to export (with --format honest-llama)", None)
        check_existing_path("features", cfg.features)
        paths = export_honest_llama_features(cfg.features, out, model_name=cfg.model_name, dataset=cfg.dataset_name,
                                             layer_wise=cfg.layer_wise, force=cfg.force)
        print(f"[export] wrote {', '.join(str(p) for p in paths.values())}")
        return out
    if cfg.model_name is None:
        raise refuse("model_name", f"the model the intervention is for (with --format {cfg.format})", None)
    if cfg.intervention is None and cfg.format != "gguf":
        raise refuse("intervention", f"a saved iti intervention or steering directory (with --format {cfg.format})", None)
    value = _load_value(cfg.intervention, cfg.alpha) if cfg.intervention is not None else None
    if value is not None and cfg.format in ("lm-eval", "control-vector"):  # read with whatever model it is given
        value.check_made_for(cfg.model_name, cfg.intervention)
    what = _describe_value(value)
    if cfg.format == "control-vector":
        from ..interop.control_vector import export_control_vector
        from ..models import resolve_model

        assert value is not None
        export_control_vector(value, out, model_hint=resolve_model(cfg.model_name).name, force=cfg.force)
        print(f"[export] {what} as a llama.cpp control vector in {out}; run llama-cli -m <model.gguf> --control-vector {out}")
        return out
    refuse_existing([out], cfg.force)
    model, tokenizer = load_model(cfg.model_name, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.format == "pyvene":
        from ..interop.pyvene_format import export_pyvene

        assert value is not None
        export_pyvene(model, value, out, force=cfg.force)
        print(f"[export] {what} as pyvene AdditionInterventions (on module outputs; head shifts as W_o @ shift on the "
              f"o_proj output; every position) in {out}; load with pyvene.IntervenableModel.load({str(out)!r}, model)")
    elif cfg.format == "lm-eval":
        from ..interop.lm_eval_format import export_lm_eval

        assert value is not None
        export_lm_eval(model, value, out, force=cfg.force, model_name=cfg.model_name)
        print(f"[export] {what} as lm-eval steering vectors (action add; head shifts as W_o @ shift) in {out}; run "
              f"lm_eval --model steered --model_args pretrained=<model>,steer_path={out}")
    else:
        from ..bake import bake
        from ..interop.gguf_format import export_gguf
        from ..models import embedded_gguf_field, resolve_model

        if value is not None:
            bake(model, value)
        pre = cfg.tokenizer_pre or embedded_gguf_field(resolve_model(cfg.model_name).name, "tokenizer.ggml.pre") or "default"
        export_gguf(model, tokenizer, out, dtype=cfg.gguf_dtype, tokenizer_pre=pre, force=cfg.force)
        baked = f"with {what} baked in (attn_output / ffn_down biases)" if value is not None else "as it is"
        print(f"[export] {cfg.model_name} {baked}: {out} ({out.stat().st_size / 1e6:.1f} MB, {cfg.gguf_dtype}, llama architecture)")
    return out


def _describe_value(value) -> str:
    """``"3 heads in 2 layers"`` for an intervention, ``"resid_post at layers 3, 5"`` for a steering."""
    from ..intervention import Intervention

    if value is None:
        return "nothing"
    if isinstance(value, Intervention):
        return f"{len(value.heads)} heads in {len(value.layer_shifts())} layers"
    return "; ".join(f"{site} at layer{'s' if len(value.layers(site)) > 1 else ''} {', '.join(map(str, value.layers(site)))}"
                     for site in value.sites)


def run_import(args: argparse.Namespace) -> Path:
    """``iti import --format {pyvene,lm-eval,gguf,honest-llama}``: read another tool's file as an iti intervention
    saved in ``--output`` (solved back to head shifts against ``--model_name``), or honest_llama's arrays as a
    features directory of ours."""
    from ..interop.config import ImportConfig
    from ..interop.files import refuse_existing
    from ..models import check_dtype, load_model, resolve_model
    from ..options import check_existing_path, refuse

    cfg = config_from_args(ImportConfig, args)
    check_dtype(cfg.dtype)
    check_existing_path("input", cfg.input, kind="any")
    if cfg.format == "honest-llama":
        from ..architectures import geometry_from_config
        from ..interop.honest_llama_features import import_honest_llama_features
        from ..models import load_model_config
        from ..truthfulqa.prompt_sets import build_prompt_set

        geometry = geometry_from_config(load_model_config(cfg.geometry_from or cfg.model_name, trust_remote_code=cfg.trust_remote_code))
        ps = build_prompt_set(cfg.dataset_name, data_dir=cfg.data_dir, max_questions=cfg.max_questions, seed=cfg.seed)
        path = import_honest_llama_features(cfg.input, ps, model_name=cfg.model_name, geometry=geometry, dataset=cfg.dataset_name,
                                            out_dir=cfg.output, layer_wise=cfg.layer_wise, force=cfg.force)
        print(f"[import] {len(ps)} rows of honest_llama features as {_describe(path)}")
        return path
    if cfg.output is None:
        raise refuse("output", f"the directory to save the imported intervention in (with --format {cfg.format})", None)
    out = Path(cfg.output)
    refuse_existing([out], cfg.force)
    model, _ = load_model(cfg.model_name, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    name = resolve_model(cfg.model_name).name
    if cfg.format == "pyvene":
        from ..interop.pyvene_format import load_pyvene_steering as read
    elif cfg.format == "lm-eval":
        from ..interop.lm_eval_format import load_lm_eval_steering as read
    elif cfg.format == "gguf":
        from ..interop.gguf_format import load_gguf_steering as read
    else:
        from ..interop.control_vector import load_control_vector as read
    steering = read(cfg.input, model, model_name=name)
    if cfg.steering or cfg.format == "control-vector":
        steering.save(out)
        print(f"[import] {_describe_value(steering)} from {cfg.input} as read (no solving); saved to {out} as an iti "
              "steering (iti.Steering.load; apply with positions='all', as the file does)")
        return out
    from ..interop.shifts import intervention_from_steering

    inter = intervention_from_steering(model, steering, model_name=name, source=cfg.input)
    inter.save(out)
    err = inter.meta.get("max_reconstruction_error")
    solved = f"; W_o @ shift reproduces the file's vectors to {err:.1e}" if err is not None else ""
    print(f"[import] {len(inter.heads)} heads in {len(inter.layer_shifts())} layers from {cfg.input}{solved}; saved to {out} "
          "(apply with positions='all', as the file does)")
    return out


def run_demo(args: argparse.Namespace) -> None:
    """``iti demo``: the quick end-to-end run of :func:`iti.truthfulqa.demo.demo` (which checks its sizes before anything
    loads)."""
    from ..truthfulqa.config import DemoConfig
    from ..truthfulqa.demo import demo

    cfg = config_from_args(DemoConfig, args)
    demo(max_questions=cfg.max_questions, output_dir=cfg.output_dir, batch_size=cfg.batch_size)


def add_faithfulness_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``iti faithfulness`` (introspect's options, plus the intervened arm, the cache and a remote
    endpoint): one per field of :class:`~iti.faithfulness.experiment.FaithfulnessConfig`."""
    from ..faithfulness.experiment import FaithfulnessConfig

    add_config_args(p, FaithfulnessConfig)


def _report_config() -> type:
    from ..faithfulness.aggregate import ReportConfig

    return ReportConfig


def run_faithfulness_report_cmd(args: argparse.Namespace) -> None:
    """``iti faithfulness-report``: the figures and tables of a set of finished runs."""
    from ..faithfulness.aggregate import ReportConfig, write_report

    write_report(config_from_args(ReportConfig, args))


def run_faithfulness_cmd(args: argparse.Namespace) -> None:
    """``iti faithfulness``: build a :class:`FaithfulnessConfig` from the flags and run it
    (``--max_samples 0`` means every sample)."""
    from ..faithfulness.experiment import FaithfulnessConfig, run_faithfulness

    run_faithfulness(config_from_args(FaithfulnessConfig, args))


def add_concepts_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``iti concepts`` (the k and alpha grids, sample sizes, seed and paths): one per field of
    :class:`~iti.concepts.experiment.ConceptConfig`."""
    from ..concepts.experiment import ConceptConfig

    add_config_args(p, ConceptConfig)


def run_concepts_cmd(args: argparse.Namespace) -> None:
    """``iti concepts``: run the CEBaB concept experiment and print the chosen k and the test accuracies
    (``--max_pairs 0`` means every pair)."""
    from ..concepts.experiment import ConceptConfig, run_concepts

    cfg = config_from_args(ConceptConfig, args)
    r = run_concepts(cfg)
    print(f"[concepts] k = {r['chosen_k']}, test task accuracy {r['test']['task_accuracy']:.3f}, concept accuracy "
          f"{r['test']['concept_accuracy']:.3f} (majority {r['majority_baseline_test']['mean']:.3f}); {r['seconds']:.0f} s; "
          f"wrote {cfg.output_dir}")


def _sparsecbm_config() -> type:
    from ..concepts.sparsecbm_experiment import SparseCBMConfig

    return SparseCBMConfig


def run_sparsecbm_cmd(args: argparse.Namespace) -> None:
    """``iti sparsecbm``: train, prune, evaluate and intervene (SparseCBM on CEBaB) and print the headline numbers."""
    from ..concepts.sparsecbm_experiment import SparseCBMConfig, run_sparsecbm

    cfg = config_from_args(SparseCBMConfig, args)
    r = run_sparsecbm(cfg)
    main = next(m for m in r["models"] if m["model"] == r["main"])["test"]
    after = r["mask_intervention_test"]["after"]
    print(f"[sparsecbm] test task accuracy {main['task_accuracy']:.3f} (after mask intervention {after['task_accuracy']:.3f}), "
          f"concept accuracy {main['concept_accuracy']:.3f} ({after['concept_accuracy']:.3f}); wrote {cfg.output_dir}")


def build_parser() -> argparse.ArgumentParser:
    """The ``iti`` argument parser; each subcommand stores its ``run_*`` function as ``args.func``."""
    parser = argparse.ArgumentParser(prog="iti", description="Read and steer the insides of Hugging Face LMs (ITI, CAA, RepE).")
    sub = parser.add_subparsers(dest="command", required=True)
    from ..interop.config import ExportConfig, ImportConfig
    from ..truthfulqa.config import DemoConfig

    commands = [
        ("collect", "collect per-head activations on a TruthfulQA prompt set (get_activations)", add_collect_args, run_collect),
        ("validate", "k-fold ITI validation on TruthfulQA (validate_2fold)", add_validate_args, run_validate),
        ("bake", "bake an intervention or steering into biases and save the model (edit_weight)", add_bake_args, run_bake),
        ("export", "an intervention, steering (or features) in another tool's format: pyvene, lm-eval, gguf, control-vector, "
                   "honest-llama", lambda p: add_config_args(p, ExportConfig), run_export),
        ("import", "another tool's steering file (or honest_llama features) into iti's formats",
         lambda p: add_config_args(p, ImportConfig), run_import),
        ("faithfulness", "self-explanation faithfulness, plain vs intervened model (introspect)", add_faithfulness_args,
         run_faithfulness_cmd),
        ("faithfulness-report", "introspect's figures and tables from finished faithfulness runs",
         lambda p: add_config_args(p, _report_config()), run_faithfulness_report_cmd),
        ("concepts", "sparse concept bottleneck and concept steering on CEBaB (SparseCBM idea)", add_concepts_args,
         run_concepts_cmd),
        ("sparsecbm", "SparseCBM on CEBaB: joint concept bottleneck, a pruned subnetwork per concept, mask intervention",
         lambda p: add_config_args(p, _sparsecbm_config()), run_sparsecbm_cmd),
        ("demo", "the main job end to end on the embedded model, quick preset", lambda p: add_config_args(p, DemoConfig), run_demo),
    ]
    for name, help_text, add_args, func in commands:
        p = sub.add_parser(name, help=help_text)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``iti`` command and return its exit code: 0, or 2 after an :class:`ItiError` (printed without a
    traceback), or 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ItiError as e:
        print(f"iti: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        import errno

        if e.errno != errno.ENOSPC:
            raise
        from ..io import disk_full_error

        print(f"iti: error: {disk_full_error(e.filename or os.getcwd())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iti: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
