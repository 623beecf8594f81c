"""Prototypes and similarity maps from a model's own feature grid (no training, no labels).

A prototype is the masked mean of L2-normalised feature vectors inside a region, itself normalised;
similarity is cosine similarity, so values lie in [-1, 1].
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .models.base import Embedding
from .volume import SliceStack


def _unit_features(embedding: Embedding) -> torch.Tensor:
    return F.normalize(embedding.features.float(), dim=0)


def region_feature_sum(embedding: Embedding, mask: np.ndarray) -> tuple[torch.Tensor, float]:
    """Sum of unit feature vectors weighted by the mask's coverage of each grid cell, and the total weight."""
    weights = embedding.geometry.slice_to_grid(torch.as_tensor(mask, dtype=torch.float32),
                                               embedding.features.shape[-1])
    return (_unit_features(embedding) * weights).sum(dim=(1, 2)), float(weights.sum())


def pooled_feature(embedding: Embedding, mask: np.ndarray) -> torch.Tensor:
    """Unit prototype (C,) of a 2D region on one slice."""
    total, _ = region_feature_sum(embedding, mask)
    return F.normalize(total, dim=0)


def prototype(stack: SliceStack, mask_stack: np.ndarray) -> torch.Tensor:
    """Unit prototype (C,) of a region over every slice it touches (mask (K, R, C) on the stack grid)."""
    slices = np.flatnonzero(mask_stack.any(axis=(1, 2)))
    if slices.size == 0:
        raise ValueError("empty region has no prototype")
    total = sum(region_feature_sum(e, mask_stack[k])[0] for k, e in zip(slices, stack.embeddings(slices)))
    return F.normalize(total, dim=0)


def ring(mask_stack: np.ndarray, width_px: int = 3) -> np.ndarray:
    """The band just outside a region, in-plane, ``width_px`` pixels wide."""
    tensor = torch.as_tensor(mask_stack, dtype=torch.float32)[:, None]
    grown = F.max_pool2d(tensor, 2 * width_px + 1, stride=1, padding=width_px)[:, 0] > 0
    return grown.numpy() & ~mask_stack


def similarity_volume(stack: SliceStack, unit_prototype: torch.Tensor, slice_indices=None) -> np.ndarray:
    """Cosine similarity of a prototype with every feature cell of the given slices, at pixel resolution (K, R, C).

    Slices not listed are -1. Sub-cell peaks come from bilinear interpolation of the grid.
    """
    slice_indices = range(stack.shape[0]) if slice_indices is None else slice_indices
    volume = np.full(stack.shape, -1.0, dtype=np.float32)
    for k, embedding in zip(slice_indices, stack.embeddings(list(slice_indices))):
        grid = torch.einsum("c,chw->hw", unit_prototype, _unit_features(embedding))
        volume[k] = embedding.geometry.grid_to_slice(grid).numpy()
    return volume
