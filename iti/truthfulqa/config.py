"""Settings of a k-fold TruthfulQA validation (honest_llama's validate_2fold): :class:`ValidationConfig`, checked
before anything loads, and the rows it plans (:class:`RowSpec`, :func:`plan_rows`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError
from ..features import read_manifest
from ..options import (
    check_choice,
    check_each,
    check_existing_path,
    check_finite_nonneg,
    check_folds,
    check_positive_int,
    check_range,
    check_seed,
)
from .budget import head_count_arg, parse_head_count
from .judge import DEFAULT_INFO_JUDGE, DEFAULT_TRUE_JUDGE, JUDGE_KINDS
from .prompts import INSTRUCTIONS

#: files of which a local model directory holds at least one for its tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


#: the transfer sets of ``--eval_dataset`` (iti.truthfulqa.transfer.TRANSFER_SETS, named here without importing it)
TRANSFER_SET_NAMES = ("nq_open", "trivia_qa")

#: TruthfulQA's number of questions: the question count assumed when no features manifest says otherwise.
TRUTHFULQA_QUESTIONS = 817  # data.NUM_QUESTIONS, without importing pandas for the command line's parser

#: default parent of `iti validate` output directories, relative to the output root (iti.paths.output_root)
VALIDATION_RESULTS = "validation/results"


def check_model_dir(option: str, directory: str) -> None:
    """Refuse a local directory that is not a saved model (no config.json, or no tokenizer file), naming
    ``--option``, the directory and what is missing, before anything loads."""
    d = Path(directory)
    missing = [] if (d / "config.json").is_file() else ["config.json"]
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"tokenizer file (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise InvalidOptionError(f"--{option}: a model directory (save_pretrained's config.json, weights and tokenizer), "
                                 f"but {d} has no {' and no '.join(missing)}")


#: the direction methods and unit selectors a TruthfulQA run takes (iti.methods / iti.selectors names)
HEAD_METHODS = ("probe", "mass_mean", "random")
HEAD_SELECTORS = ("probe_accuracy", "random")
_METHOD_HELP = ("direction method (iti.methods): probe (the probe's weights; honest_llama's default), mass_mean "
                "(--use_center_of_mass) or random; default probe, or what honest_llama's flags say")
_SELECTOR_HELP = ("which heads (iti.selectors): probe_accuracy (the top ones by probe accuracy) or random "
                  "(--use_random_dir); default probe_accuracy, or what honest_llama's flags say")


def resolve_method_selector(cfg: Any) -> None:
    """One vocabulary: ``--method`` / ``--selector`` (the library's names) and honest_llama's ``--use_center_of_mass``
    / ``--use_random_dir`` (their aliases, with its precedence: mass-mean first, random heads with random directions
    unless mass-mean) set the same two choices; after this both spellings on ``cfg`` agree. A contradiction, and the
    two combinations honest_llama's flags cannot say (so no run record could hold them), are refused."""
    from_flags_method = "mass_mean" if cfg.use_center_of_mass else ("random" if cfg.use_random_dir else None)
    from_flags_selector = "random" if cfg.use_random_dir else None
    check_choice("method", cfg.method, HEAD_METHODS, none_ok=True)
    check_choice("selector", cfg.selector, HEAD_SELECTORS, none_ok=True)
    for name, given, implied in (("method", cfg.method, from_flags_method), ("selector", cfg.selector, from_flags_selector)):
        if given is not None and implied is not None and given != implied:
            raise InvalidOptionError(f"--{name} {given} contradicts --use_center_of_mass / --use_random_dir (honest_llama's "
                                     f"spelling of --{name} {implied}); give one of the two")
    method = cfg.method or from_flags_method or "probe"
    selector = cfg.selector or from_flags_selector or "probe_accuracy"
    if (method, selector) in (("random", "probe_accuracy"), ("probe", "random")):
        raise InvalidOptionError(f"--method {method} --selector {selector}: not a run honest_llama's flags can say (random "
                                 "directions come with random heads; probe weights with the top heads); its controls are "
                                 "rows of every run already (random heads, random direction)")
    cfg.method, cfg.selector = method, selector
    cfg.use_center_of_mass, cfg.use_random_dir = method == "mass_mean", selector == "random"


#: the instruction prompts of honest_llama's MC and generation prompts, by name
INSTRUCTION_VARIANTS = tuple(INSTRUCTIONS)


@dataclass
class ValidationConfig:
    """Settings of one ``iti validate`` run: what to fit on, the controls, sweeps and seeds, and what to evaluate."""
    model_name: str = field(default="smollm2-135m", metadata={
        "help": "embedded name, honest_llama short name, hub id or local dir (the CLI stores the resolved name)"})
    dataset_name: str = field(default="tqa_mc2", metadata={"help": "features the probes and directions are fit on"})
    activations_dataset: str = field(default="tqa_gen_end_q", metadata={
        "help": "features whose projections set the shift's std"})
    num_heads: int | str = field(default=48, metadata={
        "help": "heads to intervene on (the top ones by probe accuracy, random ones with --use_random_dir): a count, "
                "or a share of all heads such as 4.7%",
        "type": head_count_arg})
    alpha: float = field(default=15.0, metadata={"help": "intervention strength, in std of the projections"})
    num_fold: int = field(default=2, metadata={"help": "folds of the cross-validation over questions"})
    val_ratio: float = field(default=0.2, metadata={"help": "share of the training questions held out to validate the probes"})
    seed: int = field(default=42, metadata={"help": "seed of the fold split, probes and random controls"})
    use_center_of_mass: bool = field(default=False, metadata={
        "help": "honest_llama's spelling of --method mass_mean: mass-mean directions (without either flag: probe weights "
                "on the top heads); with --use_random_dir: mass-mean directions on random heads"})
    use_random_dir: bool = field(default=False, metadata={
        "help": "honest_llama's spelling of --selector random (with --method random unless --use_center_of_mass): "
                "random heads instead of the top ones, with random directions"})
    method: str | None = field(default=None, metadata={"help": _METHOD_HELP, "choices": HEAD_METHODS})
    selector: str | None = field(default=None, metadata={"help": _SELECTOR_HELP, "choices": HEAD_SELECTORS})
    instruction_prompt: str = field(default="default", metadata={
        "help": "instruction before the questions", "choices": INSTRUCTION_VARIANTS})
    preset: str = field(default="qa", metadata={
        "help": "prompt format: honest_llama's (qa) or lm-evaluation-harness's", "choices": ("qa", "lm-eval")})
    judge: str | None = field(default=None, metadata={
        "help": "True, Info and True*Info of the answers by LLM judges: a bare --judge or --judge endpoint through an "
                "OpenAI-compatible endpoint (ITI_JUDGE_URL, ITI_JUDGE_TRUE_MODEL, ITI_JUDGE_INFO_MODEL); --judge hf "
                "in-process (--judge_model, --judge_info_model). Default: no judging",
        "choices": JUDGE_KINDS, "const": "endpoint"})
    judge_model: str = field(default=DEFAULT_TRUE_JUDGE, metadata={
        "help": "the True judge of --judge hf: embedded name, local dir or hub id"})
    judge_info_model: str = field(default=DEFAULT_INFO_JUDGE, metadata={
        "help": "the Info judge of --judge hf (may be the True judge)"})
    judge_name: str | None = field(default=None, metadata={
        "help": "honest_llama's name of the GPT-judge (True) model: judged through an OpenAI-compatible endpoint as the "
                "original does (ITI_JUDGE_URL, default OpenAI's API; key ITI_JUDGE_API_KEY or OPENAI_API_KEY); implies "
                "--judge endpoint, needs --info_name; with --judge hf, the in-process True judge instead"})
    info_name: str | None = field(default=None, metadata={
        "help": "honest_llama's name of the GPT-info model (see --judge_name)"})
    judge_device_map: str | None = field(default=None, metadata={
        "help": "where the --judge hf judges load, apart from the steered model: e.g. auto, cpu, cuda:1 "
                "(default: as load_model, the first GPU, else the CPU)"})
    judge_batch_size: int = field(default=16, metadata={"help": "judge prompts per forward pass (--judge hf)"})
    methods: list[str] = field(default_factory=lambda: ["ITI"], metadata={
        "choices": ("ITI", "CAA", "RepE"),
        "help": "steering methods compared at equal cost (needs --kl_budget or --ce_budget beyond ITI): CAA (the mean "
                "over questions of true minus false activations on the residual stream after one block) and RepE "
                "(repeng's pca_diff there), at the layer whose probe scores best on the fold's training questions, each "
                "against a random direction at that site; ITI's rows always run"})
    control_seeds: list[int] = field(default_factory=lambda: [42], metadata={
        "help": "seeds of ITI and the random controls (default: --seed)", "default_from": "seed"})
    sweep_alphas: list[float] = field(default_factory=list, metadata={
        "help": "extra alphas (MC, CE, KL only), reusing the probes"})
    sweep_heads: list[int] = field(default_factory=list, metadata={"help": "extra head counts (MC, CE, KL only)"})
    generate: bool = field(default=True, metadata={
        "help": "skip greedy answers and BLEU/ROUGE", "flag": "no_generate", "invert": True})
    generate_controls: bool = field(default=False, metadata={"help": "also generate for the control rows"})
    max_new_tokens: int = field(default=50, metadata={"help": "length limit of the generated answers"})
    ce_samples: int = field(default=100, metadata={"help": "neutral texts for the CE/KL cost"})
    ce_corpus: str = field(default="imdb", metadata={
        "help": "neutral text for CE/KL: offline IMDB sample or the hub's openwebtext-10k", "choices": ("imdb", "owt")})
    tune_on_all_questions: bool = field(default=False, metadata={
        "help": "std of projections over all questions (the original) instead of the training fold"})
    mc_shift_start: str = field(default="last_context_token", metadata={
        "help": "where the MC shift starts: the last context token (every answer token scored under the shift, as "
                "the steered model generates it), the first answer token (iti's former default: the first answer "
                "token is scored unsteered), or the original's len(question prompt) + 4 (the second answer token "
                "for SmolLM2's and Llama 2's tokenizers)",
        "choices": ("last_context_token", "first_answer_token", "original")})
    kl_budget: list[float] = field(default_factory=list, metadata={
        "help": "KL budgets (nats per token): ITI and each control get the alpha whose KL on the search texts meets "
                "each budget (bisection); several budgets trace the frontier (default: none, the fixed --alpha)",
        "nargs": "+"})
    ce_budget: list[float] = field(default_factory=list, metadata={
        "help": "CE-increase budgets (nats per token), as --kl_budget", "nargs": "+"})
    budget_texts: int = field(default=20, metadata={
        "help": "neutral texts the budget search measures on (drawn after, never among, the reported CE/KL texts)"})
    max_questions: int | None = field(default=None, metadata={
        "help": "first N questions of the features only (quick runs)"})
    eval_dataset: list[str] = field(default_factory=list, metadata={
        "choices": TRANSFER_SET_NAMES, "nargs": "+",
        "help": "also score each row's TruthfulQA-fitted steering, unchanged, on the ITI paper's transfer sets (its Table "
                "4): NQ-open and TriviaQA, the first gold answer against the GPT-4 false answer in honest_llama's MC prompt; "
                "rows whose false answer is a gold answer are counted apart and left out of the headline"})
    eval_max_questions: int | None = field(default=None, metadata={
        "help": "first N questions of each --eval_dataset only (default: all 3,610)"})
    many_shot: int = field(default=0, metadata={
        "help": "the paper's few-shot baseline: add a few-shot row and a few-shot + ITI row whose prompts carry K "
                "TruthfulQA questions of the fold's training questions (never an evaluated one) with their best "
                "answers, after the instruction and before the QA primer (where honest_llama's many_shot_prefix goes); "
                "default 0: none"})
    instruction_rows: list[str] = field(default_factory=list, metadata={
        "choices": INSTRUCTION_VARIANTS, "nargs": "+",
        "help": "the paper's instruction-prompting comparison: a plain row for each of these --instruction_prompt "
                "variants beside the run's own (e.g. none informative: no instruction, and honest_llama's shorter one), "
                "in the same summary with CIs and the paired difference to the baseline; qa preset only"})
    model_prefix: str = field(default="", metadata={
        "choices": ("", "honest_", "local_"),
        "help": "honest_llama's --model_prefix: evaluate the baked model honest_<model_name> (its hub copy) or "
                "local_<model_name> (edit_weight.py's output directory) with the features, probes and directions of "
                "<model_name>, a declared use of another checkpoint's features recorded in run.json; its plain row is "
                "the 'baked-in' row"})
    features_dir: str | None = field(default=None, metadata={
        "help": "where the feature directories are (default: features/ of the output root, see iti.paths)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "data root holding truthfulqa/ (default: $ITI_DATA_DIR, then ../shared/data, then the hub)"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass"})
    force: bool = field(default=False, metadata={"help": "discard rows in the output directory that other settings produced"})
    features_from_other_weights: bool = field(default=False, metadata={
        "help": "use features collected from other weights than the model's (refused otherwise; recorded in run.json)"})

    def __post_init__(self) -> None:
        if isinstance(self.judge, bool):  # the Python API's judge=True of old: the endpoint
            self.judge = "endpoint" if self.judge else None
        resolve_method_selector(self)
        if (self.judge_name is None) != (self.info_name is None):
            given, missing = ("judge_name", "info_name") if self.info_name is None else ("info_name", "judge_name")
            raise InvalidOptionError(f"--{given} without --{missing}: honest_llama judges True and Info with a model each; "
                                     "give both")
        if self.judge_name is not None:
            if self.judge == "hf":  # the in-process judges by these names
                self.judge_model, self.judge_info_model = self.judge_name, str(self.info_name)
            else:
                self.judge = "endpoint"

    def validate(self) -> None:
        """Refuse impossible settings with one :class:`~iti.errors.InvalidOptionError` naming the option, before
        anything is loaded or written. Reads only the features manifest (for the model's layers x heads and the
        number of questions; without one, ``max_questions`` or TruthfulQA's 817 questions)."""
        check_finite_nonneg("alpha", self.alpha)
        check_choice("mc_shift_start", self.mc_shift_start, ("last_context_token", "first_answer_token", "original"))
        check_choice("judge", self.judge, JUDGE_KINDS, none_ok=True)
        if self.judge == "hf":
            from ..errors import UnknownModelError
            from ..models import resolve_model
            from ..options import refuse

            for name in ("judge_model", "judge_info_model"):  # a misspelt judge fails before the steered model loads
                try:
                    judge_source = resolve_model(getattr(self, name))
                except UnknownModelError:
                    raise refuse(name, "an embedded name, a local directory or a hub id 'org/name'", getattr(self, name)) from None
                if judge_source.kind == "local":
                    check_model_dir(name, judge_source.location)
        if self.judge is not None and not self.generate:
            raise InvalidOptionError(f"--judge {self.judge}: the judges score the generated answers, but --no_generate "
                                     "generates none; drop --no_generate to judge, or --judge to skip judging")
        check_each(check_finite_nonneg, "sweep_alphas", self.sweep_alphas)
        check_seed("seed", self.seed)
        check_each(check_seed, "control_seeds", self.control_seeds)
        for name in ("batch_size", "max_new_tokens", "ce_samples", "judge_batch_size"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("max_questions", self.max_questions, none_ok=True)
        check_existing_path("features_dir", self.features_dir)
        if self.data_dir is not None:
            from ..paths import data_search

            data_search(self.data_dir)  # the one check of --data_dir (used only after the model loads)
        manifest_path = self.features_path(self.dataset_name) / "manifest.json"
        manifest = read_manifest(manifest_path.parent) if manifest_path.is_file() else None
        total = None
        if manifest is not None:
            from ..architectures import HeadGeometry

            total = HeadGeometry.from_dict(manifest["model"]["geometry"]).num_total_heads
        why = f"the layers x heads of {self.model_name}" if total else None
        if isinstance(self.num_heads, str) and self.num_heads.strip().endswith("%"):
            if total is None:
                raise InvalidOptionError(f"--num_heads {self.num_heads}: a share of all heads needs the features manifest "
                                         f"(collect {self.dataset_name} first) to know how many heads the model has")
            self.num_heads = parse_head_count(self.num_heads, total)
        elif isinstance(self.num_heads, str):
            self.num_heads = parse_head_count(self.num_heads, total or 10**9)
        check_range("num_heads", self.num_heads, 1, total, integer=True, why=why)
        if self.kl_budget and self.ce_budget:
            raise InvalidOptionError("--kl_budget and --ce_budget: give one of them (a row is matched on one cost)")
        for method in self.methods:
            check_choice("methods", method, ("ITI", "CAA", "RepE"))
        if set(self.methods) - {"ITI"} and not (self.kl_budget or self.ce_budget):
            raise InvalidOptionError(f"--methods {' '.join(self.methods)}: other methods than ITI are compared with it at "
                                     "equal cost (their vectors have no common unit of strength); give --kl_budget or --ce_budget")
        for name in ("kl_budget", "ce_budget"):
            for value in getattr(self, name):
                check_range(name, value, 0.0, None, lo_open=True, why="nats per token")
        check_positive_int("budget_texts", self.budget_texts)
        if set(self.methods) - {"ITI"} and manifest is not None and "layer_wise" not in manifest.get("files", {}):
            raise InvalidOptionError(f"--methods {' '.join(self.methods)}: CAA and RepE steer the residual stream, but the "
                                     f"{self.dataset_name} features in {manifest_path.parent} were collected without it "
                                     "(--no_layer_wise); collect them again without that flag")
        check_each(check_range, "sweep_heads", self.sweep_heads, lo=1, hi=total, integer=True, why=why)
        if manifest is not None:
            available = len(set(manifest["question_ids"]))
            source = f"the {self.dataset_name} features"
        else:
            available, source = TRUTHFULQA_QUESTIONS, "TruthfulQA"
        if self.max_questions is not None and self.max_questions <= available:
            n, source, option = self.max_questions, "--max_questions", "max_questions"
        else:
            n, option = available, "max_questions" if manifest is None else "dataset_name"
        check_folds(n, self.num_fold, self.val_ratio, questions_option=option, source=source)
        check_positive_int("eval_max_questions", self.eval_max_questions, none_ok=True)
        for name in self.eval_dataset:
            check_choice("eval_dataset", name, TRANSFER_SET_NAMES)
        if self.eval_dataset:
            from .transfer import load_transfer

            for name in self.eval_dataset:  # a missing or broken copy fails here, before the model loads
                load_transfer(name, self.data_dir)
        check_range("many_shot", self.many_shot, 0, None, integer=True)
        smallest_train = n - -(-n // int(self.num_fold))  # the training questions beside the largest test fold
        if self.many_shot > smallest_train:
            raise InvalidOptionError(f"--many_shot {self.many_shot}: the shots come from the fold's training questions "
                                     f"(never an evaluated one), and the smallest fold has {smallest_train} ({n} questions, "
                                     f"{self.num_fold} folds); ask for at most {smallest_train}")
        check_choice("model_prefix", self.model_prefix, ("", "honest_", "local_"))
        for variant in self.instruction_rows:
            check_choice("instruction_rows", variant, INSTRUCTION_VARIANTS)
        if self.instruction_rows and self.preset != "qa":
            raise InvalidOptionError(f"--instruction_rows {' '.join(self.instruction_rows)}: the {self.preset} preset's prompts "
                                     "carry no instruction; use --preset qa")

    def features_path(self, dataset: str) -> Path:
        """The features directory of ``dataset`` for this model: ``<features_dir>/<model_name>_<dataset>``."""
        from ..paths import features_dir

        return (Path(self.features_dir) if self.features_dir else features_dir()) / f"{self.model_name}_{dataset}"

    @property
    def method_label(self) -> str:
        """The direction method, with ``random-heads_`` before it when random heads carry a non-random direction
        (both honest_llama flags): names the default output directory, so the four flag combinations never share one."""
        assert self.method is not None and self.selector is not None
        if self.selector == "random" and self.method != "random":
            return f"random-heads_{self.method}"
        return self.method


@dataclass(frozen=True)
class RowSpec:
    """One evaluated configuration."""

    name: str  # baseline | ITI | random heads | random direction | CAA | RepE | random residual direction
    alpha: float
    num_heads: int
    seed: int
    heads: str = "top"  # the selector, under the name stored rows keep: "top" (probe_accuracy) or "random"
    direction: str = "mass_mean"  # the method (iti.methods name), under the name stored rows keep
    generate: bool = False
    budget: float | None = None  # alpha chosen per fold so that the cost meets this budget (alpha: where the search starts)
    budget_metric: str = "KL"
    site: str = "head_out"  # resid_post: one vector on the residual stream after the layer the probes rank first
    shots: int = 0  # few-shot rows: TruthfulQA questions of the fold's training split in the prompt
    instruction: str = ""  # instruction-prompting rows: the --instruction_prompt variant this plain row is asked with

    @property
    def steers(self) -> bool:
        """Whether the row steers (every row but the plain model's: baseline, baked-in, few-shot)."""
        return self.name not in PLAIN_ROWS

    @property
    def selector(self) -> str:
        """The selector in the library's vocabulary (iti.selectors)."""
        return "probe_accuracy" if self.heads == "top" else self.heads

    @property
    def key(self) -> str:
        """File-safe id of the row (e.g. ``ITI_a15_k48_s42``, ``ITI_kl0.1_k48_s42``); its results go to
        rows/fold<i>_<key>.json."""
        strength = f"{self.budget_metric.lower()}{self.budget:g}" if self.budget is not None else f"a{self.alpha:g}"
        units = f"k{self.num_heads}" if self.site == "head_out" else f"l{self.num_heads}"  # heads, or layers
        shots = f"_fs{self.shots}" if self.shots else ""
        shots += f"_ins-{self.instruction}" if self.instruction else ""
        return f"{self.name.replace(' + ', '+').replace(' ', '-')}_{strength}_{units}_s{self.seed}{shots}"

    @property
    def prompted(self) -> bool:
        """Whether the row is a TruthfulQA prompting baseline (few-shot, another instruction): not transferred."""
        return bool(self.shots or self.instruction)


def row_label(entry: dict[str, Any]) -> str:
    """How a summary table names a row entry: its kind, then its cost budget and its instruction variant if it has them
    (``ITI (KL 1)``, ``instruction prompt: none``)."""
    label = f"{entry['name']} ({entry['budget_metric']} {entry['budget']:g})" if entry.get("budget") is not None else entry["name"]
    return label + (f": {entry['instruction']}" if entry.get("instruction") else "")


#: the rows that evaluate the model as loaded: the plain model, a baked one (--model_prefix), few-shot prompting,
#: another instruction prompt
PLAIN_ROWS = ("baseline", "baked-in", "few-shot", "instruction prompt")


#: the direction method of each residual-stream row kind (iti.methods names)
RESIDUAL_METHODS = {"CAA": "mean_diff", "RepE": "pca_diff"}


def plan_rows(cfg: ValidationConfig) -> list[RowSpec]:
    """The rows to evaluate, in order: baseline, then per seed ITI and the random-heads and random-direction
    controls, with the alpha and head-count sweeps after the main seed."""
    d = str(cfg.method)
    heads = "random" if cfg.selector == "random" else "top"  # the stored rows' name of the selector
    rows = [RowSpec("baked-in" if cfg.model_prefix else "baseline", 0.0, 0, cfg.seed, generate=cfg.generate)]
    # the main seed first, then the sweeps, then the other seeds: an interrupted run has the key rows first
    seeds = [cfg.seed] + [s for s in cfg.control_seeds if s != cfg.seed]
    k = int(cfg.num_heads)  # resolved from a share by validate()
    metric, budgets = ("CE", cfg.ce_budget) if cfg.ce_budget else ("KL", cfg.kl_budget)
    strengths: list[float | None] = list(budgets) if budgets else [None]
    for i, s in enumerate(seeds):
        for j, b in enumerate(strengths):
            main = i == 0 and j == 0
            rows.append(RowSpec("ITI", cfg.alpha, k, s, heads, d, generate=cfg.generate and main, budget=b, budget_metric=metric))
            rows.append(RowSpec("random heads", cfg.alpha, k, s, "random", d if d != "random" else "mass_mean",
                                generate=cfg.generate_controls and j == 0, budget=b, budget_metric=metric))
            rows.append(RowSpec("random direction", cfg.alpha, k, s, "top", "random", generate=cfg.generate_controls and j == 0,
                                budget=b, budget_metric=metric))
            residual = [m for m in ("CAA", "RepE") if m in cfg.methods]
            for m in residual:  # one layer each, its search starting from a multiplier of 1
                rows.append(RowSpec(m, 1.0, 1, s, "top", RESIDUAL_METHODS[m], budget=b, budget_metric=metric, site="resid_post"))
            if residual:
                rows.append(RowSpec("random residual direction", 1.0, 1, s, "top", "random", budget=b, budget_metric=metric,
                                    site="resid_post"))
        if i == 0 and cfg.many_shot:  # the paper's few-shot prompting rows, the ITI one as the main ITI row
            rows.append(RowSpec("few-shot", 0.0, 0, s, generate=cfg.generate, shots=cfg.many_shot))
            rows.append(RowSpec("few-shot + ITI", cfg.alpha, k, s, heads, d, generate=cfg.generate, budget=strengths[0],
                                budget_metric=metric, shots=cfg.many_shot))
        if i == 0:  # the paper's instruction-prompting rows: the plain model under the other instruction variants
            rows += [RowSpec("instruction prompt", 0.0, 0, s, generate=cfg.generate, instruction=v)
                     for v in dict.fromkeys(cfg.instruction_rows) if v != cfg.instruction_prompt]
            rows += [RowSpec("ITI", a, k, cfg.seed, heads, d) for a in cfg.sweep_alphas if a != cfg.alpha]
            rows += [RowSpec("ITI", cfg.alpha, n, cfg.seed, heads, d) for n in cfg.sweep_heads if n != k]
    return rows


#: The prompt sets features can be collected on (honest_llama's get_activations datasets).
DATASETS = ("tqa_mc2", "tqa_gen", "tqa_gen_end_q")


@dataclass
class CollectConfig:
    """Settings of one ``iti collect`` run (honest_llama's get_activations options, plus sharding, merging and
    dtypes); the command line is generated from these fields."""
    model_name: str = field(default="smollm2-135m", metadata={"help": "embedded name, honest_llama short name, hub id or local dir"})
    model_prefix: str = field(default="", metadata={
        "choices": ("", "honest_", "local_"), "help": "honest_llama's --model_prefix: collect from honest_<model_name> (its "
        "hub copy with ITI baked in) or local_<model_name> (edit_weight.py's output), filed under that name"})
    dataset_name: str = field(default="tqa_mc2", metadata={"choices": DATASETS, "help": "the prompt set"})
    data_dir: str | None = field(default=None, metadata={
        "help": "data root holding truthfulqa/ (default: $ITI_DATA_DIR, then ../shared/data, then the hub)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "where feature directories go (default: features/ under the output root: $ITI_OUTPUT_DIR, else the "
                "checkout, else the working directory)"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward pass"})
    dtype: str | None = field(default=None, metadata={"help": "compute dtype (default float32 on CPU, float16 on GPU; auto: bfloat16 instead on a CPU with AMX or AVX512-BF16)"})
    save_dtype: str = field(default="float16", metadata={"choices": ("float16", "float32"), "help": "dtype of the saved features"})
    device_map: str | None = field(default=None, metadata={"help": "e.g. auto (spread over GPUs), cpu, cuda:0"})
    device: int | None = field(default=None, metadata={
        "help": "honest_llama's GPU index: load the model on cuda:N (refused where there is no such GPU; default: the "
                "CPU, or --device_map)"})
    max_questions: int | None = field(default=None, metadata={"help": "first N questions only (quick runs)"})
    seed: int = field(default=42, metadata={"help": "seed of the random questions in tqa_gen_end_q"})
    layer_wise: bool = field(default=True, metadata={"flag": "no_layer_wise", "invert": True,
                                                     "help": "skip the residual-stream (layer-wise) features"})
    shard: str | None = field(default=None, metadata={
        "help": "collect shard i/n only (default under accelerate launch: RANK/WORLD_SIZE)"})
    merge: bool = field(default=False, metadata={"help": "merge finished shards instead of collecting"})
    force: bool = field(default=False, metadata={"help": "replace an existing output of a different job"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model repository's own code (off by default)"})
    progress: bool = field(default=True, metadata={"flag": "quiet", "invert": True, "help": "no progress bar"})


@dataclass
class BakeConfig:
    """Settings of one ``iti bake`` run (honest_llama's edit_weight options): a saved intervention, or the settings
    to fit one on every question; the command line is generated from these fields."""
    output_dir: str | None = field(default=None, metadata={
        "help": "where the baked model is saved (safetensors, loadable by transformers/vLLM/TGI); default: edit_weight.py's "
                "results_dump/edited_models_dump/<model>_seed_<seed>_top_<K>_heads_alpha_<alpha> in the working directory, "
                "which --model_prefix local_ names"})
    model_name: str = field(default="smollm2-135m", metadata={"help": "embedded name, honest_llama short name, hub id or local dir"})
    model_prefix: str = field(default="", metadata={
        "choices": ("", "honest_", "local_"), "help": "honest_llama's --model_prefix: bake into honest_<model_name> or "
        "local_<model_name> (already baked: needs --add_to_existing), fitting on <model_name>'s features"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model repository's own code (off by default)"})
    intervention: str | None = field(default=None, metadata={
        "help": "a saved intervention directory (e.g. intervention_fold0 of validate_2fold) or steering directory (iti.Steering.save); without it, the intervention "
                "is fitted on ALL questions as edit_weight.py does"})
    alpha: float | None = field(default=None, metadata={
        "help": "strength (default 15 when fitting; with --intervention, its own alpha)"})
    num_heads: int | None = field(default=None, metadata={
        "help": "heads to intervene on: the top ones by probe accuracy, random ones with --use_random_dir (default 48; "
                "fitting only)"})
    use_center_of_mass: bool = field(default=False, metadata={
        "help": "mass-mean directions (without either flag: probe weights on the top heads); with --use_random_dir: "
                "mass-mean directions on random heads, as edit_weight.py (fitting only)"})
    use_random_dir: bool = field(default=False, metadata={
        "help": "random heads instead of the top ones, with random directions; with --use_center_of_mass: random heads "
                "with mass-mean directions, as edit_weight.py (fitting only)"})
    method: str | None = field(default=None, metadata={"help": _METHOD_HELP + " (fitting only)", "choices": HEAD_METHODS})
    selector: str | None = field(default=None, metadata={"help": _SELECTOR_HELP + " (fitting only)", "choices": HEAD_SELECTORS})
    dataset_name: str = field(default="tqa_mc2", metadata={
        "help": "features the probes and directions are fit on (fitting only)", "choices": DATASETS})
    activations_dataset: str = field(default="tqa_gen_end_q", metadata={
        "help": "features whose projections set the shift's std (fitting only)", "choices": DATASETS})
    val_ratio: float | None = field(default=None, metadata={
        "help": "share of the questions held out to validate the probes (default 0.2; fitting only)"})
    seed: int | None = field(default=None, metadata={
        "help": "seed of the 80/20 probe split and random draws (default 42; fitting only)"})
    features_dir: str | None = field(default=None, metadata={
        "help": "where the tqa_mc2 and tqa_gen_end_q feature directories are (fitting only; default: features/ of the "
                "output root)"})
    features_from_other_weights: bool = field(default=False, metadata={
        "help": "fit on features collected from other weights than the model's (refused otherwise; recorded in the "
                "intervention's meta; fitting only)"})
    device: int | None = field(default=None, metadata={
        "help": "honest_llama's GPU index: load the model on cuda:N (refused where there is no such GPU; default: the "
                "CPU, or --device_map)"})
    dtype: str | None = field(default=None, metadata={"help": "compute dtype (default float32 on CPU, float16 on GPU; auto: bfloat16 instead on a CPU with AMX or AVX512-BF16)"})
    add_to_existing: bool = field(default=False, metadata={
        "help": "bake into a model that already has a baked intervention, adding this shift on top of it (refused "
                "otherwise)"})
    force: bool = field(default=False, metadata={
        "help": "replace a non-empty output_dir as a whole (refused otherwise); the old content goes only once the "
                "new checkpoint is complete"})


@dataclass
class DemoConfig:
    """Settings of ``iti demo`` (``make demo``): how many questions to collect, where to write, the batch size."""
    max_questions: int = field(default=100, metadata={"help": "questions to collect features for (the validation uses 40 of them)"})
    output_dir: str | None = field(default=None, metadata={"help": "where everything goes (default: features/demo)"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward pass"})
