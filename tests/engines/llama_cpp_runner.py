"""Last-token logits of a GGUF model in a real llama.cpp, with and without a control-vector file.

Run as a subprocess (``python -m tests.engines.llama_cpp_runner --model M.gguf --tokens 1,2,3 [--cvec CV.gguf]``),
it prints JSON ``{"logits": [...], "n_layer", "n_embd"}``. The runtime is the llama.cpp built into the ``xllamacpp``
wheel (a manylinux2014 build from the package registry). Its Python API has no control-vector setter, so this loads
the wheel's shared library with ctypes, which exports llama.cpp's C API and ``common``'s C++
``common_control_vector_load``: the control-vector GGUF is read by llama.cpp's own loader (as ``--control-vector``
does) and applied to layers 1..n_layer with ``llama_set_adapter_cvec``. A subprocess, so a crash in the native code
fails one test instead of the test run.
"""
from __future__ import annotations

import argparse
import ctypes as C
import importlib.util
import json
import os
import sys


def library_path() -> str:
    spec = importlib.util.find_spec("xllamacpp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("xllamacpp is not installed")
    d = list(spec.submodule_search_locations)[0]
    for f in sorted(os.listdir(d)):
        if f.startswith("xllamacpp") and f.endswith(".so"):
            return os.path.join(d, f)
    sys.exit(f"no xllamacpp shared library in {d}")


class Batch(C.Structure):  # struct llama_batch
    _fields_ = [("n_tokens", C.c_int32), ("token", C.POINTER(C.c_int32)), ("embd", C.POINTER(C.c_float)),
                ("pos", C.POINTER(C.c_int32)), ("n_seq_id", C.POINTER(C.c_int32)),
                ("seq_id", C.POINTER(C.POINTER(C.c_int32))), ("logits", C.POINTER(C.c_int8))]


class Params(C.Structure):
    """llama_model_params / llama_context_params as an oversized opaque block: a struct this large is returned
    through a hidden pointer and passed by value in memory, so a bigger buffer is ABI-safe; only the leading
    fields, checked below, are touched."""
    _fields_ = [("raw", C.c_uint32 * 512)]


LOG = C.CFUNCTYPE(None, C.c_int, C.c_char_p, C.c_void_p)


class LlamaCpp:
    def __init__(self) -> None:
        lib = self.lib = C.CDLL(library_path(), mode=C.RTLD_GLOBAL)
        self._log = LOG(lambda level, text, data: None)
        lib.llama_log_set.argtypes = [LOG, C.c_void_p]
        lib.llama_log_set(self._log, None)
        lib.llama_backend_init()
        lib.llama_model_default_params.restype = Params
        lib.llama_context_default_params.restype = Params
        lib.llama_model_load_from_file.argtypes = [C.c_char_p, Params]
        lib.llama_model_load_from_file.restype = C.c_void_p
        lib.llama_init_from_model.argtypes = [C.c_void_p, Params]
        lib.llama_init_from_model.restype = C.c_void_p
        lib.llama_model_get_vocab.argtypes = [C.c_void_p]
        lib.llama_model_get_vocab.restype = C.c_void_p
        for fn, arg in (("llama_vocab_n_tokens", C.c_void_p), ("llama_model_n_layer", C.c_void_p), ("llama_model_n_embd", C.c_void_p)):
            getattr(lib, fn).argtypes = [arg]
            getattr(lib, fn).restype = C.c_int32
        lib.llama_batch_get_one.argtypes = [C.POINTER(C.c_int32), C.c_int32]
        lib.llama_batch_get_one.restype = Batch
        lib.llama_decode.argtypes = [C.c_void_p, Batch]
        lib.llama_decode.restype = C.c_int32
        lib.llama_get_logits_ith.argtypes = [C.c_void_p, C.c_int32]
        lib.llama_get_logits_ith.restype = C.POINTER(C.c_float)
        lib.llama_set_adapter_cvec.argtypes = [C.c_void_p, C.POINTER(C.c_float), C.c_size_t, C.c_int32, C.c_int32, C.c_int32]
        lib.llama_set_adapter_cvec.restype = C.c_int32
        lib.llama_free.argtypes = [C.c_void_p]

    def load(self, path: str) -> None:
        self.model = self.lib.llama_model_load_from_file(path.encode(), self.lib.llama_model_default_params())
        if not self.model:
            sys.exit(f"llama.cpp could not load {path}")
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(self.model))
        self.n_layer = self.lib.llama_model_n_layer(self.model)
        self.n_embd = self.lib.llama_model_n_embd(self.model)

    def context(self, n_tokens: int) -> int:
        params = self.lib.llama_context_default_params()
        w = params.raw
        if not (w[1] >= w[2] > 0 and w[3] == 1):  # n_ctx, n_batch, n_ubatch, n_seq_max
            sys.exit(f"unexpected llama_context_params layout: {list(w[:12])}")
        threads = next((i for i in range(4, 12) if w[i] == w[i + 1] == 4), None)  # n_threads, n_threads_batch
        if threads is None:
            sys.exit(f"cannot find n_threads in llama_context_params: {list(w[:12])}")
        w[0] = w[1] = w[2] = max(512, n_tokens + 16)
        w[threads] = w[threads + 1] = 1
        ctx = self.lib.llama_init_from_model(self.model, params)
        if not ctx:
            sys.exit("llama_init_from_model failed")
        return ctx

    def control_vector(self, path: str) -> tuple[int, C.Array]:
        """llama.cpp's ``common_control_vector_load`` on ``path`` (strength 1): ``(n_embd, data)``, data holding the
        vector of layer 1 first. The library uses libstdc++'s old copy-on-write string, built here by hand."""
        fn = self.lib._Z26common_control_vector_loadRKSt6vectorI31common_control_vector_load_infoSaIS0_EE
        fn.argtypes = [C.c_void_p, C.c_void_p]
        fn.restype = C.c_void_p
        name = os.fsencode(path)
        rep = C.create_string_buffer(24 + len(name) + 1)  # _Rep {length, capacity, refcount} + chars + NUL
        C.memmove(rep, C.byref(C.c_size_t(len(name))), 8)
        C.memmove(C.addressof(rep) + 8, C.byref(C.c_size_t(len(name))), 8)
        C.memmove(C.addressof(rep) + 16, C.byref(C.c_int(1 << 20)), 4)  # a refcount the callee never drops to zero
        C.memmove(C.addressof(rep) + 24, name, len(name))

        class Info(C.Structure):  # common_control_vector_load_info {float strength; std::string fname;}
            _fields_ = [("strength", C.c_float), ("fname", C.c_void_p)]

        class Data(C.Structure):  # common_control_vector_data {int n_embd; std::vector<float> data;}
            _fields_ = [("n_embd", C.c_int), ("begin", C.c_void_p), ("end", C.c_void_p), ("cap", C.c_void_p)]

        info = Info(1.0, C.addressof(rep) + 24)
        infos = (C.c_void_p * 3)(C.addressof(info), C.addressof(info) + C.sizeof(Info), C.addressof(info) + C.sizeof(Info))
        out = Data()
        fn(C.byref(out), C.byref(infos))
        self._keep = (rep, info, infos)
        if out.n_embd == -1:
            sys.exit(f"llama.cpp's control-vector loader refused {path}")
        n = (out.end - out.begin) // 4
        return out.n_embd, (C.c_float * n).from_buffer_copy(C.string_at(out.begin, n * 4))

    def last_logits(self, tokens: list[int], cvec: str | None = None) -> list[float]:
        ctx = self.context(len(tokens))
        if cvec is not None:
            n_embd, data = self.control_vector(cvec)
            if self.lib.llama_set_adapter_cvec(ctx, data, len(data), n_embd, 1, self.n_layer) != 0:
                sys.exit("llama_set_adapter_cvec failed")
        ids = (C.c_int32 * len(tokens))(*tokens)
        if self.lib.llama_decode(ctx, self.lib.llama_batch_get_one(ids, len(tokens))) != 0:
            sys.exit("llama_decode failed")
        logits = self.lib.llama_get_logits_ith(ctx, -1)
        out = [float(x) for x in logits[: self.n_vocab]]
        self.lib.llama_free(ctx)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--cvec", help="a control-vector GGUF to apply")
    a = ap.parse_args()
    runtime = LlamaCpp()
    runtime.load(a.model)
    logits = runtime.last_logits([int(t) for t in a.tokens.split(",")], a.cvec)
    json.dump({"logits": logits, "n_layer": runtime.n_layer, "n_embd": runtime.n_embd}, sys.stdout)


if __name__ == "__main__":
    main()
