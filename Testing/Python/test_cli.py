"""The command line: outputs on success, one clear line and a distinct exit code on bad input."""
import hashlib

import pytest
import slicerio

from PromptRegLib.cli import main

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
