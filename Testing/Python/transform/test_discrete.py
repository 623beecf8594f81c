"""The discrete first step: a large local shift the gradient-only fit misses is found, in 3D and in 2D, with one
search radius in mm on anisotropic grids and a cost volume held within its memory budget."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptRegLib.core.grid import Grid
from PromptRegLib.core.image import Image
from PromptRegLib.transform.discrete import cost_volume, coupled_convex, discrete_geometry
from PromptRegLib.transform.features import FeaturePair
from PromptRegLib.transform.fit import FitOptions, Objective, discrete_start, fit_transform
from PromptRegLib.transform.losses import as_mask_image


def blobs(shape, centres_mm, spacing_mm, radius_mm=14.0) -> np.ndarray:
    """Soft balls (numpy order) at LPS centres on a grid with origin 0 and identity direction."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)[..., ::-1]
    points = index * spacing_mm
    values = np.zeros(shape, np.float32)
    for centre in centres_mm:
        distance = np.linalg.norm(points - np.asarray(centre), axis=-1)
        values += 1.0 / (1.0 + np.exp((distance - radius_mm) / 1.5))
    return values


def image(values: np.ndarray, spacing_mm: float) -> Image:
    sitk_image = sitk.GetImageFromArray(values)
    sitk_image.SetSpacing([spacing_mm] * values.ndim)
    return Image(sitk_image)


def feature_pair(fixed: Image, moving: Image) -> FeaturePair:
    """The images' own intensities (and their square) as a two-channel feature on their grids."""
    as_features = lambda im: torch.as_tensor(np.stack([im.array, np.asarray(im.array) ** 2]))  # noqa: E731
    body = fixed.with_array(np.ones(fixed.array.shape, np.float32))
    return FeaturePair(as_features(fixed), Grid.of(fixed), as_features(moving), Grid.of(moving), body, 2)


def two_structures(dimension: int, shift_mm: float = 35.0, radius_mm: float = 15.0):
    """A fixed pair of balls 40 mm apart; in the moving image the second has moved ``shift_mm`` along L, farther
    than its diameter, so at the affine (the first ball's pair) the two never overlap: no gradient reaches it."""
    spacing, n = 3.0, 48
    anchor, target = np.full(dimension, 35.0), np.full(dimension, 35.0)
    target[0] = 75.0
    moved = target + np.eye(dimension)[0] * shift_mm
    fixed = image(blobs((n,) * dimension, [anchor, target], spacing, radius_mm), spacing)
    moving = image(blobs((n,) * dimension, [anchor, moved], spacing, radius_mm), spacing)
    pair = (blobs((n,) * dimension, [anchor], spacing, radius_mm) > 0.5).astype(np.float32)
    return fixed, moving, pair, target, spacing


OPTIONS = FitOptions(control_spacing_mm=(12.0,), working_voxels=20_000, max_iterations=80, descriptor_weight=0.0,
                     feature_weight=10.0, bending_weight=0.1)


def test_the_discrete_step_finds_a_large_local_shift_the_gradient_fit_misses(one_thread):
    fixed, moving, pair, target, spacing = two_structures(2)
    features = feature_pair(fixed, moving)

    def displacement_at_target(options: FitOptions) -> float:
        """φ(target) − target along L (mm): where the fit sends the second structure's centre."""
        fitted = fit_transform(fixed, moving, [pair], [pair], options=options, features=features)
        dense = fitted.displacement_on(fixed)  # (*shape, d): φ(x) − x on the fixed grid
        return float(dense[tuple(np.round(target / spacing).astype(int)[::-1])][0])

    without = displacement_at_target(OPTIONS)
    found = displacement_at_target(replace(OPTIONS, discrete_radius_mm=45.0, discrete_cell_mm=6.0))
    assert abs(without) < 8.0, without            # the gradient fit, started at the first ball's affine, stays put
    assert abs(found - 35.0) < 7.0, found         # the discrete step finds the ball where it went


def test_in_3d_the_discrete_field_carries_the_shift(one_thread):
    fixed, moving, pair, target, spacing = two_structures(3)
    features = feature_pair(fixed, moving)
    options = replace(OPTIONS, discrete_radius_mm=45.0, discrete_cell_mm=6.0)
    objective = Objective(fixed, moving, [as_mask_image(pair, fixed)], [as_mask_image(pair, moving)], np.ones(1),
                          options, features)
    field = discrete_start(objective, features, objective.points, np.eye(3), {})    # (3, *cells), LPS mm
    cells = np.array(field.shape[1:])
    at = tuple(np.clip(np.round(target[::-1] / 120.0 * cells).astype(int), 0, cells - 1))  # ~120 mm covered
    assert field[0].max() > 25.0 and float(field[0][at]) > 20.0, float(field[0][at])
    assert float(field[0][0, 0, 0]) == 0.0        # no structure, no displacement


def test_coupled_convex_prefers_the_smooth_field_among_equal_costs():
    """Two offsets cost the same in one cell; its neighbours all chose one of them: the coupling picks that one."""
    offsets = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    cost = torch.ones(3, 9, 9)
    cost[2] = 0.0                                   # every cell: +1 along the first axis is best …
    cost[:, 4, 4] = torch.tensor([1.0, 0.0, 0.0])   # … except the middle, where 0 and +1 tie
    field = coupled_convex(cost, offsets)
    assert field[0, 4, 4] > 0.8                     # pulled to its neighbours' +1


def test_the_cost_volume_is_zero_at_the_true_offset():
    values = torch.rand(2, 16, 16)
    moved = torch.roll(values, shifts=(2, 0), dims=(1, 2))  # moving content 2 voxels further along the first axis
    cost, offsets = cost_volume(values, moved, (1, 1), (3, 3), torch.ones(2))
    best = offsets[cost[:, 4:-4, 4:-4].reshape(len(offsets), -1).argmin(0)]
    assert torch.all(best == torch.tensor([2.0, 0.0]))


#: the chest CT's working grid (numpy order): 10 mm slices beside 5.95 mm pixels, 39 channels
CHEST_GRID, CHEST_SPACING, CHEST_CHANNELS = (34, 66, 66), (10.0, 5.953, 5.953), 39


def test_the_search_radius_is_one_length_in_mm_on_an_anisotropic_grid():
    geometry = discrete_geometry(CHEST_GRID, CHEST_SPACING, 8.0, 40.0, max_entries=10**12)
    radius_mm = [r * c for r, c in zip(geometry.radius_cells, geometry.cell_mm(np.array(CHEST_SPACING)))]
    assert geometry.radius_cells[0] < geometry.radius_cells[1]     # fewer 10 mm cells than 6 mm ones …
    assert np.allclose(radius_mm, 40.0, atol=3.0), radius_mm       # … for the same 40 mm


def test_the_cost_volume_stays_within_its_budget_by_coarser_cells():
    full = discrete_geometry(CHEST_GRID, CHEST_SPACING, 8.0, 40.0, max_entries=10**12)
    bounded = discrete_geometry(CHEST_GRID, CHEST_SPACING, 8.0, 40.0, max_entries=50_000_000)
    assert full.offsets * np.prod(full.cells) > 50_000_000
    assert bounded.offsets * np.prod(bounded.cells) <= 50_000_000
    assert max(bounded.cell_voxels) > 1
    bounded_mm = [r * c for r, c in zip(bounded.radius_cells, bounded.cell_mm(np.array(CHEST_SPACING)))]
    assert min(bounded_mm) >= 30.0, bounded_mm                     # the reach in mm is kept


def test_the_discrete_step_on_a_chest_sized_grid_stays_under_a_gigabyte():
    """Its peak memory once held 18 GB on the chest CT (offsets × cells × axes temporaries): run it alone in a
    child process and bound the growth of its resident set."""
    script = f"""
import resource, torch
from PromptRegLib.transform.discrete import cost_volume, coupled_convex, discrete_geometry
torch.set_num_threads(1)
fixed, moving = torch.rand({CHEST_CHANNELS}, *{CHEST_GRID}), torch.rand({CHEST_CHANNELS}, *{CHEST_GRID})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
geometry = discrete_geometry({CHEST_GRID}, {CHEST_SPACING}, 8.0, 40.0)
cost, offsets = cost_volume(fixed, moving, geometry.cell_voxels, geometry.radius_cells, torch.ones({CHEST_CHANNELS}))
coupled_convex(cost, offsets)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) < 1024, run.stdout     # MB
