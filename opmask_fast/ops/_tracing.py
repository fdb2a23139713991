"""`fx_leaf`: the public ops as leaves of `torch.fx.symbolic_trace` graphs, wherever they are called from.

The ops check their inputs' values in Python (one host sync), which a symbolic tracer cannot do with Proxy inputs.
torchvision marks its ops with `torch.fx.wrap`, which patches the name only in the defining module's globals, so a
module that imported the op elsewhere still traces into it. Here the op itself notices Proxy arguments and records one
`call_function` node of itself instead; the traced GraphModule then calls the op with real tensors.
"""

from __future__ import annotations

import functools

import torch.fx
from torch.fx.node import map_aggregate


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
