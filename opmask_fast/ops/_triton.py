"""Where the prior's Triton kernels come from: `_triton_kernels()` imports them on first use (CPU users need no Triton),
from the installed package or, in a source tree that setup.py has not mapped, from the repository's kernels/ folder.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path


@functools.lru_cache(maxsize=None)
def _triton_kernels():
    """The Triton kernel module, imported only when the Triton backend runs (CPU users need no Triton)."""
    try:
        return importlib.import_module("opmask_fast.kernels.object_prior_add")
    except ModuleNotFoundError as err:
        if err.name not in ("opmask_fast.kernels", "opmask_fast.kernels.object_prior_add"):
            raise  # Triton itself (or a dependency) is missing: say so.
    # Not installed through setup.py (which maps kernels/ to opmask_fast.kernels): load the package from the source
    # tree, as a package so that its modules' relative imports resolve.
    folder = Path(__file__).resolve().parents[2] / "kernels"
    init = folder / "__init__.py"
    if not init.exists():
        raise ImportError(f"opmask_fast's Triton kernels are not installed and {init} does not exist")
    spec = importlib.util.spec_from_file_location("opmask_fast.kernels", init, submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    try:
        spec.loader.exec_module(package)
        return importlib.import_module("opmask_fast.kernels.object_prior_add")
    except BaseException:
        sys.modules.pop(spec.name, None)  # no half-loaded package left for the next import to find
        raise


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
