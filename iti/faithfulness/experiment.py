"""A faithfulness experiment: data sets x tasks, each through the plain arm and the intervened arm, compared.

What the generation cache is keyed by (besides the rendered prompt and the sampling settings): a local arm by
the content of its weights (:func:`iti.fingerprint.model_fingerprint`: the checkpoint files' SHA-256, remembered by
size and mtime, or the loaded tensors), so overwriting ``ckpt/model.safetensors`` and rerunning ``--model ckpt``
generates again, and by the dtype it computes in (the same weights in float32 and bfloat16 answer differently); the
runtime arm adds the intervention's fingerprint; the baked arm (``--baked``) is the baked
checkpoint's fingerprint plus ``baked:<fingerprint of its iti_intervention/>``. A remote arm cannot be hashed from
here, so it is keyed by URL + served name + the server's own identity of the model (``root`` from ``GET
/models``, the path vLLM loaded; ``root=unknown`` when the server does not say), never by the served name alone.
The remote intervened arm's intervention is read from the local copy of the served baked model, which
``--remote_baked DIR`` must name (``baked:<fingerprint>`` of its ``iti_intervention/``): never the served name alone.

Outputs (in ``output_dir``, by default ``validation/faithfulness_results/<model>_<arm>_<datasets>_<tasks>_<settings
hash>`` under :func:`iti.paths.output_root`; ``config.json`` records the settings, and a directory holding a run with other settings is
refused unless ``force``): ``samples/{dataset}_{task}_{arm}.jsonl`` (every prompt, response and parse),
``summary.json`` and ``summary.md`` (what every request was sent with, and how many answers reached the token
limit), ``comparison.md`` and ``faithfulness.png``; with ``calibrate_alphas`` also ``calibration.json`` and
``calibration.md`` (the intervened arm's strength chosen on development samples). Every generation goes through the SQLite cache, stored
batch by batch (answer by answer for a remote arm), so an interrupted run resumes where it stopped and a finished one reruns from the cache.
"""
from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from ..errors import EmptyInputError, InterventionModelError, InvalidOptionError
from ..fingerprint import settings_fingerprint
from ..io import atomic_write_json, atomic_write_text
from ..options import check_choice, check_existing_path, check_finite_nonneg, check_positive_int, check_range, check_seed, refuse
from ..paths import cache_dir, results_dir
from ..run_directory import RunDirectory
from .cache import GenerationCache
from .datasets import SPLITS, FaithfulnessDataset, Sample, canonical_dataset, dataset_names, load_faithfulness_dataset, split_spec
from .errors import RemoteModelError, ReplayError
from .generate import (
    DEFAULT_SYSTEM_MESSAGES,
    FALLBACK_CHAT_FORMATS,
    INTROSPECT_MAX_NEW_TOKENS,
    STOP_STRINGS,
    CachedGenerator,
    CacheWalk,
    GenerationSettings,
    LocalGenerator,
    RemoteGenerator,
    ReplayGenerator,
    plugin_steering,
    render_chat,
)
from .prompts import CONFIG_FLAGS, TASKS, PromptOptions, prompt_options, task_configs
from .report import (
    accuracy_name,
    compare_arms,
    comparison_markdown,
    first_answer_markdown,
    first_answer_stats,
    plot_comparison,
    summary_markdown,
    truncation_markdown,
    truncation_stats,
)
from .tasks import run_task, summarize

EXPLAIN_TASKS = ("counterfactual", "redacted", "importance")






#: default parent of `iti faithfulness` run directories, relative to the output root (iti.paths.output_root)
RESULTS = "validation/faithfulness_results"

@dataclass
class FaithfulnessConfig:
    """Settings of one ``iti faithfulness`` run; the intervened arm comes from ``intervention`` or ``baked`` (not
    both), or with ``remote_url`` from ``remote_intervened_model``; without it only the plain arm runs."""
    model: str = field(default="smollm2-135m", metadata={
        "help": "embedded name, short name, hub id or local dir (renders the prompts)",
        "aliases": ("model-name", "model-id")})
    datasets: Sequence[str] = field(default=("imdb", "rte", "babi1", "mctest"), metadata={
        "help": f"any of {', '.join(dataset_names())}", "flag": "dataset"})
    split: str = field(default="test", metadata={
        "help": "introspect's split: train = train[:80%], valid = train[80%:], test = the split the paper reports "
                "(introspect's own default is train)", "choices": SPLITS})
    tasks: Sequence[str] = field(default=EXPLAIN_TASKS, metadata={"help": "tasks to run", "flag": "task", "choices": TASKS})
    task_config: Sequence[str] = field(default=(), metadata={
        "help": f"introspect's config flags: {', '.join(CONFIG_FLAGS)} (e-implicit-target also accepted)"})
    intervention: str | None = field(default=None, metadata={
        "help": "a saved intervention (validate_2fold output): the intervened arm"})
    baked: str | None = field(default=None, metadata={"help": "a model saved by edit_weight.py: the intervened arm"})
    alpha: float | None = field(default=None, metadata={"help": "override the intervention's alpha"})
    calibrate_alphas: Sequence[float] = field(default=(), metadata={
        "help": "candidate alphas for --intervention: before the reported run, the largest one up to which the "
                "first-answer parse rate of every data set stays within --max_parse_gap of the plain model's on "
                "--dev_samples samples after the reported ones is chosen (see iti.faithfulness.calibrate)"})
    dev_samples: int = field(default=50, metadata={
        "help": "development samples per data set for --calibrate_alphas (at most the samples a data set has after "
                "the --max_samples reported ones; more is refused)"})
    max_parse_gap: float = field(default=0.10, metadata={
        "help": "largest parse-rate difference to the plain model that --calibrate_alphas accepts (0.10: 10 points)"})
    max_samples: int | None = field(default=100, metadata={
        "help": "first N samples of each data set after the seeded shuffle (0 = all)", "zero_is_none": True})
    seed: int = field(default=0, metadata={"help": "shuffle and sampling seed (introspect: 0)"})
    max_new_tokens: int = field(default=INTROSPECT_MAX_NEW_TOKENS, metadata={
        "help": "explanation length limit (introspect's; answers that reach it are counted in summary.md)"})
    classify_max_new_tokens: int = field(default=INTROSPECT_MAX_NEW_TOKENS, metadata={
        "help": "classification answer length limit (introspect's: the same for every request)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generation batch"})
    device_map: str | None = field(default=None, metadata={"help": "e.g. auto (spread a large model over the GPUs)"})
    dtype: str | None = field(default=None, metadata={"help": "compute dtype (default float32 on CPU, float16 on GPU; auto: bfloat16 instead on a CPU with AMX or AVX512-BF16)"})
    fix_prompt_typos: bool = field(default=False, metadata={
        "help": "fix introspect's prompt typos (prompts.TYPO_FIXES); by default its text is sent word for word"})
    original_prompts: bool = field(default=False, metadata={
        "help": "no effect, kept for old command lines: introspect's prompt text is now the default"})
    chat_format: str | None = field(default=None, metadata={
        "aliases": ("model-type",), "type": str.lower,
        "help": "introspect's prompt format instead of the tokenizer's chat template: falcon, llama2, mistral or plain "
                "(default: the one an introspect short name such as falcon-7b stands for, else the template, else plain)"})
    system_message: str | None = field(default=None, metadata={
        "help": "a system message to render before each prompt; 'none': no system message (default: introspect's for "
                "the chat format: Falcon's preamble with the falcon format, none otherwise)"})
    stop_strings: Sequence[str] | None = field(default=None, metadata={
        "help": "generation stops when an answer ends with one of these, which is cut from it; the flag alone: none "
                "(default: introspect's for the chat format: falcon User: Falcon: </s>; llama2 [INST] [/INST] <s> </s>; "
                "mistral [INST] [/INST] </s>; none otherwise)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "data root holding faithfulness/ (default: $ITI_DATA_DIR, ../shared/data, hub)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "default: validation/faithfulness_results/<model>_<arm>_<datasets>_<tasks>_<settings hash> "
                "under the output root (see iti.paths.output_root)"})
    cache: str | None = field(default=None, metadata={
        "help": "SQLite generation cache (default: $ITI_CACHE/faithfulness/generations.sqlite)"})
    remote_url: str | None = field(default=None, metadata={
        "aliases": ("endpoint",),
        "help": "OpenAI-compatible endpoint (e.g. http://localhost:8000/v1; a bare server address gets /v1, as "
                "introspect's --endpoint is written) instead of in-process"})
    remote_plain_model: str | None = field(default=None, metadata={"help": "served name of the plain model"})
    remote_intervened_model: str | None = field(default=None, metadata={"help": "served name of the baked model"})
    remote_intervened_url: str | None = field(default=None, metadata={
        "help": "endpoint serving the baked model when it is not --remote_url (vLLM serves one model per process)"})
    remote_baked: str | None = field(default=None, metadata={
        "help": "local copy of the served baked model: its iti_intervention/ keys the cache (else 'unverified remote')"})
    remote_steering: str | None = field(default=None, metadata={
        "help": "with --remote_url and --intervention: the intervened arm is the same server asked, per request, for "
                "the iti vLLM plugin's steering of this name (its $ITI_VLLM_STEERING library holds --intervention's "
                "files under it) at --alpha (default: the intervention's) and ITI's positions; --calibrate_alphas "
                "then sweeps strengths against that one server. --intervention's local copy keys the cache"})
    max_workers: int = field(default=50, metadata={
        "help": "requests a remote arm keeps in flight at once (introspect's --max-workers; its default 50); answers "
                "do not depend on it"})
    remote_timeout: float = field(default=120.0, metadata={
        "help": "seconds to wait for one answer of the endpoint before retrying, then stopping (default 120)"})
    retry_errors: bool = field(default=False, metadata={
        "help": "generate again the prompts whose cached outcome is an error (e.g. after raising the server's context)"})
    force: bool = field(default=False, metadata={
        "help": "write into an output directory that holds a run with other settings"})
    progress: bool = field(default=True, metadata={"help": "no progress bar", "flag": "quiet", "invert": True})
    clean_cache: bool = field(default=False, metadata={
        "help": "drop this run's rows from the generation cache first (introspect's --clean-cache): every prompt the "
                "run's tasks would read for the reported samples, in each arm, so that they are generated again"})
    replay: bool = field(default=False, metadata={
        "help": "re-report a finished run from the cache alone (introspect's Offline client): no model loaded (only "
                "its tokenizer, to render the prompts) and no server asked; refused in one line when an answer is "
                "missing"})
    client: str | None = field(default=None, metadata={
        "choices": ("TGI", "VLLM", "Offline"),
        "help": "introspect's --client: TGI or VLLM = the OpenAI-compatible server at --endpoint (both speak it), "
                "Offline = --replay"})
    persistent_dir: str | None = field(default=None, metadata={
        "help": "introspect's --persistent-dir: the cache defaults to DIR/database/generations.sqlite and the run "
                "directory to DIR/results/analysis/<run name> (--cache / --output_dir still win)"})
    debug: bool = field(default=False, metadata={
        "help": "introspect's --debug: print every prompt and answer as it is generated (cached ones included)"})
    dry: bool = field(default=False, metadata={
        "help": "plan only: check every option, read the data sets and print, per data set, task and arm, the samples "
                "and the prompts the run would send; load no model, write nothing"})

    def __post_init__(self) -> None:
        # introspect's --endpoint is the server's address; its OpenAI-compatible routes are under /v1 (vLLM, TGI >= 2)
        for name in ("remote_url", "remote_intervened_url"):
            url = getattr(self, name)
            if url and urllib.parse.urlsplit(url).path in ("", "/"):
                setattr(self, name, url.rstrip("/") + "/v1")

    def validate(self) -> None:
        """Refuse impossible settings (one error naming the option) before any model loads or file is written:
        data sets, tasks and task configs, counts >= 1, seed >= 0, dtype, chat format, alpha finite and >= 0 (and
        only with an intervention), existing intervention / baked / data paths, an intervention made for this
        model (its small files are read, no model), and the remote options together."""
        _check_inputs(self)


#: Where runs without ``--output_dir`` go, each into a directory named from its settings; None (the default):
#: ``paths.results_dir(RESULTS)``, decided when the run starts.
RESULTS_DIR: Path | None = None

#: Fields that do not change a run's outputs (speed, placement, where things go, how failures are retried).
_NOT_SETTINGS = {"batch_size", "device_map", "output_dir", "cache", "progress", "remote_timeout", "retry_errors", "force",
                 "original_prompts", "dry", "clean_cache", "persistent_dir", "debug", "replay", "client",
                 "max_workers"}  # original_prompts: no effect any more
_OUTPUT_FILES = ("summary.json", "summary.md", "comparison.md", "faithfulness.png")


def run_settings(cfg: FaithfulnessConfig) -> dict[str, Any]:
    """The settings that determine a run's outputs (everything but speed, placement and paths of its own output)."""
    return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items() if k not in _NOT_SETTINGS}


def default_output_dir(cfg: FaithfulnessConfig) -> Path:
    """``validation/faithfulness_results/<model>_<arm>_<datasets>_<tasks>_<settings hash>`` under the output root
    (:func:`iti.paths.output_root`: ``$ITI_OUTPUT_DIR``, else the checkout, else the working directory), so
    that runs with different settings never share a directory and the same run always finds its own."""
    import re

    from ..models import resolve_model

    arm = ("remote-iti" if cfg.remote_steering else "iti" if cfg.intervention else "baked" if cfg.baked else
           "remote" if cfg.remote_url and cfg.remote_intervened_model else "remote-plain" if cfg.remote_url else "plain")
    parts = [resolve_model(cfg.model).name, arm, "-".join(cfg.datasets), "-".join(cfg.tasks),
             settings_fingerprint(run_settings(cfg))[:10]]
    return (RESULTS_DIR or results_dir(RESULTS)) / "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", p) for p in parts)


def run_directory(out: Path) -> RunDirectory:
    """The run's output directory (``config.json`` holds the settings; an older run kept them in summary.json)."""
    return RunDirectory(out, "faithfulness run", record="config.json", settings_key="settings",
                        outputs=(*_OUTPUT_FILES, "samples/*.jsonl", "calibration.md", "calibration.json"),
                        older_records=(("summary.json", "config"),))


def check_output_dir(out: Path, cfg: FaithfulnessConfig) -> None:
    """Refuse (:class:`OutputExistsError`, naming the settings that differ) a directory that holds another run's
    outputs, unless ``force``; the same settings resume there. Reads only."""
    run_directory(out).check(run_settings(cfg), force=cfg.force)


def default_cache_path() -> Path:
    """The generation cache used when none is given: ``$ITI_CACHE/faithfulness/generations.sqlite``."""
    return cache_dir() / "faithfulness" / "generations.sqlite"


def _check_inputs(cfg: FaithfulnessConfig) -> dict[str, tuple[str, ...]]:
    """:meth:`FaithfulnessConfig.validate`: every field checked, nothing loaded or written; returns the normalized
    task-config flags of each task."""
    from ..models import check_dtype, resolve_model
    from ..paths import data_search

    resolve_model(cfg.model)
    if not cfg.datasets:
        raise EmptyInputError("no data sets selected")
    if not cfg.tasks:
        raise EmptyInputError("no tasks selected")
    for d in cfg.datasets:
        split_spec(canonical_dataset(d), cfg.split)
    flags, _ignored = task_configs(cfg.tasks, cfg.task_config)
    if cfg.client in ("TGI", "VLLM") and not cfg.remote_url:
        raise refuse("client", f"{cfg.client} needs the server's address: give --endpoint (or --remote_url)", cfg.client)
    if cfg.intervention and cfg.baked:
        raise InterventionModelError("give --intervention (runtime shift) or --baked (edited weights), not both")
    check_positive_int("max_samples", cfg.max_samples, none_ok=True, why="0 or None = all")
    for name in ("max_new_tokens", "classify_max_new_tokens", "batch_size", "max_workers"):
        check_positive_int(name, getattr(cfg, name))
    check_seed("seed", cfg.seed)
    check_dtype(cfg.dtype)
    check_choice("chat_format", cfg.chat_format, FALLBACK_CHAT_FORMATS, none_ok=True)
    if cfg.original_prompts and cfg.fix_prompt_typos:
        raise refuse("original_prompts", "not with --fix_prompt_typos (introspect's text is the default; the flag is "
                                          "kept for old command lines)", True)
    for stop in cfg.stop_strings or ():
        if not isinstance(stop, str) or not stop:
            raise refuse("stop_strings", "non-empty strings", list(cast(Sequence[str], cfg.stop_strings)))
    check_existing_path("intervention", cfg.intervention)
    check_existing_path("baked", cfg.baked)
    check_finite_nonneg("alpha", cfg.alpha, none_ok=True)
    if cfg.alpha is not None and not cfg.intervention:
        raise refuse("alpha", "only with --intervention (a baked model's shift is fixed; a served one's too, unless --remote_steering)", cfg.alpha)
    if cfg.calibrate_alphas:
        if not cfg.intervention:
            raise refuse("calibrate_alphas", "only with --intervention (a baked model's shift is fixed; a served one's too, unless --remote_steering)",
                         list(cfg.calibrate_alphas))
        if cfg.alpha is not None:
            raise refuse("alpha", "not with --calibrate_alphas, which chooses it", cfg.alpha)
        for a in cfg.calibrate_alphas:
            check_finite_nonneg("calibrate_alphas", a)
        if cfg.max_samples is None:
            raise refuse("max_samples", "a number with --calibrate_alphas: the development samples come after the "
                                        "reported ones", 0)
    check_positive_int("dev_samples", cfg.dev_samples)
    if cfg.calibrate_alphas:
        _check_dev_room(cfg)  # before anything loads: --dev_samples within what the data sets keep
    check_range("max_parse_gap", cfg.max_parse_gap, 0.0, 1.0, why="a share of samples")
    if cfg.remote_url:
        if cfg.baked:
            raise refuse("baked", "not with --remote_url (serve the baked model and pass --remote_intervened_model)",
                         cfg.baked)
        if cfg.intervention and not cfg.remote_steering:
            raise refuse("intervention", "with --remote_url only beside --remote_steering (the plugin's name for it); "
                                         "or serve the baked model and pass --remote_intervened_model", cfg.intervention)
        if cfg.remote_steering and not cfg.intervention:
            raise refuse("remote_steering", "needs --intervention: the local copy of the served steering, whose "
                                            "fingerprint keys the cache (a served name is not an identity)", cfg.remote_steering)
        if cfg.remote_steering and cfg.remote_intervened_model:
            raise refuse("remote_steering", "or --remote_intervened_model, not both (one intervened arm)", cfg.remote_steering)
        if cfg.remote_baked and not cfg.remote_intervened_model:
            raise refuse("remote_baked", "only with --remote_intervened_model (the local copy of that served model)",
                         cfg.remote_baked)
        if cfg.remote_intervened_url and not cfg.remote_intervened_model:
            raise refuse("remote_intervened_url", "only with --remote_intervened_model (the served name at that endpoint)",
                         cfg.remote_intervened_url)
        if cfg.remote_intervened_model and not cfg.remote_baked:
            raise refuse("remote_baked", "required with --remote_intervened_model: the local copy of the served baked "
                                         "model, whose iti_intervention/ keys the cache (a served name is not an identity)",
                         None)
    else:
        for name in ("remote_plain_model", "remote_intervened_model", "remote_intervened_url", "remote_baked",
                     "remote_steering"):
            if getattr(cfg, name):
                raise refuse(name, "only with --remote_url", getattr(cfg, name))
    check_existing_path("remote_baked", cfg.remote_baked)
    if cfg.remote_baked and not (Path(cfg.remote_baked) / "iti_intervention").is_dir():
        raise refuse("remote_baked", "a model saved by edit_weight.py (a directory holding iti_intervention/)",
                     cfg.remote_baked)
    check_range("remote_timeout", cfg.remote_timeout, 0.0, lo_open=True, why="seconds")
    if cfg.data_dir is not None:
        data_search(cfg.data_dir)  # the one check of --data_dir (used only after the model loads)
    if cfg.intervention or cfg.baked:  # the intervention's small files, read without a model: made for this one?
        from ..intervention import Intervention
        from ..models import same_model

        made_for = Intervention.load(cfg.intervention or Path(cast(str, cfg.baked)) / "iti_intervention").model_name
        if not same_model(made_for, cfg.model):  # the check bake and the lm-eval export make
            raise InterventionModelError(f"{cfg.intervention} was made for {made_for!r}, not for {cfg.model!r}" if cfg.intervention
                                         else f"{cfg.baked} was baked from {made_for!r}, not from {cfg.model!r}")
    return flags


def _check_dev_room(cfg: FaithfulnessConfig) -> None:
    """``--dev_samples`` no larger than what each data set keeps after the ``--max_samples`` reported ones, checked
    before anything loads for a data set read from its local file (whose size is fixed); one read from the hub is
    checked once loaded (:func:`iti.faithfulness.calibrate.development_samples`)."""
    from ..paths import data_search
    from .calibrate import check_dev_samples

    search = data_search(cfg.data_dir)
    for name in cfg.datasets:
        spec = split_spec(name, cfg.split)
        if (spec.rows is not None and spec.relative is not None and cfg.max_samples is not None
                and search.find(spec.relative) is not None):
            check_dev_samples(name, spec.rows, cfg.max_samples, cfg.dev_samples)


def build_arms(cfg: FaithfulnessConfig, cache: GenerationCache | None) -> tuple[dict[str, CachedGenerator], Any]:
    """``{"plain": ..., "intervened": ...}`` generators and the tokenizer that renders prompts.

    Local arms are keyed by what their weights are (:func:`iti.fingerprint.model_fingerprint`), never by the
    model's name or path, so a checkpoint overwritten in place is generated again; remote arms by URL, served
    name and the server's own model identity (see the module docstring)."""
    from ..fingerprint import model_fingerprint
    from ..intervention import Intervention
    from ..models import load_model

    arms: dict[str, CachedGenerator] = {}
    if cfg.remote_url:
        tokenizer = load_prompt_tokenizer(cfg.model)
        plain = cfg.remote_plain_model or cfg.model
        served = _served_models(cfg.remote_url, plain, "remote_plain_model", cfg.remote_timeout)
        # one answer per request, each stored as it arrives: a failure loses nothing that was finished
        arms["plain"] = CachedGenerator(RemoteGenerator(cfg.remote_url, plain, model_id=remote_model_id(cfg.remote_url, plain, served),
                                                        timeout=cfg.remote_timeout, tokenizer=tokenizer), cache, chunk=1, retry_errors=cfg.retry_errors, name=plain)
        if cfg.remote_steering:
            assert cfg.intervention is not None  # required with remote_steering (validate)
            inter = Intervention.load(cfg.intervention)  # made for cfg.model: checked by validate()
            plain_gen = arms["plain"].inner
            assert isinstance(plain_gen, RemoteGenerator)
            arms["intervened"] = plugin_arm(cfg, plain_gen, inter, inter.alpha if cfg.alpha is None else cfg.alpha, cache)
        if cfg.remote_intervened_model:
            assert cfg.remote_baked is not None  # required with remote_intervened_model (validate)
            url = cfg.remote_intervened_url or cfg.remote_url
            served = _served_models(url, cfg.remote_intervened_model, "remote_intervened_model", cfg.remote_timeout)
            baked_id = f"baked:{Intervention.load(Path(cfg.remote_baked) / 'iti_intervention').fingerprint()}"
            gen = RemoteGenerator(url, cfg.remote_intervened_model,
                                  model_id=remote_model_id(url, cfg.remote_intervened_model, served),
                                  intervention_id=baked_id, timeout=cfg.remote_timeout, tokenizer=tokenizer)
            arms["intervened"] = CachedGenerator(gen, cache, chunk=1, retry_errors=cfg.retry_errors, name=cfg.remote_intervened_model)
        return arms, tokenizer
    model, tokenizer = load_model(cfg.model, device_map=cfg.device_map, dtype=cfg.dtype)
    model_id = model_fingerprint(model)  # the weights, not the name: an overwritten checkpoint is a miss
    arms["plain"] = CachedGenerator(LocalGenerator(model, tokenizer, model_id=model_id, batch_size=cfg.batch_size), cache,
                                    chunk=cfg.batch_size, retry_errors=cfg.retry_errors, name=cfg.model)
    if cfg.intervention:
        inter = Intervention.load(cfg.intervention, model)  # made for cfg.model: checked by validate()
        if cfg.alpha is not None:
            inter = inter.with_alpha(cfg.alpha)
        arms["intervened"] = CachedGenerator(
            LocalGenerator(model, tokenizer, model_id=model_id, intervention=inter, batch_size=cfg.batch_size), cache,
            chunk=cfg.batch_size, retry_errors=cfg.retry_errors, name=cfg.model)
    elif cfg.baked:
        baked_model, _ = load_model(cfg.baked, device_map=cfg.device_map, dtype=cfg.dtype)
        inter = Intervention.load(Path(cfg.baked) / "iti_intervention")  # baked from cfg.model: checked by validate()
        baked_gen = LocalGenerator(baked_model, tokenizer, model_id=model_fingerprint(baked_model),
                                   intervention_id=f"baked:{inter.fingerprint()}", batch_size=cfg.batch_size)
        arms["intervened"] = CachedGenerator(baked_gen, cache, chunk=cfg.batch_size, retry_errors=cfg.retry_errors, name=cfg.baked)
    return arms, tokenizer


def plugin_arm(cfg: FaithfulnessConfig, server: RemoteGenerator, intervention: Any, alpha: float,
               cache: GenerationCache | None) -> CachedGenerator:
    """The intervened arm of ``--remote_steering``: ``server`` asked for the plugin's steering at ``alpha``, keyed by
    the local copy's shift at that alpha (:func:`~iti.faithfulness.generate.plugin_steering`)."""
    assert cfg.remote_steering is not None
    steering, steering_id = plugin_steering(cfg.remote_steering, intervention, alpha)
    arm = CachedGenerator(server.steered(steering, steering_id), cache, chunk=1, retry_errors=cfg.retry_errors,
                          name=f"{server.served_model}+{cfg.remote_steering}")
    arm.max_workers = cfg.max_workers
    return arm


def _served_models(url: str, name: str, option: str, timeout: float) -> dict[str, dict[str, Any]] | None:
    """What the server at ``url`` says it serves (``GET /models``), or None when it does not say; a served name
    that is missing from a list it gives is refused here, naming ``--option``, before any generation."""
    from ..openai_client import EndpointError, list_models

    try:
        served = list_models(url, timeout=min(timeout, 10.0))
    except EndpointError:
        return None
    if name not in served:
        raise RemoteModelError(f"{url} does not serve a model named {name!r} (it serves "
                               f"{', '.join(map(repr, sorted(served))) or 'nothing'}); fix --{option}")
    return served


def remote_model_id(url: str, served_model: str, served: dict[str, dict[str, Any]] | None) -> str:
    """The cache identity of a served model: URL, served name and what the server says the model is (vLLM's
    ``root``, the path it loaded), or ``root=unknown`` when it does not say."""
    entry = (served or {}).get(served_model) or {}
    root = entry.get("root") or "unknown"
    return f"remote:{url.rstrip('/')}|{served_model}|root={root}"


def ignored_config_notes(cfg: FaithfulnessConfig) -> list[str]:
    """One line per task that ignores some of the given task-config flags (they are applied to the other tasks)."""
    return [f"[faithfulness] task {task} ignores task config {', '.join(flags)} (it changes nothing there)"
            for task, flags in task_configs(cfg.tasks, cfg.task_config)[1].items()]


def chat_format(cfg: FaithfulnessConfig) -> str | None:
    """``--chat_format``, else the format an introspect short name stands for (``falcon-7b`` -> ``falcon``), else
    None (the tokenizer's chat template)."""
    from .models import chat_format_of

    return cfg.chat_format or chat_format_of(cfg.model)


def system_message(cfg: FaithfulnessConfig) -> str | None:
    """The system message a run renders: ``--system_message``; ``none`` for none; by default introspect's for the
    chat format (:data:`~iti.faithfulness.generate.DEFAULT_SYSTEM_MESSAGES`: Falcon's preamble, else none)."""
    if cfg.system_message is None or cfg.system_message == "default":
        return DEFAULT_SYSTEM_MESSAGES.get(chat_format(cfg) or "")
    return None if cfg.system_message == "none" else cfg.system_message


def stop_strings(cfg: FaithfulnessConfig) -> tuple[str, ...]:
    """The stop strings of every request: ``--stop_strings``, by default introspect's for the chat format
    (:data:`~iti.faithfulness.generate.STOP_STRINGS`; none for plain and tokenizer templates)."""
    if cfg.stop_strings is not None:
        return tuple(cfg.stop_strings)
    return STOP_STRINGS.get(chat_format(cfg) or "", ())


def prompt_renderer(cfg: FaithfulnessConfig, tokenizer: Any) -> Callable[[str], str]:
    """How a run renders each task prompt: in :func:`chat_format` (an introspect format, else the tokenizer's chat
    template), with :func:`system_message`."""
    fmt, system = chat_format(cfg), system_message(cfg)
    return lambda text: render_chat(tokenizer, text, fmt, system)


def generation_protocol(cfg: FaithfulnessConfig) -> dict[str, Any]:
    """What every request of a run is sent with, as summary.json / summary.md report it: the prompt text, chat format,
    system message, stop strings and length limits (introspect's: 1024 for every request)."""
    return {"prompt_text": "typos fixed (--fix_prompt_typos)" if cfg.fix_prompt_typos else "introspect's, typos included",
            "chat_format": chat_format(cfg) or "the tokenizer's chat template",
            "system_message": system_message(cfg), "stop_strings": list(stop_strings(cfg)),
            "max_new_tokens": {"classify": cfg.classify_max_new_tokens, "explain": cfg.max_new_tokens},
            "introspect_max_new_tokens": INTROSPECT_MAX_NEW_TOKENS}


def run_faithfulness(cfg: FaithfulnessConfig) -> dict[str, Any]:
    """Run every data set and task through each arm, write the samples, summary.json (after every row) and,
    with two arms, the comparison; return the summary."""
    flags = _check_inputs(cfg)
    for line in ignored_config_notes(cfg):
        print(line, file=sys.stderr, flush=True)
    if cfg.dry:
        return dry_run(cfg)
    out, cache_path = output_paths(cfg)
    check_output_dir(out, cfg)  # before the model loads
    replaying = cfg.replay or cfg.client == "Offline"
    if replaying:
        identities = _recorded_arms(out, cfg, cache_path)
    cache = GenerationCache(cache_path)
    t0 = time.perf_counter()
    arms, tokenizer = replay_arms(cfg, cache, identities, cache_path) if replaying else build_arms(cfg, cache)
    for gen in arms.values():
        gen.debug = cfg.debug
        if isinstance(gen.inner, RemoteGenerator):
            gen.max_workers = cfg.max_workers
    settings = run_settings(cfg)
    extra = {"settings_fingerprint": settings_fingerprint(settings), "arms": arm_identities(arms)}
    with run_directory(out).claimed(settings, force=cfg.force, extra=extra):
        return _run_claimed(cfg, out, flags, cache, arms, tokenizer, t0)


def arm_identities(arms: dict[str, CachedGenerator]) -> dict[str, dict[str, Any]]:
    """What keys each arm's cache entries (recorded in config.json before anything is generated, so that
    ``--replay`` needs neither the model nor the server)."""
    return {a: {"model_id": g.model_id, "intervention_id": g.intervention_id, "name": g.name,
                "cache_extras": dict(getattr(g.inner, "cache_extras", None) or {})} for a, g in arms.items()}


def _recorded_arms(out: Path, cfg: FaithfulnessConfig, cache_path: Path) -> dict[str, dict[str, Any]]:
    """The arm identities a finished run recorded in ``out``; ReplayError (one line) when there are none to replay."""
    from ..io import read_json

    if cfg.calibrate_alphas:
        raise ReplayError("--replay: not with --calibrate_alphas (the calibrated arm is chosen by generating)")
    record = out / "config.json"
    stored = read_json(record, "faithfulness run record") if record.is_file() else None
    arms = stored.get("arms") if isinstance(stored, dict) else None
    if not isinstance(arms, dict) or "plain" not in arms:
        raise ReplayError(f"--replay: {out} holds no run that recorded its arms (a run of this iti writes them to "
                          "config.json); run it once without --replay")
    if not cache_path.is_file():
        raise ReplayError(f"--replay: no generation cache at {cache_path} (give the run's --cache)")
    return arms


def load_prompt_tokenizer(model: str) -> Any:
    """The tokenizer that renders a run's prompts, loaded without the weights (replay, token counts)."""
    from transformers import AutoTokenizer

    from ..models import embedded_model_dir, resolve_model

    src = resolve_model(model)
    return AutoTokenizer.from_pretrained(str(embedded_model_dir(src.name)) if src.kind == "embedded" else src.location,
                                         trust_remote_code=False)


def replay_arms(cfg: FaithfulnessConfig, cache: GenerationCache, identities: dict[str, dict[str, Any]],
                cache_path: Path) -> tuple[dict[str, CachedGenerator], Any]:
    """The recorded arms behind the cache alone, and the tokenizer that renders the prompts (no weights loaded)."""
    tokenizer = load_prompt_tokenizer(cfg.model)
    arms = {a: CachedGenerator(ReplayGenerator(a, ident, str(cache_path)), cache, name=ident.get("name"))
            for a, ident in identities.items()}
    return arms, tokenizer


def output_paths(cfg: FaithfulnessConfig) -> tuple[Path, Path]:
    """(run directory, generation cache) of a run: ``--output_dir`` / ``--cache``, else under ``--persistent_dir``
    where introspect puts them, else the defaults."""
    root = Path(cfg.persistent_dir) if cfg.persistent_dir else None
    out = (Path(cfg.output_dir) if cfg.output_dir else
           root / "results" / "analysis" / default_output_dir(cfg).name if root else default_output_dir(cfg))
    cache = (Path(cfg.cache) if cfg.cache else
             root / "database" / "generations.sqlite" if root else default_cache_path())
    return out, cache


def reported_samples(cfg: FaithfulnessConfig, ds: FaithfulnessDataset) -> tuple[Sample, ...]:
    """The samples a run reports for a data set: the first ``--max_samples`` after the seeded shuffle, or all."""
    return ds.samples[: cfg.max_samples] if cfg.max_samples else ds.samples


def dry_run(cfg: FaithfulnessConfig) -> dict[str, Any]:
    """The run's plan, printed and returned, with nothing loaded but the data sets and nothing written: per data set,
    task and arm, the samples and the prompts (classify: one a sample; an explanation task: the classification, the
    explanation, and at most one classification of the explanation's text, sent only for an explanation that parses)."""
    arms = ["plain"] + (["intervened"] if cfg.intervention or cfg.baked or cfg.remote_intervened_model else [])
    plan, known, at_most = [], 0, 0
    for name in cfg.datasets:
        ds = load_faithfulness_dataset(name, cfg.data_dir, seed=cfg.seed, split=cfg.split)
        n = len(reported_samples(cfg, ds))
        for task in cfg.tasks:
            first = n if task == "classify" else 2 * n
            follow = 0 if task in ("classify", "answerable") else n
            plan.append({"dataset": ds.name, "task": task, "arms": arms, "samples": n, "prompts": first,
                         "follow_up_prompts_at_most": follow})
            known, at_most = known + first * len(arms), at_most + follow * len(arms)
            print(f"[faithfulness] dry: {ds.name} / {task} / {', '.join(arms)}: {n} samples, {first} prompts"
                  + (f" + at most {follow} follow-ups" if follow else "") + " per arm", flush=True)
    print(f"[faithfulness] dry: {known} prompts + at most {at_most} follow-ups in all; nothing loaded or written", flush=True)
    return {"dry": True, "plan": plan, "prompts": known, "follow_up_prompts_at_most": at_most}


def drop_cached_rows(cfg: FaithfulnessConfig, flags, cache: GenerationCache, arms: dict[str, CachedGenerator], datasets,
                     render, classify_settings: GenerationSettings, explain_settings: GenerationSettings) -> int:
    """Remove from ``cache`` every row the run would read for its reported samples: each task walked through each arm
    on the cache alone (:class:`~iti.faithfulness.generate.CacheWalk`), so the follow-up prompts of cached
    explanations are found too. Returns how many rows went."""
    keys = []
    for ds in datasets:
        samples = reported_samples(cfg, ds)
        for task in cfg.tasks:
            opts = prompt_options(flags[task], fix_typos=cfg.fix_prompt_typos)
            for gen in arms.values():
                walk = CacheWalk(gen)
                run_task(task, samples, walk, render, opts, classify_settings, explain_settings, False)  # type: ignore[arg-type]
                keys += walk.keys
    return cache.delete_many(keys)


def _run_claimed(cfg: FaithfulnessConfig, out: Path, flags, cache: GenerationCache, arms: dict[str, CachedGenerator],
                 tokenizer, t0: float) -> dict[str, Any]:
    render = prompt_renderer(cfg, tokenizer)
    classify_settings = GenerationSettings(max_new_tokens=cfg.classify_max_new_tokens, seed=cfg.seed, stop=stop_strings(cfg))
    explain_settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, stop=stop_strings(cfg))
    datasets = [load_faithfulness_dataset(name, cfg.data_dir, seed=cfg.seed, split=cfg.split) for name in cfg.datasets]
    if cfg.clean_cache:
        dropped = drop_cached_rows(cfg, flags, cache, arms, datasets, render, classify_settings, explain_settings)
        print(f"[faithfulness] --clean_cache: dropped {dropped} cached rows of this run", flush=True)
    calibration = None
    if cfg.calibrate_alphas:
        calibration = _calibrate(cfg, arms, cache, datasets, render,
                                 prompt_options(flags[cfg.tasks[0]], fix_typos=cfg.fix_prompt_typos), classify_settings, out)
    rows: list[dict[str, Any]] = []
    for ds in datasets:
        samples = reported_samples(cfg, ds)
        for task in cfg.tasks:
            opts = prompt_options(flags[task], fix_typos=cfg.fix_prompt_typos)
            per_arm = {}
            for arm, gen in arms.items():
                t = time.perf_counter()
                if cfg.progress:
                    print(f"[faithfulness] {ds.name} / {task} / {arm}: {len(samples)} samples", flush=True)
                results = run_task(task, samples, gen, render, opts, classify_settings, explain_settings, cfg.progress)
                per_arm[arm] = results
                _write_jsonl(out / "samples" / f"{ds.name}_{task}_{arm}.jsonl", ds.name, task, arm, results, render)
                s = summarize(results)
                if cfg.progress:
                    limit = truncation_stats(results)
                    print(f"[faithfulness]   {accuracy_name(task)} {s.accuracy:.3f}, faithfulness {s.faithfulness:.3f}, "
                          f"mismatch {s.mismatch}, error {s.error}, at the token limit {sum(limit['truncated'].values())} "
                          f"({time.perf_counter() - t:.0f} s)", flush=True)
            row = {"dataset": ds.name, "task": task, "task_config": list(flags[task]), "samples": len(samples),
                   "origin": ds.origin, "summaries": {a: asdict(summarize(r)) for a, r in per_arm.items()},
                   "first_answer": {a: first_answer_stats(r) for a, r in per_arm.items()},
                   "truncated": {a: truncation_stats(r) for a, r in per_arm.items()}}
            if "intervened" in per_arm:
                row["comparison"] = compare_arms(per_arm["plain"], per_arm["intervened"], task != "classify", seed=cfg.seed)
            rows.append(row)
            summary = _write_summary(out, cfg, arms, rows, time.perf_counter() - t0, calibration)  # after every row
    elapsed = time.perf_counter() - t0
    summary = _write_summary(out, cfg, arms, rows, elapsed, calibration)
    cache.close()
    if cfg.progress:
        hits = sum(g.hits for g in arms.values())
        made = sum(g.misses for g in arms.values())
        print(f"[faithfulness] done in {elapsed:.0f} s: {made} generated, {hits} from the cache; wrote {out}", flush=True)
    return summary


def _calibrate(cfg: FaithfulnessConfig, arms: dict[str, CachedGenerator], cache: GenerationCache,
               datasets: Sequence[FaithfulnessDataset], render: Callable[[str], str], opts: PromptOptions,
               settings: GenerationSettings, out: Path) -> dict[str, Any]:
    """Choose the intervened arm's alpha on the development samples (see :mod:`iti.faithfulness.calibrate`), put it
    into ``arms["intervened"]`` and write calibration.json / calibration.md; refuse when no candidate qualifies."""
    from ..intervention import Intervention
    from .calibrate import calibrate_strength, calibration_markdown, development_samples

    inner = arms["intervened"].inner
    built: dict[float, CachedGenerator] = {}
    served = None
    if isinstance(inner, RemoteGenerator):  # --remote_steering: one server, the strength per request
        assert cfg.intervention is not None
        served = Intervention.load(cfg.intervention)  # read once, not once per candidate

    def at(alpha: float) -> CachedGenerator:
        if alpha not in built:  # the chosen one is reused for the reported run
            if isinstance(inner, RemoteGenerator):
                built[alpha] = plugin_arm(cfg, inner, served, alpha, cache)
            else:
                assert isinstance(inner, LocalGenerator) and inner.intervention is not None  # needs --intervention
                gen = LocalGenerator(inner.model, inner.tokenizer, model_id=inner.model_id,
                                     intervention=inner.intervention.with_alpha(alpha), batch_size=cfg.batch_size)
                built[alpha] = CachedGenerator(gen, cache, chunk=cfg.batch_size, retry_errors=cfg.retry_errors, name=cfg.model)
            built[alpha].debug = cfg.debug
        return built[alpha]

    dev, ranges = {}, {}
    for ds in datasets:
        dev[ds.name], ranges[ds.name] = development_samples(ds.samples, cfg.max_samples, cfg.dev_samples, ds.name)
    cal = calibrate_strength(arms["plain"], at, dev, ranges, render, opts, settings, cfg.calibrate_alphas,
                             max_gap=cfg.max_parse_gap, progress=cfg.progress,
                             log=(lambda line: print(line, flush=True)) if cfg.progress else (lambda line: None))
    atomic_write_json(out / "calibration.json", cal.to_dict())
    atomic_write_text(out / "calibration.md", calibration_markdown(cal))
    if cal.chosen is None:
        raise InvalidOptionError(f"--calibrate_alphas: even the smallest candidate ({min(cfg.calibrate_alphas):g}) moves the "
                                 f"first-answer parse rate of some data set more than {cfg.max_parse_gap * 100:g} points from "
                                 f"the plain model's; "
                                 f"see {out / 'calibration.md'} and try smaller alphas")
    arms["intervened"] = at(cal.chosen)
    if cfg.progress:
        print(f"[faithfulness] intervened arm at alpha {cal.chosen:g} (calibrated)", flush=True)
    return cal.to_dict()


def _write_summary(out: Path, cfg: FaithfulnessConfig, arms: dict[str, CachedGenerator], rows: list[dict[str, Any]],
                   elapsed: float, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    generation = generation_protocol(cfg)
    summary = {
        "config": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items()},
        "generation": generation,
        "arms": {a: {"model": g.model_id, "name": g.name, "intervention": g.intervention_id, "cache_hits": g.hits, "generated": g.misses,
                     **dict(getattr(g.inner, "cache_extras", None) or {})}
                 for a, g in arms.items()},
        "seconds": elapsed,
        "calibration": calibration,
        "rows": rows,
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    compared = [r for r in rows if "comparison" in r]
    if compared:
        atomic_write_text(out / "comparison.md", comparison_markdown(compared) + "\n" + first_answer_markdown(rows)
                          + "\n" + truncation_markdown(rows, generation["max_new_tokens"]))
        plot_comparison(compared, out / "faithfulness.png")
    return summary


def _write_jsonl(path: Path, dataset: str, task: str, arm: str, results, render) -> None:
    lines = []
    for r in results:
        d = r.to_dict()
        d.update(dataset=dataset, task=task, arm=arm)
        for step in ("classify", "explain", "reclassify"):
            if d.get(step):
                d[step]["rendered_prompt"] = render(d[step]["prompt"])
        lines.append(json.dumps(d, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")

