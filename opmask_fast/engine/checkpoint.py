"""Atomic checkpoints and the RNG state that makes a resumed run continue exactly."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def save_atomic(obj: dict, path: str) -> None:
    """Writes ``obj`` with ``torch.save`` to a temporary file in the same folder, syncs it, then renames it over
    ``path``.

    A crash (or an exception) while writing leaves the previous file at ``path`` intact and no temporary file behind.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class CheckpointError(ValueError):
    """A file that is not a checkpoint of opmask_fast (or not one that fits its use); the message names it."""


def load_checkpoint(path: str) -> dict:
    """Loads a file written by ``torch.save`` (tensors and plain Python values only: ``weights_only``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: anything ``torch.load`` cannot read safely (text, random bytes, a truncated file, a pickle of
            arbitrary objects) or that holds no dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own message is many lines of advice about weights_only; say what matters
        kind = "the file is empty" if os.path.getsize(path) == 0 else \
            "not written by torch.save, truncated, or holding objects other than tensors and plain values"
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a checkpoint ({kind}); expected a "
                              "checkpoint.pth written by opmask_fast.train or a state dict saved with torch.save") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a dict")
    return state


def check_model_checkpoint(state: dict, path: str) -> dict:
    """Checks that ``state`` (from ``load_checkpoint``) is a checkpoint written by ``opmask_fast.train``: model weights
    and the meta data (model config, categories) needed to rebuild the model. Returns ``state``.

    Raises:
        CheckpointError: naming the file and what is missing.
    """
    meta = state.get("meta")
    model = state.get("model")
    if not isinstance(meta, dict) or not isinstance(model, dict):
        keys = ", ".join(sorted(map(str, state))[:8]) + (" ..." if len(state) > 8 else "")
        raise CheckpointError(f"{path} is not a checkpoint of opmask_fast.train: it has no 'model' and 'meta' entries "
                              f"(its keys: {keys or 'none'})")
    missing = [k for k in ("model_config", "category_ids", "category_names") if k not in meta]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of opmask_fast.train: its meta has no {', '.join(missing)}")
    if not all(torch.is_tensor(v) for v in model.values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict of tensors")
    return state


def get_rng_state() -> dict:
    """RNG state of torch (CPU and CUDA), numpy and random, as tensors and plain values (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
