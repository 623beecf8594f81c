"""The progress protocol every stage reports through, and its one helper.

A callback ``progress(stage, fraction, done=None, total=None, unit=None)``: ``fraction`` (0–1) is the share of
the whole run done; a stage that counts its work also says ``done`` of ``total`` ``unit`` (slices, iterations).
Work deep inside a stage (a view encoding its slices) does not know the run's share and gives ``fraction`` None:
the share stays where the stage put it.
``PromptRegLib.apps.progress.ProgressBar`` draws it on a terminal; the Slicer worker sends it as JSON lines.
"""
from __future__ import annotations

from typing import Callable, Optional

Progress = Callable[..., None]


def ignore(stage: str, fraction: Optional[float], done: Optional[int] = None, total: Optional[int] = None,
           unit: Optional[str] = None) -> None:
    """A progress callback that reports nothing."""


def span(progress: Optional[Progress], low: float, high: float) -> Progress:
    """``progress`` for a stage that fills [``low``, ``high``] of the run: its own fraction 0–1 mapped there."""
    report = progress or ignore

    def within(stage: str, fraction: Optional[float], done=None, total=None, unit=None) -> None:
        report(stage, None if fraction is None else low + (high - low) * min(max(fraction, 0.0), 1.0), done, total,
               unit)

    return within
