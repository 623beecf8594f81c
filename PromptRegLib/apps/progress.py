"""Progress on stderr: one tqdm bar per stage, with the stage's rate and the time left at that rate."""
from __future__ import annotations

import sys


class ProgressBar:
    """``progress(stage, fraction)`` callback drawing tqdm bars; ``quiet`` turns it off.

    ``fraction`` is the whole run's progress (0–1). Each new stage starts a fresh bar, so its rate (% per second)
    and the time left are measured on that stage alone rather than averaged over earlier, differently paced stages.
    """

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, {rate_fmt}, ~{remaining} left"

    def __init__(self, quiet: bool = False, prefix: str = ""):
        self.quiet = quiet
        self.prefix = prefix
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, fraction: float) -> None:
        if self.quiet:
            return
        percent = int(round(100 * min(max(fraction, 0.0), 1.0)))
        if stage != self.stage:
            self._start(stage, percent)
        if percent > self.bar.n:
            self.bar.update(percent - self.bar.n)

    def _start(self, stage: str, percent: int) -> None:
        from tqdm import tqdm

        if self.bar is not None:
            self.bar.close()
        self.stage = stage
        self.bar = tqdm(total=100, initial=percent, unit="%", file=sys.stderr, leave=False, dynamic_ncols=True,
                        desc=f"{self.prefix}{stage}", bar_format=self.BAR_FORMAT)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stage = None
