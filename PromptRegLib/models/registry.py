"""Choosing a backend by name: ``litemedsam`` (embedded), ``sam-vit-b|l|h`` and ``sam-med3d`` (checkpoints)."""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from .cache import EmbeddingCache

TEST_MODEL_NAMES = ("test-patches", "test-patches-3d")  # weight-free, deterministic (models/patches.py)
MODEL_NAMES = ("litemedsam", "sam-vit-b", "sam-vit-l", "sam-vit-h", "sam-med3d") + TEST_MODEL_NAMES


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu.")
    return device


def load_model(name: str = "litemedsam", checkpoint: str | None = None, device: str = "auto",
               cache: EmbeddingCache | None = None):
    """Build a backend (a slice :class:`PromptableSegmenter`, or for ``sam-med3d`` a native-3D cube model); raises :class:`CheckpointError` for unknown names and missing or wrong checkpoints."""
    device = resolve_device(device)
    if name == "litemedsam":
        from .litemedsam import LiteMedSAM
        return LiteMedSAM(checkpoint, device, cache)
    if name.startswith("sam-vit-"):
        from .sam import SAM
        return SAM(name[len("sam-"):].replace("-", "_"), checkpoint, device, cache)
    if name == "sam-med3d":
        from .sammed3d import SAMMed3D
        return SAMMed3D(checkpoint, device, cache)
    if name in TEST_MODEL_NAMES:
        from .patches import PATCH_MODELS
        return PATCH_MODELS[name](checkpoint, device, cache)
    raise CheckpointError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
