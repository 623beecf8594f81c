"""Prompts as people write them: ``R,A,S`` text on a command line or in a table, and Slicer markups files.

Coordinates are RAS millimetres (what Slicer shows); a markups file in LPS is converted on reading.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..core.image import lps_to_ras, ras_to_lps
from ..errors import PromptError


def parse_point(text: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise PromptError(f"cannot read {text!r} as coordinates: give R,A,S (or R,A for 2D) in millimetres.") \
            from None
    if values.size not in (2, 3):
        raise PromptError(f"{text!r}: a point needs 2 or 3 comma-separated numbers.")
    return values


def parse_pair(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``R,A,S:R,A,S`` → (Prompt X on the fixed image, Prompt Y on the moving image)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise PromptError(f"{text!r}: a pair is Prompt X on the fixed image and Prompt Y on the moving image, "
                          "R,A,S:R,A,S (R,A:R,A in 2D).")
    return parse_point(parts[0]), parse_point(parts[1])


def parse_box(text: str) -> np.ndarray:
    values = parse_point_list(text)
    if values.size not in (4, 6):
        raise PromptError(f"{text!r}: a box needs two corners, R1,A1,S1,R2,A2,S2 (or R1,A1,R2,A2 in 2D).")
    return values


def parse_point_list(text: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise PromptError(f"cannot read {text!r} as coordinates.") from None


def write_markups(path: Path, points_lps: list[np.ndarray], labels: list[str], name: str) -> None:
    """A Slicer markups point list (``.mrk.json``) with positions in RAS."""
    control_points = []
    for index, (point, label) in enumerate(zip(points_lps, labels)):
        ras = lps_to_ras(np.asarray(point, dtype=float))
        ras = np.concatenate([ras, np.zeros(3 - ras.size)])
        control_points.append({"id": str(index + 1), "label": label, "position": [float(v) for v in ras],
                               "positionStatus": "defined", "selected": True, "locked": False, "visibility": True})
    document = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                           "Resources/Schema/markups-schema-v1.0.3.json#",
                "markups": [{"type": "Fiducial", "name": name, "coordinateSystem": "RAS", "coordinateUnits": "mm",
                             "controlPoints": control_points}]}
    path.write_text(json.dumps(document, indent=2))


def read_markups(path: str | os.PathLike) -> list[np.ndarray]:
    """Control point positions of a Slicer ``.mrk.json`` (any markups type), as RAS mm."""
    try:
        document = json.loads(Path(path).read_text())
        points = []
        for markup in document["markups"]:
            system = markup.get("coordinateSystem", "LPS").upper()
            for control in markup.get("controlPoints", []):
                position = np.asarray(control["position"], dtype=float)
                points.append(position if system == "RAS" else ras_to_lps(position))
        return points
    except FileNotFoundError:
        raise PromptError(f"{path}: no such markups file.") from None
    except (ValueError, KeyError, TypeError) as error:
        raise PromptError(f"{path}: not a Slicer markups (.mrk.json) file ({error}).") from None
