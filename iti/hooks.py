"""Hooks named by module path, removed reliably, and a trace of per-head attention outputs.

In the spirit of baukit's ``TraceDict`` (which is not on PyPI and unmaintained since 2023, so this layer is our
own): hooks are registered by module path inside a context manager and every one is removed on exit, also when
the body raises.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .architectures import ModelLayout, model_layout
from .errors import EmptyInputError, HeadIndexError, ModulePathError

#: "last" (last non-pad token of each row, left or right padding), "all", or a boolean mask [batch, seq] of positions
#: to keep. (When *steering*, ``Intervention.applied(positions="last")`` means the last column of each forward pass
#: instead, and so needs left padding.)
Positions = str | torch.Tensor


@contextlib.contextmanager
def module_hooks(
    model: nn.Module,
    *,
    pre: Mapping[str, Callable] | None = None,
    post: Mapping[str, Callable] | None = None,
    pre_kwargs: Mapping[str, Callable] | None = None,
) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Register forward pre-hooks (``fn(module, args)``), pre-hooks that also see the keyword arguments
    (``fn(module, args, kwargs)``, in ``pre_kwargs``) and forward hooks (``fn(module, args, output)``) by module
    path (``""`` is the model itself).

    A wrong path raises :class:`ModulePathError` before anything is registered; every hook is removed when the
    block exits, also after an exception.
    """
    pre, post, pre_kwargs = dict(pre or {}), dict(post or {}), dict(pre_kwargs or {})
    modules = {}
    for path in list(pre) + list(post) + list(pre_kwargs):
        try:
            modules[path] = model.get_submodule(path)
        except AttributeError:
            raise ModulePathError(f"the model ({type(model).__name__}) has no module at path {path!r}") from None
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for path, fn in pre_kwargs.items():
            handles.append(modules[path].register_forward_pre_hook(fn, with_kwargs=True))
        for path, fn in pre.items():
            handles.append(modules[path].register_forward_pre_hook(fn))
        for path, fn in post.items():
            handles.append(modules[path].register_forward_hook(fn))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row; right for left and right padding alike."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [batch, seq], got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise EmptyInputError("a row of attention_mask has no tokens (empty prompt?)")
    seq = mask.shape[1]
    return seq - 1 - mask.flip(1).to(torch.int8).argmax(dim=1)


class _Selector:
    """Applies a positions policy to [batch, seq, ...] tensors, caching the index per device."""

    def __init__(self, positions: Positions, attention_mask: torch.Tensor | None):
        if isinstance(positions, str) and positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last', 'all' or a boolean mask, got {positions!r}")
        if isinstance(positions, torch.Tensor):
            if positions.ndim != 2 or positions.dtype != torch.bool:
                raise ValueError("a positions mask must be a boolean tensor [batch, seq]")
        self.positions = positions
        self.attention_mask = attention_mask
        self._index: torch.Tensor | None = None
        if isinstance(positions, str) and positions == "last" and attention_mask is not None:
            self._index = last_token_index(attention_mask)
        self._per_device: dict[torch.device, torch.Tensor] = {}

    def _on(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        cached = self._per_device.get(device)
        if cached is None:
            cached = self._per_device[device] = t.to(device)
        return cached

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.positions, torch.Tensor):
            mask = self._on(self.positions, x.device)
            if mask.shape != x.shape[:2]:
                raise ValueError(f"positions mask {tuple(mask.shape)} does not match [batch, seq] {tuple(x.shape[:2])}")
            return x[mask]
        if self.positions == "all":
            return x
        if self._index is None:
            return x[:, -1]
        index = self._on(self._index, x.device)
        if index.shape[0] != x.shape[0]:
            raise ValueError(f"attention_mask has {index.shape[0]} rows but the batch has {x.shape[0]}")
        return x[torch.arange(x.shape[0], device=x.device), index]


class HeadTrace:
    """Capture per-head attention outputs (the input of o_proj / c_proj / dense) of chosen layers.

    Usage::

        with HeadTrace(model, positions="last", attention_mask=mask) as trace:
            model(input_ids, attention_mask=mask)
        heads = trace.stacked_heads()          # [batch, layers, heads, head_dim]

    ``trace.heads[layer]`` is ``[batch, seq, heads, head_dim]`` for ``positions="all"``, ``[batch, heads,
    head_dim]`` for ``"last"``, and ``[n_selected, heads, head_dim]`` for a mask. With ``residual=True``,
    ``trace.residual[layer]`` holds the residual stream after that decoder block, selected the same way.
    Each forward pass replaces what the previous one captured.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Iterable[int] | None = None,
        positions: Positions = "last",
        attention_mask: torch.Tensor | None = None,
        residual: bool = False,
        device: torch.device | str | None = "cpu",
        dtype: torch.dtype | None = None,
        layout: ModelLayout | None = None,
    ):
        self.model = model
        self.layout = layout or model_layout(model)
        g = self.layout.geometry
        self.layers = sorted(set(range(g.num_layers) if layers is None else (int(i) for i in layers)))
        for layer in self.layers:
            if not 0 <= layer < g.num_layers:
                raise HeadIndexError(f"layer {layer} out of range: the model has layers 0..{g.num_layers - 1}")
        self.capture_residual = residual
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        self.heads: dict[int, torch.Tensor] = {}
        self.residual: dict[int, torch.Tensor] = {}
        self._selector = _Selector(positions, attention_mask)
        self._stack: contextlib.ExitStack | None = None

    def set_positions(self, positions: Positions = "last", attention_mask: torch.Tensor | None = None) -> None:
        """Change the positions policy (and padding mask) for the next forward pass."""
        self._selector = _Selector(positions, attention_mask)

    def clear(self) -> None:
        """Drop what was captured (frees memory between batches); the hooks stay in place."""
        self.heads.clear()
        self.residual.clear()

    def _store(self, x: torch.Tensor) -> torch.Tensor:
        x = self._selector(x.detach())
        if self.device is not None or self.dtype is not None:
            x = x.to(device=self.device, dtype=self.dtype)
        return x

    def _head_hook(self, layer: int) -> Callable:
        g = self.layout.geometry

        def hook(module: nn.Module, args: tuple) -> None:
            x = self._store(args[0])
            self.heads[layer] = x.reshape(*x.shape[:-1], g.num_heads, g.head_dim)

        return hook

    def _residual_hook(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self.residual[layer] = self._store(hidden)

        return hook

    def __enter__(self) -> HeadTrace:
        pre = {self.layout.head_out_paths[i]: self._head_hook(i) for i in self.layers}
        post = {self.layout.layer_paths[i]: self._residual_hook(i) for i in self.layers} if self.capture_residual else {}
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(module_hooks(self.model, pre=pre, post=post))
        return self

    def __exit__(self, *exc) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None

    def _stacked(self, captured: dict[int, torch.Tensor], what: str, dtype: torch.dtype | None) -> torch.Tensor:
        missing = [i for i in self.layers if i not in captured]
        if missing:
            raise RuntimeError(f"no {what} captured for layers {missing}: run a forward pass inside the trace")
        parts = [captured[i] for i in self.layers]
        device = parts[0].device
        dtype = dtype or parts[0].dtype
        # Layers may sit on different devices and dtypes (device_map); stack on the first one's device.
        lead = parts[0].ndim - (2 if what == "heads" else 1)
        return torch.stack([p.to(device=device, dtype=dtype) for p in parts], dim=lead)

    def stacked_heads(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """All traced layers stacked just before the heads axis: [batch, L, H, D] for "last"."""
        return self._stacked(self.heads, "heads", dtype)

    def stacked_residual(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Residual stream of all traced layers: [batch, L, hidden] for "last"."""
        return self._stacked(self.residual, "residual", dtype)
