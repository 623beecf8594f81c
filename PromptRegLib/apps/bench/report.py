"""The bench's report: ``bench.md`` (one table), plots, and the one-line summary per row."""
from __future__ import annotations

from pathlib import Path

import numpy as np


# --- report ------------------------------------------------------------------------------------------------
def _fmt(value, pattern: str = "{:.3f}") -> str:
    return "" if value is None else pattern.format(value)


def _tre_text(row: dict) -> str:
    if row.get("tre_mm") is not None:
        return f"{row['tre_mm']:.2f} mm"
    if row.get("tre_px") is not None:
        return f"{row['tre_px']:.1f} px ({100 * row['rtre']:.2f} %)"
    return ""


def _markdown(rows: list[dict]) -> str:
    lines = ["| case | method | Dice mean | TRE (rTRE) | click-set TRE spread | folding | SDlogJ | seconds | fit s | "
             "second click s | correction s | peak MB | transform MB | time ratio PromptReg/peer | Dice ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            why = " ".join(row["error"].split()).replace("|", "/")[:100]  # one table cell
            lines.append(f"| {row['case']} | {row['method']} | error: {why} | | | | | "
                         f"{_fmt(row.get('seconds'), '{:.1f}')} | | | | {_fmt(row.get('peak_mb'), '{:.0f}')} | | | |")
            continue
        spread = row.get("click_spread", {})
        tre_spread = spread.get("tre_mm") or spread.get("tre_px")
        spread_text = "" if not spread else (f"{tre_spread['spread']:.2f} ({spread['sets'] - spread['errors']}/"
                                             f"{spread['sets']} sets)" if tre_spread else f"0/{spread['sets']} sets")
        lines.append(f"| {row['case']} | {row['method']} | {_fmt(row.get('dice_mean'))} | {_tre_text(row)} | "
                     f"{spread_text} | {_fmt(row.get('folding'), '{:.4f}')} | {_fmt(row.get('sdlogj'), '{:.3f}')} | "
                     f"{row['seconds']:.1f} | {_fmt(row.get('fit_s'), '{:.1f}')} | "
                     f"{_fmt(row.get('second_click_s'), '{:.1f}')} | {_fmt(row.get('correction_s'), '{:.1f}')} | "
                     f"{row['peak_mb']:.0f} | "
                     f"{_fmt(row.get('transform_mb'), '{:.2f}')} | "
                     f"{_fmt(row.get('time_ratio'), '{:.2f}')} | {_fmt(row.get('dice_ratio'), '{:.2f}')} |")
    spread_rows = [r for r in rows if r.get("click_spread")]
    if spread_rows:
        lines += ["", "Click-set spread (PromptReg over clicks drawn inside the labelled structures):", "",
                  "| case | sets (errors) | TRE min / mean / max | TRE spread | Dice min / mean / max |",
                  "|---|---|---|---|---|"]
        for row in spread_rows:
            spread = row["click_spread"]
            tre, dice = spread.get("tre_mm") or spread.get("tre_px"), spread.get("dice_mean")
            tre_text = "" if not tre else f"{tre['min']:.2f} / {tre['mean']:.2f} / {tre['max']:.2f}"
            dice_text = "" if not dice else f"{dice['min']:.3f} / {dice['mean']:.3f} / {dice['max']:.3f}"
            lines.append(f"| {row['case']} | {spread['sets']} ({spread['errors']}) | {tre_text} | "
                         f"{_fmt(tre and tre['spread'], '{:.2f}')} | {dice_text} |")
    lines += _roi_dice_lines(rows)
    return "\n".join(lines) + "\n"


def _roi_dice_lines(rows: list[dict]) -> list[str]:
    """Per click named after a labelled structure: its ROI X and ROI Y Dice against the labels, and whether used."""
    clicked = [r for r in rows if r.get("roi_dice")]
    if not clicked:
        return []
    lines = ["", "ROI Dice per click (PromptReg; each ROI against the label of the structure clicked):", "",
             "| case | click | ROI X Dice | ROI Y Dice | pair used |", "|---|---|---|---|---|"]
    for row in clicked:
        for name, scores in row["roi_dice"].items():
            lines.append(f"| {row['case']} | {name} | {scores['roi_x']:.2f} | {scores['roi_y']:.2f} | "
                         f"{'yes' if scores['used'] else 'no'} |")
    return lines


def _plots(rows: list[dict], output_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "error" not in r and r.get("dice_mean") is not None]
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in good}):
        points = [(max(r["seconds"], 0.1), r["dice_mean"]) for r in good if r["method"] == method]
        axis.scatter(*zip(*points), label=method)
    axis.set_xscale("log")
    axis.set_xlabel("wall time (s, log)")
    axis.set_ylabel("mean Dice")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "accuracy_vs_time.png", dpi=100)
    plt.close(figure)
    structures = sorted({(r["case"], s) for r in good for s in r.get("dice", {})})
    methods = sorted({r["method"] for r in good})
    figure, axis = plt.subplots(figsize=(max(6, len(structures) * 0.9), 4))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        values = [next((r["dice"].get(s) for r in good if r["method"] == method and r["case"] == c), np.nan)
                  for c, s in structures]
        axis.bar(np.arange(len(structures)) + i * width, values, width, label=method)
    axis.set_xticks(np.arange(len(structures)) + 0.4 - width / 2)
    axis.set_xticklabels([f"{c}\n{s}" for c, s in structures], rotation=45, ha="right", fontsize=7)
    axis.set_ylabel("Dice")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "dice_per_structure.png", dpi=100)
    plt.close(figure)


def _summary_line(row: dict) -> str:
    if "error" in row:
        return f"  {row['method']}: {row['error']}"
    measures = [f"Dice {row['dice_mean']:.3f}" if row.get("dice_mean") is not None else "", _tre_text(row)]
    return (f"  {row['method']}: {', '.join(m for m in measures if m)}; {row['seconds']:.1f} s, "
            f"{row['peak_mb']:.0f} MB, transform {row.get('transform_mb', 0):.2f} MB")

