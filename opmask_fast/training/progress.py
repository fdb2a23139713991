"""Progress display (losses, LR, speed, ETA) and the metrics JSONL log."""

from __future__ import annotations

import json
import math
import os
import sys
import time


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """One status line per update: ``[it/total] loss ... lr ... s/it ETA``.

    On a terminal the line redraws in place; otherwise (logs, CI) each update is its own line.
    """

    def __init__(self, *, total: int, start: int = 0, stream=None, enabled: bool = True) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def seconds_per_iter(self, iteration: int) -> float:
        done = iteration - self.start
        return (time.perf_counter() - self.t0) / done if done > 0 else math.nan

    def update(self, iteration: int, losses: dict[str, float], lr: float) -> None:
        if not self.enabled:
            return
        spi = self.seconds_per_iter(iteration)
        total_loss = sum(losses.values())
        parts = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in losses.items())
        width = 20
        filled = int(width * iteration / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{bar}] {iteration}/{self.total} loss {total_loss:.3f} ({parts}) lr {lr:.2e} "
                f"{spi:.2f} s/it ETA {format_seconds(spi * (self.total - iteration))}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if iteration >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class MetricsLog:
    """Appends one JSON object per line to ``path`` (a resumed run continues the same file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_until(self, iteration: int) -> None:
        """Drops the records after `iteration` (0: all of them): a run resumed from its checkpoint at `iteration`, or
        started afresh, writes those iterations again, and a crashed run's lines past its checkpoint or a finished
        earlier run's lines must not stand beside them. A line cut short by a crash is dropped too."""
        self._keep(lambda record: iteration > 0 and record.get("iteration", 0) <= iteration)

    def drop_evaluation(self, iteration: int) -> None:
        """Drops the evaluation records of `iteration`: a finished run resumed evaluates its model again, and the new
        evaluation replaces the old one instead of standing beside it."""
        self._keep(lambda record: not ("eval" in record and record.get("iteration") == iteration))

    def _keep(self, keep) -> None:
        if not os.path.isfile(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if keep(record):
                    kept.append(json.dumps(record) + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)


def json_safe(v):
    """``v`` with every non-finite float (nested in dicts and lists too) replaced by None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v
