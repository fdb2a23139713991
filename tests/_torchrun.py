"""Runs a torchrun command for the tests, retrying once on one known teardown abort.

Seen once in a full run of the suite on the 2-core CPU (torch 2.14.1, gloo), never in 50 reruns of the same command:
after training had finished and the checkpoint was written, one rank aborted at exit with "terminate called without an
active exception" (SIGABRT). No DDP wrapper was alive at the process group's teardown; the cause is not known. A second
run must pass, and any other failure fails at once.
"""

import os
import subprocess
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEARDOWN_ABORT = "terminate called without an active exception"


def run_torchrun(cmd: list[str]) -> subprocess.CompletedProcess:
    for attempt in range(2):
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                              text=True, timeout=600)
        output = proc.stdout + proc.stderr
        if proc.returncode == 0 or attempt == 1 or TEARDOWN_ABORT not in output:
            break
        warnings.warn(f"torchrun: a rank aborted at exit ({TEARDOWN_ABORT!r}); running it again")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
