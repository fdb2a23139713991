"""Runs a torchrun command for the tests: any failure fails at once, with the command's output.

There is no retry: a rank that aborts at exit is a defect to see (training/distributed.py `_import_group_defaults`
says which one was found and fixed; scripts/torchrun_stress.py reproduces such aborts under load).
"""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_torchrun(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
