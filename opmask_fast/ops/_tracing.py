"""How the public ops meet tracers: `fx_leaf` makes them leaves of `torch.fx.symbolic_trace` graphs, wherever they are
called from; `values_unreadable` says when their data checks (host reads) cannot run: traced by torch.compile or
torch.export, or given meta or fake tensors.

The ops check their inputs' values in Python (one host sync), which a symbolic tracer cannot do with Proxy inputs.
torchvision marks its ops with `torch.fx.wrap`, which patches the name only in the defining module's globals, so a
module that imported the op elsewhere still traces into it. Here the op itself notices Proxy arguments and records one
`call_function` node of itself instead; the traced GraphModule then calls the op with real tensors.
"""

from __future__ import annotations

import functools

import torch.fx
from torch import Tensor
from torch.fx.node import map_aggregate

try:
    from torch._subclasses.fake_tensor import is_fake as _is_fake
except ImportError:  # pragma: no cover - every supported torch has it

    def _is_fake(t: Tensor) -> bool:
        return False


def _first_proxy(args, kwargs):
    found = []
    map_aggregate((args, kwargs), lambda a: found.append(a) if isinstance(a, torch.fx.Proxy) else None)
    return found[0] if found else None


def fx_leaf(fn):
    """Decorator: ``fn`` runs as usual, and becomes one graph node when called on `torch.fx.Proxy` arguments."""

    @functools.wraps(fn)
    def op(*args, **kwargs):
        proxy = _first_proxy(args, kwargs)
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", op, args, kwargs)
        return fn(*args, **kwargs)

    return op


def is_compiling() -> bool:
    """Whether torch.compile or torch.export is tracing the caller."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def values_unreadable(*tensors: Tensor | None) -> bool:
    """True where the inputs' values cannot be read, so the ops skip their data checks (the shape checks still run):
    traced by torch.compile / torch.export, or meta or fake tensors (shape propagation, as torchvision's ops allow)."""
    if is_compiling():
        return True
    return any(t is not None and (t.device.type == "meta" or _is_fake(t)) for t in tensors)
