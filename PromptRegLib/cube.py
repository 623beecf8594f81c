"""Cubes for native-3D models: a fixed-size crop at the model's voxel spacing, and exact maps back.

A :class:`CubeCrop` is aligned with the image's own index axes (so oblique images need no reorientation)
and samples ``size`` voxels of ``spacing_mm`` along each ITK axis, centred on a continuous index. Cube axes
are in ITK index order (i, j, k), as the public SAM-Med3D inference feeds its crops. Cube voxel ``c`` and
image index ``x`` are related by ``x = centre + (c − (size − 1)/2) · spacing_mm / image_spacing`` — one
affine map, used for prompts, for sampling intensities into the cube and for sampling masks back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .imageio import Image


@dataclass(frozen=True)
class CubeCrop:
    centre_index: np.ndarray          # continuous ITK index of the cube's centre, (3,)
    step_index: np.ndarray            # image index units per cube voxel, per ITK axis, (3,)
    size: int = 128

    @classmethod
    def around(cls, image: Image, point_lps: np.ndarray, spacing_mm: float = 1.5, size: int = 128) -> "CubeCrop":
        centre = image.lps_to_index(np.asarray(point_lps, dtype=float)[None])[0]
        return cls(centre, spacing_mm / np.asarray(image.spacing, dtype=float), size)

    @property
    def half(self) -> float:
        return (self.size - 1) / 2.0

    def cube_to_index(self, cube_points: np.ndarray) -> np.ndarray:
        """Cube voxel coordinates (N, 3), (i, j, k) → continuous ITK image indices (N, 3)."""
        return self.centre_index + (np.atleast_2d(cube_points) - self.half) * self.step_index

    def index_to_cube(self, index: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(index) - self.centre_index) / self.step_index + self.half

    def sample(self, image_array: np.ndarray, mode: str = "bilinear", outside: float = 0.0) -> np.ndarray:
        """Intensities of an image (numpy order (k, j, i)) at every cube voxel → (size,)*3 in (i, j, k) order.

        Cube voxels outside the image get ``outside`` (SAM-Med3D pads its crops with 0).
        """
        shape_ijk = np.array(image_array.shape[::-1], dtype=float)
        axis = np.arange(self.size, dtype=float)
        grids = [self.centre_index[a] + (axis - self.half) * self.step_index[a] for a in range(3)]
        normalized = [2.0 * g / max(n - 1.0, 1.0) - 1.0 for g, n in zip(grids, shape_ijk)]
        # output (D, H, W) = cube (i, j, k); grid_sample's (x, y, z) index the input's (W, H, D) = (i, j, k)
        grid = torch.stack(torch.meshgrid(*[torch.as_tensor(n, dtype=torch.float32) for n in normalized],
                                          indexing="ij"), dim=-1)
        source = torch.tensor(np.asarray(image_array, dtype=np.float32))[None, None] - outside
        cube = F.grid_sample(source, grid[None], mode=mode, padding_mode="zeros", align_corners=True)[0, 0]
        return cube.numpy() + outside

    def footprint(self, image_shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """The numpy-order slices of the image that the cube covers."""
        corners = self.cube_to_index(np.array([[-0.5] * 3, [self.size - 0.5] * 3]))
        low = np.clip(np.floor(corners.min(0)), 0, np.array(image_shape[::-1]) - 1).astype(int)
        high = np.clip(np.ceil(corners.max(0)) + 1, 0, np.array(image_shape[::-1])).astype(int)
        return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low[::-1], high[::-1]))

    def to_image(self, cube_values: np.ndarray | torch.Tensor, image_shape: tuple[int, int, int],
                 outside: float = 0.0) -> np.ndarray:
        """Cube values (size,)*3 in (i, j, k) → an image array (numpy order), trilinear at voxel centres;
        image voxels outside the cube get ``outside``."""
        result = np.full(image_shape, outside, dtype=np.float32)
        box = self.footprint(image_shape)
        if any(s.stop <= s.start for s in box):
            return result
        ks, js, is_ = [np.arange(s.start, s.stop, dtype=float) for s in box]
        kk, jj, ii = np.meshgrid(ks, js, is_, indexing="ij")
        cube = self.index_to_cube(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1))
        normalized = 2.0 * cube / (self.size - 1) - 1.0
        # input (D, H, W) = cube (i, j, k) → grid (x, y, z) = (k, j, i) cube coordinates
        grid = torch.as_tensor(normalized[:, ::-1].copy(), dtype=torch.float32).reshape(1, *kk.shape, 3)
        values = torch.tensor(np.asarray(cube_values), dtype=torch.float32)[None, None] - outside
        sampled = F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
        inside = np.all((cube >= -0.5) & (cube <= self.size - 0.5), axis=1).reshape(kk.shape)
        result[box] = np.where(inside, sampled.numpy() + outside, outside)
        return result
