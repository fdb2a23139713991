"""Tells apart the candidate causes of a C++ error that kills the process instead of raising (gpu_run.sh's "C++ errors
reach Python" stage runs it; it runs on any machine with a compiler).

Builds three tiny extensions the way setup.py builds opmask_fast._C (-O3 -g0 -fopenmp) and calls each in its own
process:
  numbers        formats numbers with c10::str (a std::ostringstream) and returns the string: no exception at all;
  plain_throw    TORCH_CHECK(false, "one string") inside an AT_DISPATCH lambda that holds a std::vector;
  number_throw   TORCH_CHECK(false, "n = ", n) outside any lambda (a message formatted through a stream).
A crash of `numbers` alone points at the stream's number formatting binding to another C++ runtime; of
`plain_throw` alone at unwinding through the lambda (unwind tables, a backtrace walk); of `number_throw` only at
formatting during the throw. For a case that dies it prints gdb's native stack, the loaded C++ and OpenMP runtimes,
and `LD_DEBUG=bindings` lines of the locale, stream, unwind and OpenMP symbols.

    python benchmarks/error_controls.py            # exit 1 when any control died
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

SOURCE = r"""
#include <torch/extension.h>
#include <vector>

std::string numbers(int64_t n) { return c10::str("n = ", n, ", x = ", 1.5 * n); }

void plain_throw(const at::Tensor& t) {
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "plain_throw", [&] {
    std::vector<scalar_t> held(16);
    TORCH_CHECK(held.empty(), "opmask_fast control: a one-string check inside a dispatch");
  });
}

void number_throw(int64_t n) { TORCH_CHECK(false, "opmask_fast control: n = ", n); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("numbers", &numbers);
  m.def("plain_throw", &plain_throw);
  m.def("number_throw", &number_throw);
}
"""

CALLS = {
    "numbers": "print(m.numbers(7))",
    "plain_throw": "m.plain_throw(torch.zeros(2))",
    "number_throw": "m.number_throw(7)",
}
SYMBOLS = ("locale", "num_put", "ostream", "basic_ios", "_Unwind", "__cxa_throw", "GOMP", "omp_")


def _script(build: str, call: str) -> str:
    return (f"import torch\nfrom torch.utils.cpp_extension import load\n"
            f"m = load('opmask_controls', [{os.path.join(build, 'controls.cpp')!r}], build_directory={build!r}, "
            f"extra_cflags=['-O3', '-g0', '-fopenmp'], extra_ldflags=['-fopenmp'], verbose=False)\n"
            f"try:\n    {call}\nexcept RuntimeError as e:\n    print('RuntimeError:', str(e).splitlines()[0])\n")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    build = tempfile.mkdtemp(prefix="opmask_controls_")
    try:
        return _run_controls(build)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _run_controls(build: str) -> int:
    with open(os.path.join(build, "controls.cpp"), "w") as f:
        f.write(SOURCE)
    first = subprocess.run([sys.executable, "-c", _script(build, "pass")], capture_output=True, text=True, timeout=900)
    if first.returncode != 0:
        print("controls: the build failed:\n" + first.stderr[-3000:])
        return 1
    died = []
    for name, call in CALLS.items():
        script = _script(build, call)
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], capture_output=True, text=True,
                              timeout=300)
        line = (proc.stdout.strip().splitlines() or [""])[-1]
        print(f"control {name}: " + ("ok: " + line if proc.returncode == 0 else f"DIED (exit {proc.returncode})"))
        if proc.returncode == 0:
            continue
        died.append(name)
        gdb = shutil.which("gdb") or shutil.which("cuda-gdb")
        if gdb:
            bt = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 25", "-ex", "info sharedlibrary",
                                 "--args", sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
            lines = bt.stdout.splitlines()
            print("\n".join(l for l in lines if l.startswith("#"))[:6000])
            print("runtimes loaded: " + "; ".join(sorted({l.split()[-1] for l in lines
                                                          if any(k in l for k in ("libstdc++", "libgomp", "libomp",
                                                                                  "libiomp", "libgcc_s"))})))
        env = dict(os.environ, LD_DEBUG="bindings")
        ld = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        hits = [l for l in ld.stderr.splitlines() if "opmask_controls" in l and any(s in l for s in SYMBOLS)]
        print(f"LD_DEBUG bindings of the control's locale/stream/unwind/OpenMP symbols ({len(hits)}):")
        print("\n".join(hits[:40]))
    return 1 if died else 0


if __name__ == "__main__":
    raise SystemExit(main())
