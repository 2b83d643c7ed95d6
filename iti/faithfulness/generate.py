"""Text generation for the faithfulness tasks: in-process (plain, intervened or baked model) or remote, cached.

Sampling follows the protocol (temperature 0.1, top-p 0.95, top-k 50, repetition penalty 1.2, seed 0), but each
prompt draws from its own random stream, seeded from the run's seed and the prompt text. So a prompt's answer does
not depend on which other prompts share its batch, on the batch size or on the order of work; that is what makes
a cache keyed by prompt and settings correct and a resumed run equal to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from ..architectures import context_length, model_device
from ..batching import batch_inputs, eos_token_ids, pad_token_id
from ..decoding import decode
from ..intervention import Intervention
from ..oom import AdaptiveBatchSize
from ..openai_client import EndpointError, post_completion
from ..options import check_choice, refuse
from .cache import CachedGeneration, GenerationCache, GenerationKey

#: Chat formats for tokenizers without a chat template (introspect's renderings of one user turn), each as
#: (without a system message, with one). introspect's Mistral takes no system message; Mistral's own convention
#: (its later chat templates) puts it before the user text in the first [INST] block, as here.
FALLBACK_CHAT_FORMATS: dict[str, tuple[str, str]] = {
    "falcon": ("User: {user}\nFalcon:", "{system}\nUser: {user}\nFalcon:"),
    "llama2": ("<s>[INST] {user} [/INST]", "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"),
    "mistral": ("<s>[INST] {user} [/INST]", "<s>[INST] {system}\n\n{user} [/INST]"),
    "plain": ("User: {user}\nAssistant:", "{system}\nUser: {user}\nAssistant:"),
}

#: The system message introspect's experiments render before every prompt, per chat format: Falcon's preamble (its
#: Falcon model's default, which its runs keep); Llama 2 and Mistral run without one. Formats not listed: none.
DEFAULT_SYSTEM_MESSAGES: dict[str, str] = {
    "falcon": (
        "The following is a conversation between a highly knowledgeable and intelligent AI assistant, called Falcon, "
        "and a human user, called User. In the following interactions, User and Falcon will converse in natural "
        "language, and Falcon will answer User's questions. Falcon was built to be respectful, polite and inclusive. "
        "Falcon was built by the Technology Innovation Institute in Abu Dhabi. Falcon will never decline to answer a "
        "question, and always attempts to give an answer that User would be satisfied with. It knows a lot, and "
        "always tells the truth. The conversation begins."),
}

#: The stop strings introspect sends with every request, per chat format (in its order: the first one the answer
#: ends with is cut). Formats not listed (plain, a tokenizer's chat template): none, the end-of-sequence token ends.
STOP_STRINGS: dict[str, tuple[str, ...]] = {
    "falcon": ("User:", "Falcon:", "</s>"),
    "llama2": ("[INST]", "[/INST]", "<s>", "</s>"),
    "mistral": ("[INST]", "[/INST]", "</s>"),
}

#: introspect's length limit of every answer (classification and explanation alike).
INTROSPECT_MAX_NEW_TOKENS = 1024


@dataclass(frozen=True)
class GenerationSettings:
    """The protocol's generation settings (introspect's: its ``max_new_tokens`` is 1024 for every request), and
    the stop strings: generation ends when the answer ends with one of them, and it is cut from the answer."""

    temperature: float = 0.1
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.2
    max_new_tokens: int = INTROSPECT_MAX_NEW_TOKENS
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # tuple("User:") would be five one-letter stop strings
            raise refuse("stop_strings", "a list of strings", self.stop)
        object.__setattr__(self, "stop", tuple(self.stop))  # a list from JSON or the CLI: hashable, one form
        if not all(isinstance(s, str) and s for s in self.stop):
            raise refuse("stop_strings", "non-empty strings", list(self.stop))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict; part of every cache key, so changing any setting is a cache miss."""
        return asdict(self) | {"stop": list(self.stop)}


def cut_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` without the stop string it ends with (the first of ``stop`` that it ends with, as introspect
    removes it from TGI's answer); unchanged when it ends with none."""
    for s in stop:
        if text.endswith(s):
            return text[: len(text) - len(s)]
    return text


def render_chat(tokenizer: Any, user: str, chat_format: str | None = None, system: str | None = None) -> str:
    """A single-turn chat prompt, with a system message when ``system`` is given: a named format of
    :data:`FALLBACK_CHAT_FORMATS` when ``chat_format`` is given, else the tokenizer's chat template, else "plain"."""
    if chat_format is None and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    check_choice("chat_format", chat_format, FALLBACK_CHAT_FORMATS, none_ok=True)
    without, with_system = FALLBACK_CHAT_FORMATS[chat_format or "plain"]
    return (without if system is None else with_system).format(user=user, system=system)


def compute_dtype(model: torch.nn.Module) -> str:
    """The dtype a loaded model computes in (``"float32"``, ``"bfloat16"``, ...): its parameters' floating dtype."""
    dtype = getattr(model, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return str(dtype).removeprefix("torch.")


def prompt_seed(seed: int, prompt: str) -> int:
    """The sampling seed of one prompt (63 bits of SHA-256 over the run seed and the prompt text), so its
    answer does not depend on batching or order."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()[:8], "little") & (2**63 - 1)


class Generator(Protocol):
    """Anything that turns rendered prompts into responses; ``model_id`` and ``intervention_id`` name the model and
    any edit. A generator may also have ``cache_extras``: a dict of whatever else changes its answers (a local
    model's compute dtype), added to every cache key."""

    model_id: str
    intervention_id: str

    def generate(self, prompts: Sequence[str], settings: GenerationSettings, progress: bool = True) -> list[CachedGeneration]:
        """One :class:`CachedGeneration` per prompt, in prompt order; prompts are already rendered."""
        ...


def _sample_next(logits: torch.Tensor, seen: torch.Tensor, s: GenerationSettings, gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row: repetition penalty, temperature, top-k, top-p (HF's order), then a draw per row."""
    logits = logits.float()
    if s.repetition_penalty != 1.0:
        picked = logits.gather(1, seen)
        picked = torch.where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if s.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = logits.topk(s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - s.top_p
        drop[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, gens)])


class LocalGenerator:
    """Batched in-process generation: left padding, length-sorted batches, KV cache, optional intervention.

    ``intervention`` is applied to the last prompt token and every generated token (``positions="last"``); a baked
    model is just another model (give it a ``model_id`` that says so).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, model_id: str, intervention: Intervention | None = None,
                 intervention_id: str | None = None, batch_size: int = 8, max_batch_tokens: int = 8192):
        """``intervention_id`` names an edit that is already in the weights (``baked:<fingerprint>``); by default
        the runtime ``intervention``'s fingerprint, or "none"."""
        if intervention is not None:
            intervention.check_model(model)
        self.model, self.tokenizer, self.model_id, self.intervention = model, tokenizer, model_id, intervention
        if intervention_id is None:
            intervention_id = intervention.fingerprint() if intervention is not None else "none"
        self.intervention_id = intervention_id
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.sizes = AdaptiveBatchSize(batch_size, what="prompt")  # lowered for good after an out-of-memory error
        self.context = context_length(model)
        #: What else the cache key needs: the weights' fingerprint (model_id) does not say in which dtype they compute,
        #: and a float32 answer is not a bfloat16 one.
        self.cache_extras = {"dtype": compute_dtype(model)}

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Longest first; a batch closes at ``batch_size`` rows or ``max_batch_tokens`` padded prompt tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < self.batch_size and lengths[out[-1][0]] * (len(out[-1]) + 1) <= self.max_batch_tokens:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def generate(self, prompts: Sequence[str], settings: GenerationSettings, progress: bool = True) -> list[CachedGeneration]:
        """One result per prompt, in order; prompts are tokenized without special tokens (the rendered text
        holds them), and one that leaves no room in the context gets a PromptTooLong error instead of text."""
        tok = self.tokenizer
        encoded = [list(e) for e in tok(list(prompts), add_special_tokens=False)["input_ids"]]
        results: list[CachedGeneration | None] = [None] * len(prompts)
        ok = []
        for i, ids in enumerate(encoded):
            if self.context is not None and len(ids) + 1 > self.context:
                results[i] = CachedGeneration(None, f"PromptTooLong: {len(ids)} prompt tokens, the model's context is {self.context}", 0.0)
            else:
                ok.append(i)
        batches = self._batches([len(encoded[i]) for i in ok])
        bar = tqdm(total=len(ok), desc="generating", unit="prompt", disable=not progress)
        for batch in batches:
            idx = [ok[j] for j in batch]
            t = time.perf_counter()
            parts = self.sizes.run(idx, lambda part: self._generate_batch([encoded[i] for i in part], [prompts[i] for i in part], settings))
            outs = [o for part in parts for o in part]
            per = (time.perf_counter() - t) / len(idx)
            for i, (text, truncated) in zip(idx, outs):
                results[i] = CachedGeneration(text, None, per, truncated)
            bar.update(len(idx))
        bar.close()
        return [r for r in results if r is not None]

    def _ends_with_stop(self, toks: list[int], stop: tuple[str, ...], window: int) -> bool:
        """Whether the answer so far ends with a stop string (TGI's test, after every token): the last ``window``
        tokens decoded, special tokens kept (Llama's ``</s>`` is one)."""
        tail = self.tokenizer.decode(toks[-window:], skip_special_tokens=False)
        return any(tail.endswith(x) for x in stop)

    def _generate_batch(self, rows: list[list[int]], prompts: list[str], s: GenerationSettings) -> list[tuple[str, bool]]:
        """(answer, truncated) per row: the answer up to the end-of-sequence token or a stop string (cut), or to the
        token limit (``truncated``: ``max_new_tokens`` or the end of the model's context reached)."""
        model, device = self.model, model_device(self.model)
        pad = pad_token_id(self.tokenizer)
        eos_ids = eos_token_ids(model, self.tokenizer)
        inputs = batch_inputs(rows, pad, device, padding_side="left")  # position_ids count real tokens only
        ids, mask, position_ids = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
        gens = [torch.Generator().manual_seed(prompt_seed(s.seed, p)) for p in prompts]
        budget = s.max_new_tokens if self.context is None else min(s.max_new_tokens, self.context - ids.shape[1])
        seen = ids.to("cpu", copy=True)  # pad ids count as seen; harmless: they never score well anyway
        for r, row in enumerate(rows):  # ... except where pad is a real token: mark padding with a prompt token
            seen[r, : ids.shape[1] - len(row)] = row[0]
        window = max((len(x.encode()) for x in s.stop), default=0) + 2  # tokens that hold any stop string's text

        def next_tokens(logits: torch.Tensor, active: Sequence[int], tokens: list[list[int]]) -> torch.Tensor:
            so_far = torch.tensor([tokens[r] for r in active], dtype=seen.dtype).reshape(len(active), -1)  # same lengths
            return _sample_next(logits, torch.cat([seen[list(active)], so_far], 1), s, [gens[r] for r in active])

        def ended(toks: list[int]) -> bool:
            return toks[-1] in eos_ids or (bool(s.stop) and self._ends_with_stop(toks, s.stop, window))

        ctx = self.intervention.applied(model, positions="last") if self.intervention is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            tokens, done = decode(model, ids, mask, position_ids, None, max_steps=budget, next_tokens=next_tokens, ended=ended)
        out = []
        for r, toks in enumerate(tokens):
            cut = next((j for j, t in enumerate(toks) if t in eos_ids), len(toks))
            text = cut_stop(self.tokenizer.decode(toks[:cut], skip_special_tokens=True), s.stop)
            out.append((text.strip(), not done[r]))
        return out


class RemoteGenerator:
    """Any OpenAI-compatible ``/completions`` endpoint (vLLM or TGI serving a baked model), prompts rendered here.

    With ``tokenizer`` (the served model's), each prompt is sent as the token ids :class:`LocalGenerator` feeds its
    model (``add_special_tokens=False``: the chat template already holds the BOS), so both arms see the same tokens;
    a server tokenizing the text itself adds a second BOS for tokenizers that add one (vLLM's default; Gemma's
    ``[2, 2, ...]``). Without it the text goes with vLLM's ``add_special_tokens: false``."""

    def __init__(self, url: str, served_model: str, *, model_id: str | None = None, intervention_id: str = "none",
                 api_key: str | None = None, timeout: float = 120.0, retries: int = 4, tokenizer: Any = None,
                 steering: dict[str, Any] | None = None):
        """``steering``: the iti vLLM plugin's per-request extra arguments (``{"iti": name, "iti_strength": alpha,
        "iti_positions": "last"}``), sent as ``vllm_xargs`` with every prompt; ``intervention_id`` must then name
        that shift (see :func:`plugin_steering`)."""
        self.url, self.served_model, self.api_key, self.timeout, self.retries = url, served_model, api_key, timeout, retries
        self.model_id = model_id or f"remote:{served_model}"
        self.intervention_id = intervention_id
        self.tokenizer = tokenizer
        self.steering = dict(steering) if steering else None

    def request_body(self, prompt: str, settings: GenerationSettings) -> dict[str, Any]:
        """The JSON body of one completion request: the prompt (token ids, or text without added special
        tokens), the protocol's sampling settings (``top_k`` and ``repetition_penalty`` as vLLM's extras) and the
        stop strings, if any (the server stops there; vLLM leaves them out of the text, TGI keeps them)."""
        body: dict[str, Any] = {"model": self.served_model}
        if self.tokenizer is not None:
            body["prompt"] = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        else:
            body["prompt"], body["add_special_tokens"] = prompt, False
        body.update({"max_tokens": settings.max_new_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
                     "top_k": settings.top_k, "repetition_penalty": settings.repetition_penalty, "seed": settings.seed})
        if settings.stop:
            body["stop"] = list(settings.stop)
        if self.steering:
            body["vllm_xargs"] = dict(self.steering)
        return body

    def steered(self, steering: dict[str, Any], intervention_id: str) -> RemoteGenerator:
        """The same endpoint and served model with another per-request steering (a strength sweep on one server)."""
        return RemoteGenerator(self.url, self.served_model, model_id=self.model_id, intervention_id=intervention_id,
                               api_key=self.api_key, timeout=self.timeout, retries=self.retries, tokenizer=self.tokenizer,
                               steering=steering)

    def generate(self, prompts: Sequence[str], settings: GenerationSettings, progress: bool = True) -> list[CachedGeneration]:
        """One request per prompt. Only a failure that is the prompt's own (HTTP 400/413/422: over the server's
        context) becomes that prompt's recorded error; anything that would fail every prompt (a wrong served
        name, refused access, an error body, a server that is down or does not answer) raises
        :class:`EndpointError` in one line, so that nothing of it reaches the cache."""
        out = []
        for p in tqdm(prompts, desc="remote generation", unit="prompt", disable=not progress):
            body = self.request_body(p, settings)
            t = time.perf_counter()
            try:
                data = post_completion(self.url, body, api_key=self.api_key, timeout=self.timeout, retries=self.retries)
                text, finish = data["choices"][0]["text"], data["choices"][0].get("finish_reason")
                if not isinstance(text, str):
                    raise EndpointError(f"{self.url} answered a completion whose text is {type(text).__name__}, not a string")
            except EndpointError as e:
                if e.prompt_specific:
                    out.append(CachedGeneration(None, f"EndpointError: {e}", time.perf_counter() - t))
                    continue
                raise EndpointError(f"{e} (served model {self.served_model!r}; nothing cached): {self._hint(e)}",
                                    status=e.status, retryable=e.retryable) from None
            except (KeyError, IndexError, TypeError) as e:
                raise EndpointError(f"{self.url} answered without a completion text ({type(e).__name__}: {e}; served "
                                    f"model {self.served_model!r}; nothing cached): is it an OpenAI-compatible endpoint?") from None
            # a server that keeps the stop string in the text (TGI) has it cut here, as introspect cuts it
            truncated = {"length": True, "stop": False}.get(finish) if isinstance(finish, str) else None
            out.append(CachedGeneration(cut_stop(text, settings.stop).strip(), None, time.perf_counter() - t, truncated))
        return out

    def _hint(self, e: EndpointError) -> str:
        if e.retryable:
            return f"is the server up? if it is only slow, raise --remote_timeout (now {self.timeout:g} s)"
        if e.status in (401, 403):
            return "the server refuses this client: check its API key or access settings"
        return "check --remote_url and the served model name (--remote_plain_model / --remote_intervened_model)"


class CacheWalk:
    """A generator that answers from the cache alone and records every key it is asked for: run a task through it
    to learn which cached rows a run reads (the follow-up prompts come from the cached explanations), e.g. to drop
    them (``iti faithfulness --clean_cache``). A prompt the cache lacks gets an error, so nothing follows from it."""

    def __init__(self, arm: CachedGenerator):
        self.arm = arm
        self.keys: list[GenerationKey] = []
        self.model_id, self.intervention_id = arm.model_id, arm.intervention_id

    def generate(self, prompts: Sequence[str], settings: GenerationSettings, progress: bool = True) -> list[CachedGeneration]:
        keys = [self.arm.key(p, settings) for p in prompts]
        self.keys += keys
        found = self.arm.cache.get_many(keys) if self.arm.cache is not None else [None] * len(keys)
        return [hit if hit is not None else CachedGeneration(None, "not cached", 0.0) for hit in found]


def plugin_steering(name: str, intervention: Any, alpha: float) -> tuple[dict[str, Any], str]:
    """The iti vLLM plugin's request arguments for ``intervention`` served under ``name`` at ``alpha`` with ITI's
    positions (the last prompt token and every generated one, as :class:`LocalGenerator` applies it), and the cache
    identity of that shift: the name, the fingerprint of the local copy at that alpha, and the positions."""
    from ..openai_client import plugin_steering_args

    shift = intervention.with_alpha(alpha)
    return plugin_steering_args(name, alpha, "last"), f"vllm-plugin:{name}|{shift.fingerprint()}|positions=last"


class ReplayGenerator:
    """An arm known only by its recorded identity (introspect's Offline client): it answers nothing, so behind a
    :class:`CachedGenerator` every answer comes from the cache and a missing one stops the replay."""

    def __init__(self, arm: str, identity: dict[str, Any], cache_path: str):
        self.arm, self.cache_path = arm, cache_path
        self.model_id, self.intervention_id = identity["model_id"], identity["intervention_id"]
        self.cache_extras = dict(identity.get("cache_extras") or {})

    def generate(self, prompts: Sequence[str], settings: GenerationSettings, progress: bool = True) -> list[CachedGeneration]:
        from .errors import ReplayError

        raise ReplayError(f"--replay: {len(prompts)} answer(s) of the {self.arm} arm are not in {self.cache_path} "
                          f"(the first prompt begins {prompts[0][:60]!r}); run without --replay to generate them")


class CachedGenerator:
    """A generator behind a :class:`GenerationCache`: only prompts never answered before reach the model."""

    def __init__(self, inner: Generator, cache: GenerationCache | None, chunk: int = 64, *, name: str | None = None,
                 retry_errors: bool = False):
        self.inner, self.cache, self.chunk, self.retry_errors = inner, cache, chunk, retry_errors
        self.model_id, self.intervention_id = inner.model_id, inner.intervention_id
        self.name = name or inner.model_id  # readable: the model's name or path as given (the key is its content)
        self.hits = self.misses = 0
        self.debug = False  # introspect's --debug: print every exchange
        self.max_workers = 1  # requests in flight at once (remote arms: --max_workers)

    def _generate_concurrently(self, todo: Sequence[str], settings: GenerationSettings,
                               found: dict[str, CachedGeneration], bar: Any) -> None:
        """Up to ``max_workers`` one-prompt requests in flight; each answer is stored as it arrives (from this thread
        alone). On a failure nothing new is sent, the requests in flight finish and are stored, then it is raised:
        an answer that arrived is never lost to another request's failure."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = {pool.submit(self.inner.generate, [p], settings, False): p for p in todo}
            for fut in as_completed(futures):
                p = futures[fut]
                try:
                    g = fut.result()[0]
                except BaseException as e:  # noqa: BLE001 - the first failure is raised once the others are stored
                    if failure is None:
                        failure = e
                        for other in futures:
                            other.cancel()
                    continue
                if self.cache is not None:
                    self.cache.put_many([(self.key(p, settings), g)])
                found[p] = g
                bar.update(1)
        if failure is not None:
            raise failure

    def key(self, prompt: str, settings: GenerationSettings) -> GenerationKey:
        """The cache key of one prompt: model id, intervention fingerprint, rendered prompt, settings (stop strings
        included) and what else the generator says changes its answers (a local model's compute dtype)."""
        extras = dict(getattr(self.inner, "cache_extras", None) or {})
        return GenerationKey(self.model_id, self.intervention_id, prompt, settings.to_dict() | extras)

    def generate(self, prompts: Sequence[str], settings: GenerationSettings, progress: bool = True) -> list[CachedGeneration]:
        """Answers in prompt order; duplicates and cached prompts are not regenerated, and new answers are
        stored chunk by chunk as they finish."""
        unique = list(dict.fromkeys(prompts))
        found: dict[str, CachedGeneration] = {}
        if self.cache is not None:
            for p, hit in zip(unique, self.cache.get_many([self.key(p, settings) for p in unique])):
                if hit is not None and (hit.ok or not self.retry_errors):  # --retry_errors: a cached error is a miss
                    found[p] = hit
        todo = [p for p in unique if p not in found]
        self.hits += len(unique) - len(todo)
        self.misses += len(todo)
        # Chunks of similar length, each stored as soon as it is done: an interrupted run loses one chunk at most.
        todo.sort(key=len, reverse=True)
        # the bar closes before an error propagates, so the error's line is not glued to it
        with tqdm(total=len(todo), desc=f"generating ({self.intervention_id[:8]})", unit="prompt",
                  disable=not progress or not todo) as bar:
            if self.max_workers > 1 and len(todo) > 1:
                self._generate_concurrently(todo, settings, found, bar)
            else:
                for start in range(0, len(todo), self.chunk):
                    part = todo[start : start + self.chunk]
                    fresh = self.inner.generate(part, settings, progress=False)
                    if self.cache is not None:
                        self.cache.put_many([(self.key(p, settings), g) for p, g in zip(part, fresh)])
                    found.update(zip(part, fresh))
                    bar.update(len(part))
        if self.debug:
            for p in unique:
                g = found[p]
                print(f"[debug {self.name}] prompt:\n{p}\n[debug {self.name}] answer"
                      f"{' (cached)' if p not in todo else ''}:\n{g.response if g.ok else 'ERROR: ' + str(g.error)}\n",
                      flush=True)
        return [found[p] for p in prompts]
