"""Property: a transform written to transform.h5 / affine.tfm and read back moves points exactly as fitted."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from PromptRegLib.core.image import Image
from PromptRegLib.io.outputs import write_transform
from PromptRegLib.transform.field import FittedTransform


def rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@settings(max_examples=12, deadline=None)
@example(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), angles=(0.0, 0.5, 5.8e-296),  # ITK's SVD failed on it
         affine_noise=(0.0,) * 9, offset=(0.0, 0.0, 0.0), seed=0)
@given(spacing=st.tuples(*[st.floats(0.3, 7.0)] * 3),
       origin=st.tuples(*[st.floats(-300, 300)] * 3),
       angles=st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
       affine_noise=st.tuples(*[st.floats(-0.1, 0.1)] * 9),
       offset=st.tuples(*[st.floats(-20, 20)] * 3),
       seed=st.integers(0, 2 ** 16))
def test_written_transforms_move_points_like_the_fitted_one(tmp_path_factory, spacing, origin, angles, affine_noise,
                                                             offset, seed):
    folder = tmp_path_factory.mktemp("transform")
    grid = sitk.Image(7, 6, 5, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetOrigin(origin)
    grid.SetDirection(rotation(angles).ravel().tolist())
    fixed = Image(grid, "grid.nrrd")
    matrix = np.eye(3) + np.reshape(affine_noise, (3, 3))
    control = torch.as_tensor(np.random.default_rng(seed).normal(0, 3, (3, 3, 4, 3)), dtype=torch.float32)
    fitted = FittedTransform(matrix, np.asarray(offset), control, fixed)

    write_transform(folder / "transform.h5", fitted.to_sitk())
    write_transform(folder / "affine.tfm", fitted.affine_sitk())
    field = sitk.ReadTransform(str(folder / "transform.h5"))
    affine = sitk.ReadTransform(str(folder / "affine.tfm"))

    displacement = fitted.displacement_on(fixed)                  # numpy order (k, j, i, 3)
    rng = np.random.default_rng(seed + 1)
    for k, j, i in zip(rng.integers(0, 5, 6), rng.integers(0, 6, 6), rng.integers(0, 7, 6)):
        point = np.array(grid.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))
        np.testing.assert_allclose(field.TransformPoint(point.tolist()), point + displacement[k, j, i], atol=1e-4)
        np.testing.assert_allclose(affine.TransformPoint(point.tolist()), matrix @ point + np.asarray(offset),
                                   atol=1e-6)
    read = FittedTransform.read(folder / "affine.tfm", folder / "transform.h5", fixed)  # a correction's start
    np.testing.assert_allclose(read.affine_matrix, matrix, atol=1e-9)
    np.testing.assert_allclose(read.affine_offset, offset, atol=1e-6)
    np.testing.assert_allclose(read.control_displacement.numpy(), control.numpy(), atol=1e-3)
