"""A batch's summary: ``summary.csv`` and ``summary.json`` (one record per row) and ``overview.png``.

The tables are rewritten after every finished pair, each file replaced whole, so an interrupted batch still leaves
a summary of what it finished; the figure is drawn when the batch ends.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

#: summary.csv's columns, in order (summary.json holds every field, per-label Dice included)
COLUMNS = ("id", "status", "exit_code", "message", "seconds", "peak_mb", "pairs_used", "pairs_total",
           "folding_percent", "dice_mean", "dice_mean_before", "tre_mm", "tre_mm_before", "tre_landmarks_mm",
           "tre_landmarks_mm_before", "encoded_fixed", "encoded_moving", "cache_hits", "cache_misses", "worker",
           "this_run", "output")
STATUS_COLOURS = {"done": "#4a9a5b", "failed": "#c8453b", "not run": "#9a9a9a"}


def _replace(path: Path, text: str | bytes) -> None:
    """Write ``path`` through a temporary file renamed over it: readers never see half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(text.encode() if isinstance(text, str) else text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_summary(output_dir: Path, records: list[dict], run: dict, figure: bool = True) -> None:
    """``summary.csv``, ``summary.json`` (``run``: scheduler, workers, wall time …) and, with ``figure``,
    ``overview.png``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in records:
        writer.writerow([_cell(record.get(c)) for c in COLUMNS])
    _replace(output_dir / "summary.csv", buffer.getvalue())
    _replace(output_dir / "summary.json", json.dumps({"run": run, "pairs": records}, indent=2))
    if figure:
        _replace(output_dir / "overview.png", overview_png(records, run))


def read_summary(output_dir: Path) -> dict[str, dict]:
    """The records of an earlier run, by id (empty when there is none or it cannot be read)."""
    try:
        document = json.loads((output_dir / "summary.json").read_text())
        return {r["id"]: r for r in document.get("pairs", []) if isinstance(r, dict) and "id" in r}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


#: above this many pairs the overview shows distributions instead of one bar per pair
MAX_BARS = 60
SCORE_LABELS = {"dice_mean": "mean Dice", "tre_mm": "TRE (mm)", "tre_landmarks_mm": "landmark TRE (mm)"}


def overview_png(records: list[dict], run: dict) -> bytes:
    """One figure: seconds per pair coloured by status (exit code on failures) and the scores before and after
    where given — per pair up to :data:`MAX_BARS` pairs, as histograms beyond."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [k for k in SCORE_LABELS if any(r.get(k) is not None for r in records)]
    per_pair = len(records) <= MAX_BARS
    height = 1.4 + 0.28 * len(records) if per_pair else 3.5
    figure, axes = plt.subplots(1, 1 + len(scored), figsize=(4.5 * (1 + len(scored)), height), squeeze=False,
                                sharey=per_pair)
    (_bars if per_pair else _histograms)(axes[0], records, scored)
    done = sum(r.get("status") == "done" for r in records)
    axes[0, 0].set_title(f"{done} of {len(records)} pairs done; {run.get('wall_s', 0):.0f} s wall, "
                         f"{run.get('workers', '?')} workers", fontsize=9)
    figure.tight_layout()
    stream = io.BytesIO()
    figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)
    return stream.getvalue()


def _bars(axes, records: list[dict], scored: list[str]) -> None:
    ordered = records[::-1]
    names = [r["id"] for r in ordered]
    seconds = [r.get("seconds") or 0.0 for r in ordered]
    axes[0].barh(names, seconds, color=[STATUS_COLOURS.get(r.get("status"), "#9a9a9a") for r in ordered])
    for y, record in enumerate(ordered):
        if record.get("status") == "failed":
            axes[0].text(seconds[y], y, f"  exit {record.get('exit_code')}", va="center", fontsize=8)
    axes[0].set_xlabel("seconds (green done, red failed, grey not run)")
    for axis, key in zip(axes[1:], scored):
        positions = range(len(ordered))
        axis.barh([p + 0.2 for p in positions], [r.get(f"{key}_before") or 0.0 for r in ordered], height=0.4,
                  color="#bbbbbb", label="before")
        axis.barh([p - 0.2 for p in positions], [r.get(key) or 0.0 for r in ordered], height=0.4, color="#3d7ab8",
                  label="after")
        axis.set_xlabel(SCORE_LABELS[key])
        axis.legend(fontsize=7, loc="lower right")


def _histograms(axes, records: list[dict], scored: list[str]) -> None:
    for status, colour in STATUS_COLOURS.items():
        seconds = [r.get("seconds") or 0.0 for r in records if r.get("status") == status]
        if seconds:
            axes[0].hist(seconds, bins=30, color=colour, alpha=0.7, label=f"{status} ({len(seconds)})")
    axes[0].set_xlabel("seconds per pair")
    axes[0].legend(fontsize=7)
    for axis, key in zip(axes[1:], scored):
        for suffix, colour, label in (("_before", "#bbbbbb", "before"), ("", "#3d7ab8", "after")):
            values = [r[f"{key}{suffix}"] for r in records if r.get(f"{key}{suffix}") is not None]
            if values:
                axis.hist(values, bins=30, color=colour, alpha=0.7, label=label)
        axis.set_xlabel(SCORE_LABELS[key])
        axis.legend(fontsize=7)
