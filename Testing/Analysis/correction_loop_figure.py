"""The Slicer correction loop on a headless MRML scene, drawn: ``Resources/Screenshots/correction_loop.png``.

Runs what the panel runs, through ``PromptRegLogic`` and the worker (slicer-core; no Qt): the 2D CT pair registered
from its three clicks, the Prompt Y of a dropped pair dragged onto its structure, the correction refit, undo. The figure shows the scene's nodes (volumes, segments, point lists) before and after the drag, the
table the panel shows and its status line. Usage: ``python Testing/Analysis/correction_loop_figure.py --data
../shared/data [-o Resources/Screenshots/correction_loop.png]``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "PromptReg"))
sys.path.insert(0, str(REPO / "Testing" / "Python"))


def _logic_module():
    from test_mrml_results import (
        _import_module_without_qt,  # the same Qt stand-ins the MRML tests use
    )
    return _import_module_without_qt()


def _segment_arrays(path: Path) -> dict[str, np.ndarray]:
    """The segments of a result's ``.seg.nrrd`` (the file the scene's segmentation node was loaded from), numpy
    order (slicer-core has no Segmentations module logic to export a node's labelmaps)."""
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    return {segment["name"]: np.transpose(slicerio.segment_mask(segmentation, segment["name"])).squeeze()
            for segment in segmentation["segments"]}


def _points_ij(markups, volume) -> list[tuple[str, float, float]]:
    """Each control point (local coordinates) as (label, column, row) on ``volume``'s grid."""
    import vtk

    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    points = []
    for index in range(markups.GetNumberOfControlPoints()):
        ras = [0.0] * 3
        markups.GetNthControlPointPosition(index, ras)
        ijk = ras_to_ijk.MultiplyPoint(ras + [1.0])
        points.append((markups.GetNthControlPointLabel(index), ijk[0], ijk[1]))
    return points


def snapshot(nodes, parameters, report, folder: Path) -> dict:
    import slicer

    return {"moving": slicer.util.arrayFromVolume(parameters.movingVolume).squeeze(),
            "fixed": slicer.util.arrayFromVolume(parameters.fixedVolume).squeeze(),
            "rois_x": _segment_arrays(folder / "fixed_rois.seg.nrrd"),
            "rois_y": _segment_arrays(folder / "moving_rois.seg.nrrd"),
            "prompt_x": _points_ij(parameters.promptX, parameters.fixedVolume),
            "prompt_y": _points_ij(nodes["prompt_y"], parameters.movingVolume),
            "pairs": report["pairs"], "report": report}


def draw(before: dict, after: dict, dragged: str, status: str, seconds: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {p["name"]: p["color"] for p in before["pairs"]}
    figure, axes = plt.subplots(1, 4, figsize=(17, 5), gridspec_kw={"width_ratios": [1, 1, 1, 1.25]})
    panels = [(before["fixed"], before["rois_x"], before["prompt_x"], "fixed: ROI X and Prompt X"),
              (before["moving"], before["rois_y"], before["prompt_y"], "moving: ROI Y, Prompt Y (as found)"),
              (after["moving"], after["rois_y"], after["prompt_y"], f"moving after dragging {dragged}'s Prompt Y")]
    for axis, (image, rois, points, title) in zip(axes, panels):
        axis.imshow(image, cmap="gray", vmin=-1000, vmax=400)
        for name, mask in rois.items():
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=[colours.get(name, (1, 1, 0))], linewidths=1.5)
        for label, column, row in points:
            axis.plot(column, row, "+", color=colours.get(label, (1, 1, 0)), markersize=12, mew=2)
            axis.annotate(label, (column, row), color="white", fontsize=8, xytext=(4, 4), textcoords="offset points")
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    old = {label: (c, r) for label, c, r in before["prompt_y"]}[dragged]
    new = {label: (c, r) for label, c, r in after["prompt_y"]}[dragged]
    axes[2].annotate("", xy=new, xytext=old, arrowprops={"arrowstyle": "->", "color": "yellow"})
    rows = [["Pair", "Used", "Dice reg.", "IoU X/Y", "Reason"]]
    for pair in after["pairs"]:
        dice = pair.get("dice_registered")
        rows.append([pair["name"] + (" *" if pair.get("corrected") else ""), "yes" if pair["accepted"] else
                     "no", "" if dice is None else f"{dice:.2f}", f"{pair['iou_x']:.2f}/{pair['iou_y']:.2f}",
                     (pair["rejected_because"] or "")[:28]])
    axes[3].axis("off")
    table = axes[3].table(cellText=rows, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.6)
    axes[3].set_title("pairs table after the correction (* corrected)", fontsize=10)
    axes[3].text(0.0, 0.08, f"status: {status}\ncorrection (worker refit, ROI Y re-segmented): {seconds:.1f} s\n"
                 "Undo restores the previous pairs and transform exactly.", fontsize=8, transform=axes[3].transAxes,
                 wrap=True)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("-o", "--output", default=str(REPO / "Resources" / "Screenshots" / "correction_loop.png"))
    args = parser.parse_args()

    import slicer

    from PromptRegLib.apps.bench.cases import load_cases
    PromptReg = _logic_module()
    from PromptRegSlicer import mrml

    case = {c.name: c for c in load_cases(args.data)}["ctchest4_2d"]
    slicer.mrmlScene = slicer.vtkMRMLScene()
    fixed = mrml.load_volume(Path(case.path(case.fixed)), "fixed")
    moving = mrml.load_volume(Path(case.path(case.moving)), "moving")
    prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
    for point in case.prompts_ras:
        prompts.AddControlPoint(point[0], point[1], 0.0)
    parameters = types.SimpleNamespace(
        fixedVolume=fixed, movingVolume=moving, promptX=prompts, boxPrompt=None, model="litemedsam", checkpoint="",
        device="cpu", autoPairs=0, warps=0, transformType="deformable", bending=10.0, loadWarped=False,
        fixedSegmentation=None, movingSegmentation=None, promptY=None, outputTransform=None, warpedVolume=None,
        jacobianVolume=None, checkerboardVolume=None, preset="Default", liveMode=True)
    logic = PromptReg.PromptRegLogic()
    with tempfile.TemporaryDirectory() as work:
        run = logic.startRun(parameters, workRoot=work)
        run.wait(timeout=900)
        if run.error:
            raise SystemExit(run.error)
        nodes = logic.loadResults(run, parameters)
        before = snapshot(nodes, parameters, nodes["report"], Path(run.result["output_dir"]))
        # the user drags the Prompt Y of a dropped pair (else the last one) onto the same structure in the moving
        # slice: where the structure lies in the fixed slice, 30 mm away (the same place, as they see it)
        dropped = [p for p in before["pairs"] if not p["accepted"]]
        pair = (dropped or before["pairs"])[-1]
        target = pair["name"]
        index = [label for label, _, _ in before["prompt_y"]].index(target)
        x_ras = list(pair["prompt_x_ras"]) + [0.0]
        nodes["prompt_y"].SetNthControlPointPosition(index, x_ras[0], x_ras[1], 0.0)
        started = time.perf_counter()
        correction = logic.startCorrection(parameters, workRoot=work)
        correction.wait(timeout=900)
        seconds = time.perf_counter() - started
        if correction.error:
            raise SystemExit(correction.error)
        nodes = logic.loadResults(correction, parameters)
        after = snapshot(nodes, parameters, nodes["report"], Path(correction.result["output_dir"]))
        status = "Refitted on CPU: " + PromptReg.PromptRegLogic.summary(nodes["report"])
        draw(before, after, target, status, seconds, Path(args.output))
        logic.undo(parameters)
        logic.discardHistory()
    print(f"{args.output}: correction {seconds:.1f} s; {status}")


if __name__ == "__main__":
    main()
