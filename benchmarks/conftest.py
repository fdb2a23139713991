"""Shared setup of the op benchmarks (pytest-benchmark; run explicitly, never part of the test run).

    python -m pytest benchmarks/bench_roi_align.py benchmarks/bench_nms.py --benchmark-only

Each benchmark group is one (op, mode, size, device) case; the parametrised ``provider`` is opmask_fast,
torchvision or reference. At the end a table gives every provider's median and its speed relative to torchvision,
measured in this one run (absolute times vary between runs and machines; ratios are what to compare).

Every benchmark runs with glibc's malloc set as `train` and `evaluate` set it on the CPU
(opmask_fast/training/host_memory.py), whichever files are collected; ``OPMASK_FAST_MALLOC=0`` times glibc's defaults.
"""

from __future__ import annotations

import pytest
import torch

PROVIDERS = ["opmask_fast", "torchvision", "reference"]


def pytest_configure(config):
    # Once per run, before any benchmark module is imported: a setting made by one module at import would change the
    # allocator under the others collected with it.
    from opmask_fast.training.host_memory import keep_freed_memory

    keep_freed_memory()


def pytest_generate_tests(metafunc):
    # Every benchmark taking `device` runs on the CPU, and on CUDA when a GPU is visible.
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])


@pytest.fixture
def sync():
    """sync(device): wait for queued GPU work so the timer measures the kernels, not the launch."""

    def _sync(device: str) -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    return _sync


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not getattr(session, "benchmarks", None):
        return
    table: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        provider = (bench.params or {}).get("provider")
        if provider is None or not bench.stats:
            continue
        table.setdefault(bench.group, {})[provider] = bench.stats.median
    write = terminalreporter.write_line
    # A group with a provider outside the ops' three (the model's variants, the prior's unfused/op/reference) goes to
    # the table that prints every provider.
    other = {g: row for g, row in table.items() if not set(row) <= set(PROVIDERS)}
    table = {g: row for g, row in table.items() if g not in other}
    if other:  # model-level groups (providers: variants of the model): median and ratio to the group's first one
        write("")
        write("median ms per call; ratio = provider time / first provider's time (same run)")
        for group in sorted(other):
            first = next(iter(other[group].values()))
            cells = ", ".join(f"{p} {v * 1e3:.1f} ({v / first:.2f}x)" for p, v in other[group].items())
            write(f"{group:<32} {cells}")
    if not table:
        return
    write("")
    write("median ms per call; speed-up = torchvision time / provider time (same run)")
    write(f"{'case':<44} {'opmask_fast':>12} {'torchvision':>12} {'reference':>12} {'speed-up':>9}")
    for group in sorted(table):
        row = table[group]
        ours, tv, ref = (row.get(p) for p in PROVIDERS)
        fmt = lambda v: f"{v * 1e3:12.2f}" if v is not None else f"{'-':>12}"  # noqa: E731
        ratio = f"{tv / ours:8.2f}x" if ours and tv else f"{'-':>9}"
        write(f"{group:<44} {fmt(ours)} {fmt(tv)} {fmt(ref)} {ratio}")
