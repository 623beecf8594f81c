"""The bad-input corpus: every case through the command line, generated here, never committed.

Each case ends in one of two ways — a one-line error with its distinct exit code, or a sensible result —
never a traceback. Afterwards the inputs are byte-identical and a failed run leaves no output folder and
no staging folder behind.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from PromptRegLib.apps.cli import main
from PromptRegLib.pipeline.options import RegistrationOptions

# exit codes (PromptRegLib.errors): 0 ok, 3 input image, 4 prompt, 5 checkpoint, 6 output, 7 no usable pair


def disk(size=96, centre=(48.0, 44.0), radius=22.0, high=1000.0, low=0.0, dtype=np.float32) -> np.ndarray:
    yy, xx = np.indices((size, size))
    inside = (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 < radius ** 2
    return np.where(inside, high, low).astype(dtype)


def write(path: Path, array: np.ndarray, spacing=None, direction=None, origin=None) -> str:
    image = sitk.GetImageFromArray(array, isVector=False)
    if spacing is not None:
        image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    if origin is not None:
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return str(path)


def volume(size_xyz=(80, 80, 5), spacing=(0.3, 0.3, 7.0), direction=None) -> np.ndarray:
    zz, yy, xx = np.indices(size_xyz[::-1])
    physical = ((xx - 40) * spacing[0]) ** 2 + ((yy - 40) * spacing[1]) ** 2 + ((zz - 2) * spacing[2]) ** 2
    return np.where(physical < 9.0 ** 2, 800.0, 0.0).astype(np.float32)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_case(arguments: list[str], inputs: list[str], output: Path, capsys) -> tuple[int, str]:
    before = {p: sha(p) for p in inputs}
    code = main(arguments + ["-o", str(output), "--quiet"])
    error = capsys.readouterr().err.strip()
    assert {p: sha(p) for p in inputs} == before, "an input file changed"
    assert not list(output.parent.glob(".promptreg-*")), "a staging folder was left behind"
    if code != 0:
        lines = error.splitlines()
        assert len(lines) == 1 and lines[0].startswith("promptreg: error:"), error
        assert not output.exists(), "a failed run left outputs"
    return code, error


def register_args(fixed: str, moving: str, *prompts: str) -> list[str]:
    arguments = ["register", fixed, moving, "--auto-pairs", "0", "--warps", "0"]
    for prompt in prompts:
        arguments += ["--prompt", prompt]
    return arguments


# (case name, how the fixed image is made, expected exit code, words the message must hold)
BAD_IMAGES = [
    ("4D image", lambda p: write(p, np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)), 3, "4D"),
    ("1-pixel image", lambda p: write(p, np.ones((1, 1), np.float32)), 3, "too small"),
    ("all-zero image", lambda p: write(p, np.zeros((64, 64), np.float32)), 3, "empty"),
    ("all-NaN image", lambda p: write(p, np.full((64, 64), np.nan, np.float32)), 3, "NaN"),
    ("garbage bytes", lambda p: (p.write_bytes(b"NRRD0004\nthis is not an image\n"), str(p))[1], 3,
     "cannot be read"),
]


@pytest.mark.parametrize("name, make, code, words", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_images_are_refused_with_their_reason(name, make, code, words, tmp_path, capsys):
    fixed = make(tmp_path / "fixed.nrrd")
    moving = write(tmp_path / "moving.nrrd", disk())
    got, error = run_case(register_args(fixed, moving, "-48,-44"), [fixed, moving], tmp_path / "out", capsys)
    assert got == code and words in error


def test_truncated_file_is_refused(tmp_path, capsys):
    whole = write(tmp_path / "whole.nrrd", disk(256))
    data = Path(whole).read_bytes()
    truncated = tmp_path / "truncated.nrrd"
    truncated.write_bytes(data[: len(data) // 2])
    moving = write(tmp_path / "moving.nrrd", disk())
    code, error = run_case(register_args(str(truncated), moving, "-48,-44"), [str(truncated), moving],
                           tmp_path / "out", capsys)
    assert code == 3 and "truncated.nrrd" in error


def test_2d_against_3d_is_refused(tmp_path, capsys):
    fixed = write(tmp_path / "fixed.nrrd", disk())
    moving = write(tmp_path / "moving.nrrd", volume())
    code, error = run_case(register_args(fixed, moving, "-48,-44"), [fixed, moving], tmp_path / "out", capsys)
    assert code == 3 and "2D" in error and "3D" in error


@pytest.mark.parametrize("prompts, code, words", [
    ([], 4, "no prompts"),
    (["900,900"], 4, "outside"),
    (["1,2,3,4"], 4, "2 or 3"),
    (["-1,-1"] * 65, 4, "at most"),
], ids=["zero prompts", "prompt outside the image", "malformed prompt", "hundreds of prompts"])
def test_bad_prompts_are_refused_before_any_work(prompts, code, words, tmp_path, capsys):
    fixed = write(tmp_path / "fixed.nrrd", disk())
    moving = write(tmp_path / "moving.nrrd", disk(centre=(52.0, 46.0)))
    got, error = run_case(register_args(fixed, moving, *prompts), [fixed, moving], tmp_path / "out", capsys)
    assert got == code and words in error


def test_prompt_in_air_gives_a_result_or_says_no_pair_survived(tmp_path, capsys, cache_dir):
    fixed = write(tmp_path / "fixed.nrrd", disk())
    moving = write(tmp_path / "moving.nrrd", disk(centre=(52.0, 46.0)))
    output = tmp_path / "out"
    code, error = run_case(register_args(fixed, moving, "-5,-5"), [fixed, moving], output, capsys)
    assert code in (0, 7)
    if code == 7:
        assert "no ROI pair passed" in error
    else:  # a result is a whole one: every output, and the pair it came from says it was used
        report = json.loads((output / "report.json").read_text())
        assert {"transform.h5", "affine.tfm", "warped_moving.nrrd", "moving_rois.seg.nrrd"} <= {
            f.name for f in output.iterdir()}
        assert [pair["accepted"] for pair in report["pairs"]] == [True]


@pytest.mark.parametrize("dtype, low, high", [
    (np.uint16, 0, 65535),
    (np.int32, -2 ** 31, 2 ** 31 - 1),
    (np.float64, -1e30, 1e30),
], ids=["uint16 full range", "int32 extremes", "float64 huge"])
def test_extreme_intensity_ranges_register_without_overflow(dtype, low, high, tmp_path, capsys, cache_dir):
    fixed = write(tmp_path / "fixed.nrrd", disk(high=high, low=low, dtype=dtype))
    moving = write(tmp_path / "moving.nrrd", disk(centre=(52.0, 46.0), high=high, low=low, dtype=dtype))
    output = tmp_path / "out"
    code, error = run_case(register_args(fixed, moving, "-48,-44"), [fixed, moving], output, capsys)
    assert code == 0, error
    segmentation = slicerio.read_segmentation(str(output / "moving_rois.seg.nrrd"))
    found = np.argwhere(np.squeeze(segmentation["voxels"]) > 0)          # slicerio: (i, j) = (x, y)
    assert len(found) > 500 and np.allclose(found.mean(axis=0), [52, 46], atol=3)  # the shifted disk


@pytest.mark.parametrize("direction", [None, (math.cos(0.4), -math.sin(0.4), 0, math.sin(0.4), math.cos(0.4), 0,
                                              0, 0, 1)], ids=["anisotropic 0.3x0.3x7 mm", "oblique anisotropic"])
def test_thin_slab_and_oblique_volumes_segment_on_their_own_grid(direction, tmp_path, capsys, cache_dir):
    path = write(tmp_path / "slab.nrrd", volume(), spacing=(0.3, 0.3, 7.0), direction=direction,
                 origin=(10.0, -20.0, 30.0))
    image = sitk.ReadImage(path)
    centre_lps = image.TransformContinuousIndexToPhysicalPoint((40.0, 40.0, 2.0))
    click = f"{-centre_lps[0]},{-centre_lps[1]},{centre_lps[2]}"
    output = tmp_path / "out" / "slab.seg.nrrd"
    code, error = run_case(["segment", path, "--prompt", click], [path], output, capsys)
    assert code == 0, error
    written = sitk.ReadImage(str(output))
    assert written.GetSize()[:3] == image.GetSize()
    assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
    assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
    labels = sitk.GetArrayFromImage(written)
    truth = volume() > 0
    assert 2 * (labels.astype(bool) & truth).sum() / (labels.astype(bool).sum() + truth.sum()) > 0.7


def test_disk_full_while_writing_leaves_nothing(tmp_path, capsys, cache_dir, monkeypatch):
    import PromptRegLib.io.outputs as outputs

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_markups", full_disk)
    fixed = write(tmp_path / "fixed.nrrd", disk())
    moving = write(tmp_path / "moving.nrrd", disk(centre=(52.0, 46.0)))
    code, error = run_case(register_args(fixed, moving, "-48,-44"), [fixed, moving], tmp_path / "out", capsys)
    assert code == 6 and "No space left on device" in error


def test_failing_image_writer_is_an_output_error(tmp_path, capsys, cache_dir, monkeypatch):
    import PromptRegLib.io.outputs as outputs

    def failing_writer(path, _image):
        raise RuntimeError(f"Exception thrown in SimpleITK ImageFileWriter_Execute: Write: Error writing {path}")

    monkeypatch.setattr(outputs, "write_image", failing_writer)
    fixed = write(tmp_path / "fixed.nrrd", disk())
    moving = write(tmp_path / "moving.nrrd", disk(centre=(52.0, 46.0)))
    code, error = run_case(register_args(fixed, moving, "-48,-44"), [fixed, moving], tmp_path / "out", capsys)
    assert code == 6 and "Error writing" in error


def test_output_onto_an_input_is_refused(tmp_path, capsys, cache_dir):
    fixed = write(tmp_path / "fixed.nrrd", disk())
    output = tmp_path / "fixed.nrrd"
    code = main(["segment", fixed, "--prompt", "-48,-44", "-o", str(output), "--quiet"])
    assert code == 6 and "overwrite an input" in capsys.readouterr().err
    assert sitk.GetArrayFromImage(sitk.ReadImage(fixed)).max() == 1000.0


def test_python_api_checks_images_built_in_memory():
    from PromptRegLib.core.image import Image
    from PromptRegLib.errors import InputImageError
    from PromptRegLib.pipeline.registration import register

    nan_image = Image(sitk.GetImageFromArray(np.full((64, 64), np.nan, np.float32)), "<memory>")
    good = Image(sitk.GetImageFromArray(disk()), "<memory>")
    with pytest.raises(InputImageError, match="NaN"):
        register(nan_image, good, [(-48.0, -44.0)], RegistrationOptions(device="cpu"))
