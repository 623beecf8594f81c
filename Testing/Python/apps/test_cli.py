"""The command line: outputs on success, one clear line and a distinct exit code on bad input."""
import hashlib

import pytest
import slicerio

from PromptRegLib.apps.cli import main
from PromptRegLib.pipeline.options import RegistrationOptions

LUNG_2D = "-315.0,-399.2"


@pytest.fixture
def fixed_2d(data_dir):
    return str(data_dir / "ctchest4" / "pair2d_fixed.nrrd")


def test_segment_writes_a_slicer_segmentation(fixed_2d, tmp_path, cache_dir, capsys):
    before = hashlib.sha256(open(fixed_2d, "rb").read()).hexdigest()
    output = tmp_path / "lung.seg.nrrd"
    assert main(["segment", fixed_2d, "--prompt", LUNG_2D, "-o", str(output), "--quiet"]) == 0
    segmentation = slicerio.read_segmentation(str(output))
    assert [s["name"] for s in segmentation["segments"]] == ["Prompt 1"]
    assert segmentation["voxels"].sum() > 100
    assert "wrote" in capsys.readouterr().out
    assert hashlib.sha256(open(fixed_2d, "rb").read()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lung.seg.nrrd"]


@pytest.mark.parametrize("arguments, code, message", [
    (["segment", "/no/such.nrrd", "--prompt", "1,2,3"], 3, "no such file"),
    (["segment", "{fixed}", "--prompt", "5000,5000"], 4, "outside"),
    (["segment", "{fixed}", "--prompt", "1,x"], 4, "cannot read"),
    (["segment", "{fixed}"], 4, "at least one"),
    (["segment", "{fixed}", "--prompt", LUNG_2D, "--model", "sam-vit-b"], 5, "--checkpoint"),
    (["segment", "{fixed}", "--prompt", LUNG_2D, "--model", "sam-vit-b", "--checkpoint", "/no/sam.pth"], 5,
     "not found"),
    (["register", "{fixed}", "{volume}", "--prompt", LUNG_2D], 3, "2D"),
    (["register", "{fixed}", "{fixed}", "--auto-pairs", "0"], 4, "no prompts"),
    (["register", "{fixed}", "{fixed}", "--prompt-px", "900,10"], 4, "outside"),
    (["register", "{fixed}", "{fixed}", "--prompt-px", "10,10,3"], 4, "needs 2 values"),
    (["register", "{fixed}", "{fixed}", "--pair", "1,2"], 4, "a pair is Prompt X on the fixed image"),
    (["register", "{fixed}", "{fixed}", f"--pair={LUNG_2D}:5000,5000"], 4,
     "Prompt Y at RAS (5000.0, 5000.0) mm lies outside"),
])
def test_bad_input_is_one_line_with_its_exit_code(arguments, code, message, fixed_2d, data_dir, tmp_path, capsys,
                                                  cache_dir):
    arguments = [a.format(fixed=fixed_2d, volume=data_dir / "ctchest4" / "ct.nrrd") for a in arguments]
    output = tmp_path / "out"
    assert main(arguments + ["-o", str(output), "--quiet"]) == code
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("promptreg: error:") and message in error[0]
    assert not output.exists()


def test_wrong_checkpoint_file_names_the_model(fixed_2d, tmp_path, capsys):
    fake = tmp_path / "sam_vit_b.pth"
    fake.write_bytes(b"not a checkpoint")
    assert main(["segment", fixed_2d, "--prompt", LUNG_2D, "--model", "sam-vit-b", "--checkpoint", str(fake),
                 "-o", str(tmp_path / "x.seg.nrrd"), "--quiet"]) == 5
    assert "does not match sam-vit-b" in capsys.readouterr().err


def test_unwritable_output_folder(fixed_2d, tmp_path, capsys, cache_dir):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main(["segment", fixed_2d, "--prompt", LUNG_2D, "-o", str(blocker / "sub" / "x.seg.nrrd"),
                 "--quiet"]) == 6
    assert "cannot write" in capsys.readouterr().err


def test_memory_guard_refuses_large_inputs_and_says_how_to_proceed(fixed_2d, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTREG_MAX_VOXELS", "1000")
    assert main(["segment", fixed_2d, "--prompt", LUNG_2D, "-o", str(tmp_path / "x.seg.nrrd"), "--quiet"]) == 8
    assert "PROMPTREG_MAX_VOXELS" in capsys.readouterr().err


def test_hundreds_of_prompts_are_refused_before_any_work(fixed_2d, tmp_path, capsys):
    prompts = [arg for i in range(300) for arg in ("--prompt", f"{-300 - i * 0.1},-400")]
    assert main(["register", fixed_2d, fixed_2d, *prompts, "-o", str(tmp_path / "out"), "--quiet"]) == 4
    assert "at most 64" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_images_in_different_places_are_aligned_by_their_centres(data_dir, tmp_path, model):
    """No physical overlap (a moving image 500 mm away): the search starts from the centres' offset."""
    import SimpleITK as sitk

    from PromptRegLib import register

    moving = sitk.ReadImage(str(data_dir / "ctchest4" / "pair2d_moving.nrrd"))
    moving.SetOrigin([v + 500.0 for v in moving.GetOrigin()])
    path = tmp_path / "far_away.nrrd"
    sitk.WriteImage(moving, str(path))
    from PromptRegLib.prompting.pairs import PairOptions
    result = register(data_dir / "ctchest4" / "pair2d_fixed.nrrd", path, [(-315.0, -399.2)],
                      RegistrationOptions(pairs=PairOptions(auto_pairs=0, warps=0), pairs_only=True), model=model)
    (pair,) = result.pairs
    assert pair.accepted, pair.rejected_because
    offset = pair.prompt_y_lps - pair.prompt_x_lps
    assert abs(offset[0] - 500) < 40 and abs(offset[1] - 500) < 40


def test_pixel_prompts_are_the_same_clicks_as_their_physical_points(tmp_path):
    """x = column, y = row through the image's own geometry (spacing, flipped axes, origin)."""
    import numpy as np
    import SimpleITK as sitk

    from PromptRegLib.core.image import Image, lps_to_ras
    from PromptRegLib.pipeline.registration import pixel_to_lps

    image = sitk.Image([80, 30], sitk.sitkFloat32)
    image.SetSpacing([0.357, 0.5])
    image.SetDirection([-1.0, 0.0, 0.0, 1.0])
    image.SetOrigin([12.0, -3.0])
    lps = pixel_to_lps(Image(image, "slide"), (63, 9))
    assert np.allclose(lps, [12.0 - 63 * 0.357, -3.0 + 9 * 0.5])
    assert np.allclose(lps_to_ras(lps), [-(12.0 - 63 * 0.357), 3.0 - 9 * 0.5])


@pytest.mark.parametrize("command, option, value, parsed", [
    ("register", "--prompt", "-71.2,-33.6,-140.2", "-71.2,-33.6,-140.2"),
    ("register", "--prompt-px", "-3,10", "-3,10"),
    ("register", "--pair", "-83.4,-27.5,-150.25:-80,-27,-149", "-83.4,-27.5,-150.25:-80,-27,-149"),
    ("register", "--box", "-90,-40,-160,-50,-10,-120", "-90,-40,-160,-50,-10,-120"),
    ("segment", "--prompt", "-71.2,-33.6,-140.2", "-71.2,-33.6,-140.2"),
])
def test_a_negative_coordinate_after_a_space_is_the_option_s_value(command, option, value, parsed):
    """As everyone types it (``--pair -83.4,…``): one rule for every point option, no ``=`` needed."""
    from PromptRegLib.apps.cli import attach_coordinates, build_parser

    images = ["f.nrrd", "m.nrrd"] if command == "register" else ["f.nrrd"]
    args = build_parser().parse_args(attach_coordinates([command, *images, option, value, "-o", "out"]))
    assert getattr(args, option.lstrip("-").replace("-", "_")) == [parsed]


def test_no_clicks_registers_from_automatic_pairs_and_says_so(fixed_2d, data_dir, tmp_path, capsys):
    """A user expects no clicks to mean automatic pairs: one line on the terminal, and the report says it too."""
    import json

    moving = str(data_dir / "ctchest4" / "pair2d_moving.nrrd")
    code = main(["register", fixed_2d, moving, "-o", str(tmp_path / "out"), "--model", "test-patches",
                 "--transform", "affine", "--feature-weight", "0", "--warps", "0", "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "no clicks given: registered from 8 automatic pairs" in out.out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["prompts"] == "no prompts given: 8 automatic pairs"
    assert all(pair["source"] == "auto" for pair in report["pairs"]) and report["pairs"]
