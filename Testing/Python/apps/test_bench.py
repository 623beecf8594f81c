"""Benchmark cases are data (JSON), scored the same way for every method; each run is guarded in its own process."""
import dataclasses
import json
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk

from PromptRegLib.apps.bench.cases import (
    draw_click_sets,
    grid_for_spacing,
    load_cases,
    prepare_case,
    summarise_click_runs,
)
from PromptRegLib.apps.bench.methods import CORRECTION_DRAG_MM, correction_seconds, second_click_seconds
from PromptRegLib.apps.bench.report import _markdown
from PromptRegLib.apps.bench.run import Limits, run_guarded
from PromptRegLib.apps.bench.scoring import landmark_pixels, read_homography, score
from PromptRegLib.errors import InputImageError
from PromptRegLib.pipeline.options import RegistrationOptions


@pytest.fixture(scope="module")
def cases(data_dir):
    return {c.name: c for c in load_cases(data_dir)}


def test_shipped_cases_load_and_identity_scores_match_the_data_readme(cases):
    assert {"ctchest4_3d", "ctchest4_2d", "ctchest4_3d_fine", "histology_rat_kidney", "histology_lung_lesion",
            "aerial_synth", "graffiti"} <= set(cases)
    identity = score(cases["ctchest4_3d"], None)
    assert abs(identity["tre_mm"] - 11.2) < 0.3  # identity: the truth transform moves the lungs 11.2 mm on average
    assert set(identity["dice"]) == {"right lung", "left lung", "tissue"}


def test_every_shipped_click_lies_inside_its_fixed_image(cases):
    """aerial_synth once shipped a click below its photograph (pixel row 520 of 480): the run failed before work."""
    from PromptRegLib.core.image import ras_to_lps, read_image

    for case in cases.values():
        if case.derived_from:
            continue  # its clicks are its base case's
        image = read_image(case.path(case.fixed))
        points = ras_to_lps(np.array(case.prompts_ras, dtype=float))[:, : image.dimension]
        inside = image.contains(points)
        assert inside.all(), (case.name, [name for name, ok in zip(case.prompt_names, inside) if not ok])


def test_a_new_case_is_a_json_file(data_dir, tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps({
        "name": "mine", "fixed": "ctchest4/ct.nrrd", "moving": "ctchest4/pair3d_moving.nrrd",
        "prompts_ras": [[0, 0, 0]], "truth_transform": "ctchest4/pair3d_truth.h5",
        "fixed_labels": "ctchest4/ct_labels.nii.gz", "moving_labels": "ctchest4/pair3d_moving_labels.nii.gz",
        "labels": {"5": "right lung"}}))
    (case,) = [c for c in load_cases(data_dir, extra_dir=tmp_path) if c.name == "mine"]
    truth = sitk.ReadTransform(case.path(case.truth_transform))
    perfect = score(case, truth)
    assert perfect["tre_mm"] < 1e-6 and perfect["dice"]["right lung"] > 0.95


def test_a_derived_case_takes_its_base_fields_but_not_its_flags_and_names_a_missing_base(data_dir, tmp_path):
    (tmp_path / "finer.json").write_text(json.dumps({"name": "finer", "derived_from": "ctchest4_2d",
                                                     "resample_spacing": [1.0, 1.0]}))
    (case,) = [c for c in load_cases(data_dir, extra_dir=tmp_path) if c.name == "finer"]
    assert case.fixed == "ctchest4/pair2d_fixed.nrrd" and case.labels["5"] == "right lung"
    assert not case.demo and not case.quick and case.resample_spacing == [1.0, 1.0]
    (tmp_path / "finer.json").write_text(json.dumps({"name": "finer", "derived_from": "no_such_case"}))
    with pytest.raises(InputImageError, match="no_such_case"):
        load_cases(data_dir, extra_dir=tmp_path)


# --- guarded runs: the children below are module-level so a spawned process can import them ------------------
def _answer(value, progress):
    progress("halfway", 0.5)
    progress("encoding fixed", 0.6, 3, 34, "slices")  # the library's counted form (core/progress.py)
    return {"value": value}


def _crash(progress):
    os.abort()


def _sleep(seconds, progress):
    time.sleep(seconds)
    return {"slept": seconds}


def _hold_memory(megabytes, progress):
    blocks = [np.ones(2**20 // 8 * 50) for _ in range(megabytes // 50)]  # 50 MB each, written so they are resident
    time.sleep(60)
    return {"blocks": len(blocks)}


def test_a_guarded_run_returns_its_result_and_forwards_progress():
    seen = []
    assert run_guarded(_answer, (7,), Limits(timeout_s=120), lambda *event: seen.append(event)) == {"value": 7}
    assert seen == [("halfway", 0.5, None, None, None), ("encoding fixed", 0.6, 3, 34, "slices")]


def test_a_crashing_child_becomes_an_error_row():
    row = run_guarded(_crash, (), Limits(timeout_s=120))
    assert row["error"].startswith("crashed") and "SIGABRT" in row["error"]


def test_a_child_past_its_time_limit_is_killed_and_reported():
    row = run_guarded(_sleep, (60,), Limits(timeout_s=1))
    assert row["error"].startswith("timed out") and "--timeout" in row["error"]
    assert row["seconds"] < 60


def test_a_child_above_the_memory_cap_is_killed_and_reported():
    row = run_guarded(_hold_memory, (1500,), Limits(timeout_s=120, max_memory_mb=400))
    assert row["error"].startswith("memory cap") and "--max-memory-mb" in row["error"]
    assert row["peak_mb"] > 400


# --- the resampled (fine) case -------------------------------------------------------------------------------
def _physical_box(image: sitk.Image) -> np.ndarray:
    """Lowest and highest voxel-corner coordinates (LPS mm) of an image."""
    corners = [image.TransformContinuousIndexToPhysicalPoint([(-0.5 if c == "0" else s - 0.5) for c, s in
                                                              zip(f"{n:03b}", image.GetSize())]) for n in range(8)]
    return np.sort(np.array([np.min(corners, axis=0), np.max(corners, axis=0)]), axis=0)


def test_the_fine_case_is_the_3d_pair_on_a_clinical_grid(cases):
    fine, base = cases["ctchest4_3d_fine"], cases["ctchest4_3d"]
    assert fine.resample_spacing == [0.75, 0.75, 1.5] and not fine.quick and not fine.demo
    for name in ("fixed", "moving", "fixed_labels", "moving_labels", "truth_transform", "prompts_ras", "labels",
                 "prompt_names"):
        assert getattr(fine, name) == getattr(base, name)
    size, _ = grid_for_spacing(sitk.ReadImage(base.path(base.fixed)), fine.resample_spacing)
    assert size == [520, 520, 227]  # the clinical grid


def test_resampling_a_case_is_deterministic_keeps_the_physical_space_and_is_reused(cases, tmp_path):
    base = cases["ctchest4_3d"]
    coarse = dataclasses.replace(base, name="ctchest4_3d_test", derived_from="ctchest4_3d",
                                 resample_spacing=[1.5, 1.5, 5.0])
    first, second = prepare_case(coarse, tmp_path / "a"), prepare_case(coarse, tmp_path / "b")
    assert first.truth_transform == base.truth_transform and first.prompts_ras == base.prompts_ras
    for role in ("fixed", "moving", "fixed_labels", "moving_labels"):
        original = sitk.ReadImage(base.path(getattr(base, role)))
        resampled = sitk.ReadImage(first.path(getattr(first, role)))
        assert np.allclose(resampled.GetSpacing(), (1.5, 1.5, 5.0)) and resampled.GetPixelID() == original.GetPixelID()
        assert np.abs(_physical_box(resampled) - _physical_box(original)).max() <= 2.5 + 1e-6  # half a new voxel
        again = sitk.ReadImage(second.path(getattr(second, role)))
        assert np.array_equal(sitk.GetArrayViewFromImage(resampled), sitk.GetArrayViewFromImage(again))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(first.path(first.fixed_labels)))
    base_labels = sitk.GetArrayFromImage(sitk.ReadImage(base.path(base.fixed_labels)))
    assert set(np.unique(labels)) <= set(np.unique(base_labels))
    identity, base_identity = score(first, None), score(base, None)
    assert abs(identity["tre_mm"] - base_identity["tre_mm"]) < 0.3  # same truth, same anatomy
    assert abs(identity["dice_mean"] - base_identity["dice_mean"]) < 0.02
    written = {role: os.stat(first.path(getattr(first, role))).st_mtime_ns for role in ("fixed", "moving")}
    prepare_case(coarse, tmp_path / "a")
    assert written == {role: os.stat(first.path(getattr(first, role))).st_mtime_ns for role in ("fixed", "moving")}


# --- landmark cases ------------------------------------------------------------------------------------------
def test_landmark_identity_matches_the_histology_readme(cases):
    kidney, lesion = score(cases["histology_rat_kidney"], None), score(cases["histology_lung_lesion"], None)
    assert kidney["landmarks"] == 69 and abs(kidney["tre_px"] - 28.0) < 0.05 and abs(kidney["rtre"] - 0.0199) < 1e-4
    assert lesion["landmarks"] == 78 and abs(lesion["tre_px"] - 76.4) < 0.05 and abs(lesion["rtre"] - 0.0663) < 1e-4


def _field_transform(fixed: sitk.Image, displacement_lps: np.ndarray) -> sitk.Transform:
    """A fixed → moving transform from a displacement (LPS mm, numpy order rows × columns × 2) on the fixed grid."""
    image = sitk.GetImageFromArray(displacement_lps.astype(np.float64), isVector=True)
    image.CopyInformation(fixed)
    return sitk.DisplacementFieldTransform(image)


def test_the_exact_homography_scores_zero_on_the_graffiti_case(cases):
    case = cases["graffiti"]
    fixed = sitk.ReadImage(case.path(case.fixed))
    homography = read_homography(case.path(case.landmarks_homography))
    columns, rows = np.meshgrid(np.arange(fixed.GetWidth()), np.arange(fixed.GetHeight()))
    pixels = np.stack([columns, rows, np.ones_like(columns)], axis=-1) @ homography.T
    moving_px = pixels[..., :2] / pixels[..., 2:]
    truth = _field_transform(fixed, moving_px - np.stack([columns, rows], axis=-1))  # both images: 1 mm, origin 0
    fixed_px, _ = landmark_pixels(case)
    assert 40 < len(fixed_px) <= 80
    assert score(case, truth)["tre_px"] < 0.02
    assert score(case, None)["tre_px"] > 50


def test_the_exact_field_scores_zero_on_the_aerial_case_across_differently_spaced_images(cases):
    case = cases["aerial_synth"]
    fixed, moving = sitk.ReadImage(case.path(case.fixed)), sitk.ReadImage(case.path(case.moving))
    truth_file = np.load(case.path("aerial_opencv/aero1_synth_truth.npz"))
    columns, rows = np.meshgrid(np.arange(fixed.GetWidth()), np.arange(fixed.GetHeight()))
    fixed_px = np.stack([columns, rows], axis=-1).astype(float)
    moving_px = fixed_px + truth_file["fixed_to_moving_displacement_xy"]
    assert fixed.GetSpacing() != moving.GetSpacing()  # JPEG DPI header vs a PNG without one
    truth = _field_transform(fixed, moving_px * moving.GetSpacing()[0] - fixed_px * fixed.GetSpacing()[0])
    exact = score(case, truth)
    assert exact["landmarks"] == 100 and exact["tre_px"] < 0.05


# --- click sets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ctchest4_3d", "ctchest4_2d"])
def test_click_sets_land_deep_inside_their_structures_and_are_reproducible(cases, name):
    case = cases[name]
    sets = draw_click_sets(case, 5)
    assert sets == draw_click_sets(case, 5) and len({json.dumps(s) for s in sets}) == 5
    labels = sitk.ReadImage(case.path(case.fixed_labels))
    labels = labels[:, :, 0] if labels.GetDimension() == 3 and labels.GetSize()[2] == 1 else labels
    expected = [6, 5, 7]  # left lung, right lung, body (the tissue label under the case's own click)
    for clicks in sets:
        assert len(clicks) == len(case.prompts_ras) and all(len(c) == labels.GetDimension() for c in clicks)
        for click, value in zip(clicks, expected):
            lps = [-click[0], -click[1], *click[2:]]
            assert labels[labels.TransformPhysicalPointToIndex(lps)] == value
            # distance to the structure's boundary, the image border included (pad with background, crop back)
            pad = [1] * labels.GetDimension()
            padded = sitk.ConstantPad(labels == value, pad, pad)
            depth = sitk.Crop(sitk.SignedMaurerDistanceMap(padded, squaredDistance=False, useImageSpacing=True,
                                                           insideIsPositive=True), pad, pad)
            deepest = float(sitk.GetArrayViewFromImage(depth).max())
            assert depth[labels.TransformPhysicalPointToIndex(lps)] >= min(5.0, deepest / 2) - 1e-6


def test_click_spread_summary_and_markdown_rows():
    runs = [{"tre_mm": 3.0, "dice_mean": 0.96, "seconds": 10.0}, {"tre_mm": 3.5, "dice_mean": 0.95, "seconds": 11.0},
            {"error": "RegistrationError: no pair"}]
    spread = summarise_click_runs([[[0, 0, 0]]] * 3, runs)
    assert spread["errors"] == 1 and spread["tre_mm"]["spread"] == pytest.approx(0.5)
    assert spread["dice_mean"]["min"] == 0.95 and spread["runs"][2]["error"].startswith("RegistrationError")
    rows = [{"case": "c", "method": "promptreg", "dice_mean": 0.9, "tre_mm": 3.0, "seconds": 10.0, "peak_mb": 900.0,
             "transform_mb": 1.5, "click_spread": spread, "second_click_s": 2.345, "correction_s": 1.25,
             "sdlogj": 0.0712, "fit_s": 4.26, "roi_dice": {"spleen": {"roi_x": 0.874, "roi_y": 0.0, "used": False}}},
            {"case": "c", "method": "simpleitk", "dice_mean": 0.8, "tre_mm": 5.0, "seconds": 5.0, "peak_mb": 400.0,
             "transform_mb": 0.1, "time_ratio": 2.0, "dice_ratio": 1.125},
            {"case": "h", "method": "promptreg-auto", "tre_px": 16.1, "rtre": 0.014, "seconds": 30.0, "peak_mb": 800.0},
            {"case": "c", "method": "ants", "error": "timed out: still running after 60 s (--timeout)", "seconds": 60.0,
             "peak_mb": 300.0},
            {"case": "c", "method": "elastix", "error": "RuntimeError: ITK ERROR:\n a | b"}]
    table = _markdown(rows)
    assert "| c | promptreg | 0.900 | 3.00 mm | 0.50 (2/3 sets) |  | 0.071 | 10.0 | 4.3 | 2.3 | 1.2 | 900 |" in table
    assert "| c | simpleitk | 0.800 | 5.00 mm |" in table and "| 0.10 | 2.00 | 1.12 |" in table
    assert "| h | promptreg-auto |  | 16.1 px (1.40 %) |" in table
    assert "| c | ants | error: timed out: still running after 60 s (--timeout) | | | | | 60.0 | | | | 300 |" in table
    assert "| c | elastix | error: RuntimeError: ITK ERROR: a / b |" in table  # one line, one cell
    assert "| c | 3 (1) | 3.00 / 3.25 / 3.50 | 0.50 | 0.950 / 0.955 / 0.960 |" in table
    assert "| c | spleen | 0.87 | 0.00 | no |" in table  # each click's regions against its structure's label


# --- interactive latency ---------------------------------------------------------------------------------------
def test_a_second_click_is_timed_on_the_runs_own_encoded_views(cases, monkeypatch):
    """One click is one pair, as in a live session: never sampled pairs when it is rejected (the clinical grid
    rejects its re-paired click, and the fallback's 8 sampled pairs took 254 s)."""
    from PromptRegLib.pipeline.registration import register
    from PromptRegLib.apps.bench import methods as methods_module
    from PromptRegLib.prompting import pairs as pairs_module
    from PromptRegLib.prompting.pairs import PairOptions

    searched = []

    def recording_find_pairs(*args):
        searched.append((args[5], pairs_module_find_pairs(*args)))
        return searched[-1][1]

    pairs_module_find_pairs = pairs_module.find_pairs

    case = cases["ctchest4_2d"]
    result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras[:1],
                      RegistrationOptions(model="test-patches", pairs=PairOptions(auto_pairs=0, warps=0),
                                          pairs_only=True))
    encoded = (result.fixed_view.encoded, result.moving_view.encoded)
    monkeypatch.setattr(methods_module, "find_pairs", recording_find_pairs)
    seconds = second_click_seconds(case, result)
    assert 0 < seconds < 60
    (options, found), = searched
    assert (options.auto_pairs, options.warps, options.fallback_auto_pairs) == (0, 0, 0)
    assert len(found) == 1 and found[0].source == "user"
    assert (result.fixed_view.encoded, result.moving_view.encoded) == encoded  # nothing encoded again
    assert second_click_seconds(dataclasses.replace(case, prompts_ras=[]), result) is None


def test_a_prompt_y_correction_is_timed_on_the_runs_own_views_and_changes_the_pair_and_transform(cases):
    from PromptRegLib.pipeline.registration import register
    from PromptRegLib.prompting.pairs import PairOptions
    from PromptRegLib.transform.fit import FitOptions

    case = cases["ctchest4_2d"]
    result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras[:2],
                      RegistrationOptions(model="test-patches", pairs=PairOptions(auto_pairs=0, warps=0),
                                          fit=FitOptions(transform="affine", feature_weight=0)))
    pair = result.accepted_pairs[0]
    before = (pair.prompt_y_lps.copy(), pair.roi_y, result.transform, result.fixed_view.encoded,
              result.moving_view.encoded)
    seconds = correction_seconds(result)
    assert 0 < seconds < 60
    np.testing.assert_allclose(pair.prompt_y_lps - before[0], [-CORRECTION_DRAG_MM, 0.0])  # dragged 3 mm to the R
    assert pair.roi_y is not before[1] and result.transform is not before[2]  # segmented again, refitted
    assert (result.fixed_view.encoded, result.moving_view.encoded) == before[3:]  # decoder only
