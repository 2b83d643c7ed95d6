"""Settings of ``iti export`` and ``iti import``: one field per flag (see :mod:`iti.cli.config_args`)."""
from __future__ import annotations

from dataclasses import dataclass, field

#: the formats ``--format`` takes
FORMATS = ("pyvene", "lm-eval", "gguf", "control-vector", "honest-llama")


@dataclass
class ExportConfig:
    """``iti export``: an intervention or steering (or a baked model, or our features) in another tool's format."""

    format: str = field(metadata={"choices": FORMATS, "help": "pyvene: a saved IntervenableModel directory; lm-eval: the "
                                  "steering .pt of lm_eval --model steered; gguf: the model with the steering baked in, "
                                  "for llama.cpp; control-vector: residual (resid_post) steering as llama.cpp's "
                                  "--control-vector GGUF; honest-llama: our features as honest_llama's .npy files"})
    output: str = field(metadata={"help": "where to write: a directory (pyvene), a .pt file (lm-eval), a .gguf file (gguf, "
                                  "control-vector), a folder for the .npy files (honest-llama)"})
    model_name: str | None = field(default=None, metadata={
        "help": "the model (short name, hub id or local directory; pyvene, lm-eval, gguf); for honest-llama the model "
                "name in the file names (default: the one in the features manifest)"})
    intervention: str | None = field(default=None, metadata={
        "help": "a saved iti intervention or steering directory (required for pyvene, lm-eval and control-vector; for "
                "gguf it is baked in first, else --model_name must already be a baked model)"})
    alpha: float | None = field(default=None, metadata={
        "help": "replace the intervention's alpha (default: as saved; a steering directory has no alpha)"})
    features: str | None = field(default=None, metadata={"help": "honest-llama: our features directory to export"})
    dataset_name: str | None = field(default=None, metadata={
        "help": "honest-llama: the data set name in the file names (default: the one in the features manifest)"})
    layer_wise: bool = field(default=False, metadata={"help": "honest-llama: also write _layer_wise.npy ([N, layers, hidden])"})
    gguf_dtype: str = field(default="f32", metadata={"choices": ("f32", "f16"), "help": "gguf: tensor type of the matrices"})
    tokenizer_pre: str | None = field(default=None, metadata={
        "help": "gguf: llama.cpp's pre-tokenizer name (default: the embedded model's own GGUF's, else 'default')"})
    dtype: str | None = field(default=None, metadata={"help": "compute dtype the model loads in (default float32 on CPU)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model repository's own code (off by default)"})
    force: bool = field(default=False, metadata={"help": "replace an existing output"})


@dataclass
class ImportConfig:
    """``iti import``: another tool's file as an iti intervention or steering (or, for honest-llama, as our features)."""

    format: str = field(metadata={"choices": FORMATS, "help": "pyvene: a saved IntervenableModel directory of constant "
                                  "additions; lm-eval: a steering .pt; gguf: a baked llama-architecture GGUF of --model_name; "
                                  "control-vector: llama.cpp's / repeng's control-vector GGUF (always read as steering); "
                                  "honest-llama: a folder of {model}_{dataset}_head_wise/_labels/_layer_wise.npy"})
    input: str = field(metadata={"help": "the file or directory to read"})
    model_name: str = field(metadata={
        "help": "the model the file is for (pyvene, lm-eval, gguf: loaded to solve for head shifts); for honest-llama "
                "the model name in the file names"})
    output: str | None = field(default=None, metadata={
        "help": "where to write: the intervention or steering directory (pyvene, lm-eval, gguf, control-vector; "
                "required), or the features root (honest-llama; default: the features directory)"})
    steering: bool = field(default=False, metadata={
        "help": "save the file's steering as read (its sites and vectors, iti.Steering) instead of solving it into ITI "
                "head shifts; needed for vectors on the MLP or the residual stream, which no head shift reproduces"})
    dataset_name: str = field(default="tqa_mc2", metadata={
        "help": "honest-llama: the data set the arrays hold (its prompt set gives the question ids)",
        "choices": ("tqa_mc2", "tqa_gen", "tqa_gen_end_q")})
    geometry_from: str | None = field(default=None, metadata={
        "help": "honest-llama: a model name or directory whose config gives the head geometry (default: --model_name)"})
    data_dir: str | None = field(default=None, metadata={"help": "honest-llama: TruthfulQA data directory"})
    max_questions: int | None = field(default=None, metadata={
        "help": "honest-llama: the arrays hold the first N questions only", "zero_is_none": True})
    seed: int = field(default=42, metadata={"help": "honest-llama: seed of the prompt set (tqa_gen_end_q's random questions)"})
    layer_wise: bool = field(default=True, metadata={"invert": True, "flag": "no_layer_wise",
                                                     "help": "honest-llama: leave _layer_wise.npy out"})
    dtype: str | None = field(default=None, metadata={"help": "compute dtype the model loads in (default float32 on CPU)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model repository's own code (off by default)"})
    force: bool = field(default=False, metadata={"help": "replace an existing output"})
