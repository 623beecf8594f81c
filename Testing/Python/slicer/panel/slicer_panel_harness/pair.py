"""A small synthetic pair for panel runs, and the user's choices for a run.

96 × 96 pixels of 2 mm, one slice: a body with two dark "lungs" and a bright blob; the moving image is the fixed
one shifted by :data:`SHIFT_LPS` with its own noise. With the weight-free ``test-patches`` backend and the Quick
preset (an affine) a registration takes seconds, most of it the worker's start.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CLICKS_RAS", "SHIFT_LPS", "add_pair", "choose_pair", "phantom", "write_pair"]

#: moving = fixed shifted by this (L, P in mm): a fixed point x samples the moving image at x + shift
SHIFT_LPS = (6.0, -4.0)
#: one Prompt X click on each structure (R, A, S)
CLICKS_RAS = [(-40.0, 0.0, 0.0), (40.0, 0.0, 0.0), (0.0, -30.0, 0.0)]
_STRUCTURES = (((-40, 0), (22, 30), 0.05), ((40, 0), (20, 28), 0.05), ((0, 30), (15, 15), 0.8))  # LPS centre, radii


def phantom(shift_lps=(0.0, 0.0), size: int = 96, spacing: float = 2.0, seed: int = 0, slices: int = 1):
    """The body moved by ``shift_lps`` (mm), as a SimpleITK image of ``slices`` equal slices 5 mm apart (each with its
    own noise)."""
    import SimpleITK as sitk

    coordinates = (np.arange(size) - (size - 1) / 2) * spacing
    y, x = np.meshgrid(coordinates - shift_lps[1], coordinates - shift_lps[0], indexing="ij")
    values = np.zeros((slices, size, size), np.float32)
    values[:, (x / 85) ** 2 + (y / 75) ** 2 <= 1] = 0.3
    for (cx, cy), (rx, ry), value in _STRUCTURES:
        values[:, ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1] = value
    values += np.random.default_rng(seed).normal(0, 0.02, values.shape).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((spacing, spacing, 5.0))
    image.SetOrigin((coordinates[0], coordinates[0], 0.0))
    return image


def write_pair(folder: Path, slices: int = 1, seed: int = 0) -> tuple[Path, Path]:
    """The fixed and the moving phantom as ``fixed.nrrd`` and ``moving.nrrd`` in ``folder`` (``seed``: their noise,
    so that no other test's embeddings are in the cache)."""
    import SimpleITK as sitk

    folder = Path(folder)
    sitk.WriteImage(phantom(seed=seed, slices=slices), str(folder / "fixed.nrrd"))
    sitk.WriteImage(phantom(SHIFT_LPS, seed=seed + 1, slices=slices), str(folder / "moving.nrrd"))
    return folder / "fixed.nrrd", folder / "moving.nrrd"


def add_pair(scene, files) -> dict:
    """The pair's volumes in ``scene`` and a Prompt X list with one click on each structure."""
    from PromptRegSlicer import mrml

    fixed = mrml.load_volume(files[0], "phantom fixed")
    moving = mrml.load_volume(files[1], "phantom moving")
    prompts = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Prompt X")
    for point in CLICKS_RAS:
        prompts.AddControlPoint(*point)
    return {"fixed": fixed, "moving": moving, "prompts": prompts}


def choose_pair(panel, pair: dict, preset: str = "Quick") -> None:
    """What the user picks before Register: the pair, its Prompt X, a preset (Quick: an affine, seconds)."""
    parameters = panel._parameterNode
    parameters.fixedVolume, parameters.movingVolume = pair["fixed"], pair["moving"]
    panel.ui.promptWidget.setCurrentNode(pair["prompts"])
    panel.ui.presetComboBox.currentIndex = panel.ui.presetComboBox.findText(preset)
