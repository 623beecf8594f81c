"""Bad input gets a clear error naming the problem."""
import numpy as np
import pytest
import SimpleITK as sitk

from PromptRegLib.core.image import read_image, require_same_dimension, tidy_direction
from PromptRegLib.errors import InputImageError
from PromptRegLib.pipeline.options import RegistrationOptions


def write(tmp_path, array, name="image.nrrd", spacing=None):
    image = sitk.GetImageFromArray(array, isVector=False)
    if spacing:
        image.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(InputImageError, match="no such file"):
        read_image(tmp_path / "absent.nrrd")


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n" + b"\0" * 17)
    with pytest.raises(InputImageError, match="cannot be read"):
        read_image(path)


def test_4d_image_is_refused(tmp_path):
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.random.rand(4, 16, 16).astype(np.float32))] * 3)
    path = tmp_path / "four.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputImageError, match="4D"):
        read_image(path)


def test_empty_image(tmp_path):
    with pytest.raises(InputImageError, match="empty"):
        read_image(write(tmp_path, np.zeros((4, 32, 32), np.float32)))


def test_nan_image(tmp_path):
    array = np.random.rand(4, 32, 32).astype(np.float32)
    array[1, 2, 3] = np.nan
    with pytest.raises(InputImageError, match="NaN"):
        read_image(write(tmp_path, array))


def test_tiny_image(tmp_path):
    with pytest.raises(InputImageError, match="too small"):
        read_image(write(tmp_path, np.random.rand(1, 1).astype(np.float32)))


def test_single_slice_volume_reads_as_2d(tmp_path):
    image = read_image(write(tmp_path, np.random.rand(1, 32, 40).astype(np.float32)))
    assert image.dimension == 2 and image.size == (40, 32)


def test_rgb_photograph_becomes_luminance(data_dir):
    image = read_image(data_dir / "aerial_opencv" / "aero1.jpg")
    assert image.dimension == 2 and image.size == (640, 480)


def test_2d_3d_mismatch(tmp_path):
    two = read_image(write(tmp_path, np.random.rand(32, 32).astype(np.float32), "a.nrrd"))
    three = read_image(write(tmp_path, np.random.rand(3, 32, 32).astype(np.float32), "b.nrrd"))
    with pytest.raises(InputImageError, match="2D.*3D"):
        require_same_dimension(two, three)


def test_vanishing_direction_cosines_read_as_zero(tmp_path):
    """ITK's SVD fails on a 1e-296 cosine and then maps points to the wrong voxels; we read it as exactly 0."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 9, 9)).astype(np.float32))
    c, s = np.cos(0.5), np.sin(0.5)
    image.SetDirection((c, -1e-296, s, 1e-296, 1.0, 0.0, -s, 0.0, c))
    path = tmp_path / "noisy_direction.mha"
    sitk.WriteImage(image, str(path))
    direction = read_image(path).direction
    assert direction[0, 1] == 0.0 and direction[1, 0] == 0.0
    np.testing.assert_allclose(direction, [[c, 0, s], [0, 1, 0], [-s, 0, c]], atol=1e-12)


def test_tidying_an_image_in_memory_leaves_the_callers_image_alone():
    image = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    image.SetDirection((1.0, 1e-300, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    tidied = tidy_direction(image)
    assert tidied.GetDirection()[1] == 0.0 and image.GetDirection()[1] == 1e-300
    assert tidy_direction(tidied) is tidied  # nothing to tidy: no copy


def test_a_run_that_would_not_fit_in_memory_is_refused_before_it_starts(monkeypatch, tmp_path):
    from PromptRegLib import register
    from PromptRegLib.core import image as imageio
    from PromptRegLib.errors import MemoryLimitError

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((20, 64, 64)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: 1_000_000_000)
    with pytest.raises(MemoryLimitError, match="crop the images"):
        register(tmp_path / "image.nrrd", tmp_path / "image.nrrd", [(0.0, 0.0, 0.0)],
                 RegistrationOptions(model="test-patches"))
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: 64_000_000_000)
    imageio.check_memory(imageio.read_image(tmp_path / "image.nrrd"))  # fits: no error
