"""Loading of the compiled extension ``opmask_fast._C``.

Importing ``_C`` runs the ``TORCH_LIBRARY_FRAGMENT(opmask_fast, ...)`` registrations, after which the kernels are
reachable as ``torch.ops.opmask_fast.<op>``. When the extension was not built (a plain checkout, an unsupported
platform) the public ops fall back to the pure-PyTorch references in ``opmask_fast.ops.reference`` and say so once.

``OPMASK_FAST_NO_EXTENSION=1`` in the environment hides a built extension on purpose (``_C`` is never imported, so
its ops are not registered either): the ops then run the references exactly as on a machine without the build, which
is how CI tests the fallback (``.ci/run``'s second pytest leg).
"""

from __future__ import annotations

import os
import warnings

_state: dict[str, object] = {"loaded": None, "error": None, "warned": False}

NO_EXTENSION_ENV = "OPMASK_FAST_NO_EXTENSION"


def hidden() -> bool:
    """Whether ``OPMASK_FAST_NO_EXTENSION`` asks to run without the extension (any value but unset, empty or 0)."""
    return os.environ.get(NO_EXTENSION_ENV, "").strip() not in ("", "0")


def has_C() -> bool:
    """Whether ``opmask_fast._C`` imports; the import is tried once per process.

    False without trying the import when ``OPMASK_FAST_NO_EXTENSION`` is set (see :func:`hidden`).
    """
    if _state["loaded"] is None:
        if hidden():
            _state["loaded"] = False
            _state["error"] = ImportError(
                f"opmask_fast._C hidden on purpose: {NO_EXTENSION_ENV}={os.environ[NO_EXTENSION_ENV]} is set "
                "(unset it to use the compiled kernels)"
            )
            return False
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
    """Warn once per process that ``op`` runs on the slow pure-PyTorch reference (not while torch.compile traces it:
    a warning there is a graph break, and fullgraph=True would fail on it)."""
    if _state["warned"]:
        return
    import torch

    if torch.compiler.is_compiling():
        return
    _state["warned"] = True
    warnings.warn(
        f"opmask_fast._C is not available ({load_error()}); {op} and the other compiled ops use the pure-PyTorch "
        "reference implementations. Build the extension with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=4,  # the caller of the op (op -> compiled -> here)
    )


def cuda_built() -> bool:
    """Whether the extension carries CUDA kernels (false for a CPU-only build or when ``_C`` is missing)."""
    if "cuda" not in _state:  # read once: the ops ask on every call, also while torch.compile traces them
        if not has_C():
            return False
        from opmask_fast import _C

        _state["cuda"] = bool(getattr(_C, "WITH_CUDA", False))
    return bool(_state["cuda"])


def cuda_missing() -> bool:
    """Whether the extension is there but without CUDA kernels (a CPU-only build: ``FORCE_CUDA=0``, or no nvcc at
    build time): its ops cannot take GPU tensors, and without the extension the references would."""
    return has_C() and not cuda_built()


def compiled(op: str, device) -> bool:
    """Whether ``op`` runs the compiled kernels for tensors on ``device`` (a ``torch.device``): True with the
    extension; False without it (the reference runs, said once by :func:`warn_fallback`); a RuntimeError naming the
    rebuild for GPU tensors and an extension built without CUDA."""
    if device.type == "cuda" and cuda_missing():
        raise RuntimeError(
            f"{op}: the tensors are on {device}, and opmask_fast._C was built without CUDA kernels (FORCE_CUDA=0 or "
            "no nvcc at build time); rebuild it where nvcc is present: `pip install --no-build-isolation -e .` "
            "(docs/install.md)"
        )
    if not has_C():
        warn_fallback(op)
        return False
    return True
