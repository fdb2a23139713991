"""Running the package's commands in tests: as real processes, or through ``main(argv)`` in this process, and the
one-line usage error (exit code 2) every bad input must give."""

import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"opmask_fast.{command}", *map(str, args)], cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})), capture_output=True, text=True,
                          timeout=600)


def usage_error(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """Asserts the one-line usage error and returns it."""
    lines = [l for l in proc.stderr.splitlines() if ": error:" in l]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"python -m opmask_fast.{command}: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def in_process(capsys, command: str, *args) -> str:
    """The same command through ``main(argv)`` (cheaper than a process): SystemExit(2) and the one error line."""
    main = importlib.import_module(f"opmask_fast.{command}").main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if ": error:" in l]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"python -m opmask_fast.{command}: error: ")
    return lines[0]
