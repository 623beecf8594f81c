"""Progress on stderr: one tqdm bar per stage, counting what the stage counts, with the time left.

Every stage reports ``progress(stage, fraction, done=None, total=None, unit=None)``: ``fraction`` is the whole
run's progress (0–1, what a GUI's bar shows); a stage that counts work (slices encoded, boxes decoded,
iterations) also gives ``done`` of ``total`` ``unit``. A counted stage's bar shows that count and the time left
at that stage's own pace; an uncounted one shows its share of the run.
"""
from __future__ import annotations

import sys


class ProgressBar:
    """A ``progress`` callback drawing tqdm bars on stderr; ``quiet`` turns it off."""

    COUNTED = "{desc}: {n_fmt}/{total_fmt} {unit} |{bar}| {elapsed} elapsed, ~{remaining} left"
    SHARE = "{desc}: {percentage:3.0f}% of the run |{bar}| {elapsed}"

    def __init__(self, quiet: bool = False, prefix: str = ""):
        self.quiet = quiet
        self.prefix = prefix
        self.key: tuple | None = None
        self.bar = None

    def __call__(self, stage: str, fraction: float | None, done: int | None = None, total: int | None = None,
                 unit: str | None = None) -> None:
        if self.quiet:
            return
        counted = done is not None and bool(total)
        key = (stage, total if counted else None)
        if key != self.key:
            self._start(stage, total if counted else 100, unit if counted else None)
            self.key = key
        if not counted and fraction is None:
            return
        value = int(done) if counted else int(round(100 * min(max(fraction, 0.0), 1.0)))
        if value > self.bar.n:
            self.bar.update(value - self.bar.n)

    def _start(self, stage: str, total: int, unit: str | None) -> None:
        from tqdm import tqdm

        if self.bar is not None:
            self.bar.close()
        self.bar = tqdm(total=total, initial=0, unit=unit or "%", file=sys.stderr, leave=False, dynamic_ncols=True,
                        desc=f"{self.prefix}{stage}", bar_format=self.COUNTED if unit else self.SHARE)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.key = None
