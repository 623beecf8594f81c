"""The methods the bench compares, each ``(case, quick, progress, **options)`` → (fixed → moving transform, extra row fields)."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ...core.image import ras_to_lps
from ...io.outputs import write_registration
from ...pipeline.options import NO_CLICK_AUTO_PAIRS, RegistrationOptions
from ...pipeline.registration import refit_transform, register
from ...prompting.inverse import prompt_pair
from ...prompting.pairs import PairOptions, find_pairs, initial_prior
from ...transform.fit import FitOptions
from ..progress import ProgressBar
from .cases import Case
from .convexadam_peer import _convexadam
from .peers import _ants, _elastix, _simpleitk
from .scoring import roi_dice_per_click, score


# --- methods: each (case, quick, progress, **options) → (fixed → moving transform, extra row fields) ------------
def _register_promptreg(case: Case, progress):
    """PromptReg on the case's clicks with the case's ``options`` (outside names, as everywhere)."""
    return register(case.path(case.fixed), case.path(case.moving), case.prompts_ras,
                    RegistrationOptions.from_mapping(case.options), progress=progress)


def _promptreg_extra(case: Case, result) -> dict:
    """PromptReg's own row fields: pairs, folding and the field's smoothness, per-click ROI Dice, the encoder."""
    jacobian = result.report.get("jacobian", {})
    return {"pairs_used": len(result.accepted_pairs), "pairs_found": len(result.pairs),
            "folding": jacobian.get("folding_foreground", result.report.get("folding_fraction")),
            "sdlogj": jacobian.get("sdlogj"), "roi_dice": roi_dice_per_click(case, result),
            "encoder": result.report.get("encoder"), "fit_s": result.report.get("timings_s", {}).get("fit")}


def second_click_seconds(case: Case, result) -> float | None:
    """Seconds to pair one more click once both images are encoded, as in a live Slicer session: the case's
    first click again, on the run's own views (their embeddings held in memory), one click one pair (no sampled
    pairs even when it is rejected); None without clicks."""
    if not case.prompts_ras:
        return None
    point = ras_to_lps(np.asarray(case.prompts_ras[0], dtype=float))[: result.fixed_image.dimension]
    started = time.perf_counter()
    find_pairs(result.fixed_view, result.moving_view, [point], [],
               initial_prior(result.fixed_view, result.moving_view),
               PairOptions(auto_pairs=0, warps=0, fallback_auto_pairs=0))
    return time.perf_counter() - started


#: how far the correction latency's simulated user drags a Prompt Y (mm, along R)
CORRECTION_DRAG_MM = 3.0


def correction_seconds(result) -> float | None:
    """Seconds from a moved Prompt Y to an updated transform once both images are encoded, as in a live Slicer
    session: the first used pair's Prompt Y dragged :data:`CORRECTION_DRAG_MM`, its ROI Y segmented there on the
    run's own views (:func:`~PromptRegLib.prompting.inverse.prompt_pair`) and the transform refitted. Changes
    ``result`` (take its transform first); None when no pair was used."""
    used = result.accepted_pairs
    if not used or result.transform is None:
        return None
    pair = used[0]
    started = time.perf_counter()
    dragged = pair.prompt_y_lps + np.eye(len(pair.prompt_y_lps))[0] * -CORRECTION_DRAG_MM  # +R is −L
    pair.roi_y = prompt_pair(result.fixed_view, result.moving_view, pair.roi_x, dragged).roi_y
    pair.prompt_y_lps = dragged
    # the run's own fit options, started from its transform (as the worker's correction refit does)
    refit_transform(result, FitOptions(**result.report["fit_options"]), start=result.transform)
    return time.perf_counter() - started


def _promptreg(case: Case, quick: bool, progress, second_click: bool = True) -> tuple[sitk.Transform, dict]:
    result = _register_promptreg(case, progress)
    transform, extra = result.transform.to_sitk(), _promptreg_extra(case, result)
    if second_click:
        progress("timing a second click", 1.0)
        extra["second_click_s"] = second_click_seconds(case, result)
        progress("timing a Prompt Y correction", 1.0)
        extra["correction_s"] = correction_seconds(result)
    return transform, extra


def _promptreg_accurate(case: Case, quick: bool, progress) -> tuple[sitk.Transform, dict]:
    """The case's clicks with the ``accurate`` preset (in 3D the discrete first step and a 15 mm control level)."""
    return _promptreg(dataclasses.replace(case, options={**case.options, "preset": "accurate"}), quick, progress,
                      second_click=False)


def _promptreg_auto(case: Case, quick: bool, progress,
                    auto_pairs: int = NO_CLICK_AUTO_PAIRS) -> tuple[sitk.Transform, dict]:
    """Zero clicks: sampled prompts only."""
    return _promptreg(dataclasses.replace(case, prompts_ras=[], options={**case.options, "auto_pairs": auto_pairs}),
                      quick, progress, second_click=False)


METHODS = {"promptreg": _promptreg, "promptreg-accurate": _promptreg_accurate, "promptreg-auto": _promptreg_auto,
           "simpleitk": _simpleitk, "elastix": _elastix, "ants": _ants, "convexadam": _convexadam}


OPTIONAL = {"elastix": "itk", "ants": "ants", "convexadam": "convexAdam"}


def available_methods() -> list[str]:
    import importlib.util
    return [m for m in METHODS if m not in OPTIONAL or importlib.util.find_spec(OPTIONAL[m]) is not None]


def run_promptreg_case(case: Case, output_dir: Path, quiet: bool = False) -> dict:
    """The demo's job: register one case with PromptReg in this process, write outputs, score before/after."""

    started = time.perf_counter()
    progress = ProgressBar(quiet)
    try:
        result = _register_promptreg(case, progress)
    finally:
        progress.close()
    write_registration(result, output_dir)
    row = {"case": case.name, **score(case, result.transform.to_sitk()), **_promptreg_extra(case, result),
           "seconds": time.perf_counter() - started}
    before = score(case, None)
    row["dice_before"], row["tre_before_mm"] = before.get("dice", {}), before.get("tre_mm")
    (Path(output_dir) / "scores.json").write_text(json.dumps(row, indent=2))
    return row

