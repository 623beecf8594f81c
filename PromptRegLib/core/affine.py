"""Affine maps between corresponding point sets (LPS mm): least squares, rotations and their plausibility.

Plain numpy on points, no images: used to steer the search for pairs (:mod:`~PromptRegLib.prompting.pairs`) and
to start the fit (:mod:`~PromptRegLib.transform.affine`).
"""
from __future__ import annotations

import numpy as np


def closed_form_affine(fixed_points: np.ndarray, moving_points: np.ndarray, weights: np.ndarray,
                       ridge: float = 1e-3, reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares ``moving ≈ A fixed + t`` pulled towards A = ``reference`` (ridge; the identity by
    default), so few points stay sane."""
    dimension = fixed_points.shape[1]
    w = weights / weights.sum()
    fixed_mean = (w[:, None] * fixed_points).sum(0)
    moving_mean = (w[:, None] * moving_points).sum(0)
    x = fixed_points - fixed_mean
    y = moving_points - moving_mean
    scale = max((w * (x ** 2).sum(1)).sum(), 1e-9)
    pull = np.eye(dimension) if reference is None else reference
    covariance = (w[:, None] * x).T @ x + ridge * scale * np.eye(dimension)
    cross = (w[:, None] * y).T @ x + ridge * scale * pull
    matrix = cross @ np.linalg.inv(covariance)
    return matrix, moving_mean - matrix @ fixed_mean


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """The angle of the rotation in an affine's polar decomposition (degrees)."""
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if len(rotation) == 2:
        return float(np.degrees(abs(np.arctan2(rotation[1, 0], rotation[0, 0]))))
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))


def plausible_affine(matrix: np.ndarray, scale_range: tuple[float, float] = (0.67, 1.5),
                     max_rotation_deg: float = 180.0) -> bool:
    """No reflection, every principal scale within ``scale_range`` (anatomy is not squashed or mirrored), and
    a rotation of at most ``max_rotation_deg``."""
    scales = np.linalg.svd(matrix, compute_uv=False)
    return bool(np.linalg.det(matrix) > 0 and scales.min() >= scale_range[0] and scales.max() <= scale_range[1]
                and rotation_angle_deg(matrix) <= max_rotation_deg)


def rigid_from_centroids(fixed_centroids: np.ndarray, moving_centroids: np.ndarray,
                         weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The proper rotation and shift that best map the fixed centroids onto the moving ones (weighted Kabsch)."""
    w = weights / weights.sum()
    fixed_mean, moving_mean = w @ fixed_centroids, w @ moving_centroids
    u, _, vt = np.linalg.svd(((fixed_centroids - fixed_mean) * w[:, None]).T @ (moving_centroids - moving_mean))
    signs = np.ones(len(fixed_mean))
    signs[-1] = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0  # a rotation, never a mirror
    rotation = vt.T @ np.diag(signs) @ u.T
    return rotation, moving_mean - rotation @ fixed_mean


def rotation_demanded(fixed_centroids: np.ndarray, moving_centroids: np.ndarray, weights: np.ndarray,
                      matrix: np.ndarray, offset: np.ndarray) -> bool:
    """Whether the pairs' centroids need the rotation: at least d + 1 pairs (d points always lie in one plane, and
    turning that plane over maps two mirror-image neighbours onto each other exactly), and ``matrix``, ``offset``
    explain them with less than a quarter of the residual of the best shift."""
    if len(fixed_centroids) <= fixed_centroids.shape[1]:
        return False
    w = weights / weights.sum()
    shift = (w[:, None] * (moving_centroids - fixed_centroids)).sum(0)
    shift_residual = (w * ((fixed_centroids + shift - moving_centroids) ** 2).sum(1)).sum()
    affine_residual = (w * ((fixed_centroids @ matrix.T + offset - moving_centroids) ** 2).sum(1)).sum()
    return bool(affine_residual < 0.25 * shift_residual)
