"""Loading of the compiled extension ``opmask_fast._C``.

Importing ``_C`` runs the ``TORCH_LIBRARY_FRAGMENT(opmask_fast, ...)`` registrations, after which the kernels are
reachable as ``torch.ops.opmask_fast.<op>``. When the extension was not built (a plain checkout, an unsupported
platform) the public ops fall back to the pure-PyTorch references in ``opmask_fast.ops.reference`` and say so once.
"""

from __future__ import annotations

import warnings

_state: dict[str, object] = {"loaded": None, "error": None, "warned": False}


def has_C() -> bool:
    """Whether ``opmask_fast._C`` imports; the import is tried once per process."""
    if _state["loaded"] is None:
        try:
            import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)
            from opmask_fast import _C  # noqa: F401  (import runs the op registrations)

            _state["loaded"] = True
        except ImportError as exc:  # not built, or built against another torch
            _state["loaded"] = False
            _state["error"] = exc
    return bool(_state["loaded"])


def load_error() -> Exception | None:
    """The ImportError that made ``has_C()`` false, for diagnostics."""
    has_C()
    return _state["error"]  # type: ignore[return-value]


def warn_fallback(op: str) -> None:
    """Warn once per process that ``op`` runs on the slow pure-PyTorch reference."""
    if _state["warned"]:
        return
    _state["warned"] = True
    warnings.warn(
        f"opmask_fast._C is not available ({load_error()}); {op} and the other compiled ops use the pure-PyTorch "
        "reference implementations. Build the extension with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=3,
    )


def cuda_built() -> bool:
    """Whether the extension carries CUDA kernels (false for a CPU-only build or when ``_C`` is missing)."""
    if not has_C():
        return False
    from opmask_fast import _C

    return bool(getattr(_C, "WITH_CUDA", False))
