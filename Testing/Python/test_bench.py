"""Benchmark cases are data (JSON), scored the same way for every method."""
import json

import SimpleITK as sitk

from PromptRegLib.bench import _markdown, load_cases, score


def test_shipped_cases_load_and_identity_scores_match_the_data_readme(data_dir):
    cases = {c.name: c for c in load_cases(data_dir)}
    assert {"ctchest4_3d", "ctchest4_2d"} <= set(cases)
    identity = score(cases["ctchest4_3d"], None)
    assert abs(identity["tre_mm"] - 11.2) < 0.3  # the README's "before 11.2 mm"
    assert set(identity["dice"]) == {"right lung", "left lung", "tissue"}


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


def test_markdown_table_has_ratios_and_errors():
    rows = [{"case": "c", "method": "promptreg", "dice_mean": 0.9, "tre_mm": 3.0, "seconds": 10.0, "peak_mb": 900.0},
            {"case": "c", "method": "simpleitk", "dice_mean": 0.8, "tre_mm": 5.0, "seconds": 5.0, "peak_mb": 400.0,
             "time_ratio": 2.0, "dice_ratio": 1.125},
            {"case": "c", "method": "ants", "error": "ModuleNotFoundError: ants"}]
    table = _markdown(rows)
    assert "| c | simpleitk | 0.800 | 5.00 |" in table and "| 2.00 | 1.12 |" in table
    assert "error: ModuleNotFoundError" in table
