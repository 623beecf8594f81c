"""SAM-Med3D backend: native 3D prompting on 128³ cubes at 1.5 mm (checkpoint given by the user).

Unlike the slice models it encodes a *cube* (:class:`~PromptRegLib.cube.CubeCrop`) into an 8×8×8×384
feature grid and decodes *point* prompts (positive/negative, cube voxel coordinates) into a 128³ logit
cube. Preprocessing follows the public inference: intensities z-normalised over the crop's voxels above
zero, points in cube index order, a zero 32³ mask input when there is no previous mask, the single-mask
output (token 0) upsampled trilinearly.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from .cache import EmbeddingCache
from .sammed3d_net import CUBE_SIZE, GRID_SIZE, SAMMed3DNet

CHECKPOINT_NAME = "sam_med3d_turbo.pth"
DOWNLOAD_PAGE = "the SAM-Med3D model zoo (github.com/uni-medical/SAM-Med3D, e.g. huggingface.co/blueyo0/SAM-Med3D)"


def normalize_cube(cube: np.ndarray) -> np.ndarray:
    """Z-score over the voxels above zero (all voxels if none are), as the public inference does."""
    values = cube[cube > 0] if np.any(cube > 0) else cube.ravel()
    std = float(values.std())
    return ((cube - float(values.mean())) / (std if std > 1e-8 else 1.0)).astype(np.float32)


def load_state_dict(path: Path) -> dict:
    """Tensors from a checkpoint file: a plain state dict or a training checkpoint's ``model_state_dict``."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("model_state_dict"), dict):
        loaded = loaded["model_state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"holds a {type(loaded).__name__}, not a state dict")
    return loaded


class SAMMed3D:
    """A promptable segmenter on cubes; selectable as ``--model sam-med3d --checkpoint FILE``."""

    name = "sam-med3d"
    native_3d = True
    supports_points = True
    supports_boxes = False
    cube_size = CUBE_SIZE
    grid_size = GRID_SIZE
    spacing_mm = 1.5

    def __init__(self, checkpoint: str | None, device: str = "cpu", cache: EmbeddingCache | None = None,
                 net: SAMMed3DNet | None = None):
        self.device = torch.device(device)
        self.cache = cache if cache is not None else EmbeddingCache()
        if net is None:
            net = self._load(checkpoint)
            self.checkpoint = str(checkpoint)
        else:
            self.checkpoint = None
        self.net = net.eval().to(self.device)

    @staticmethod
    def _load(checkpoint: str | None) -> SAMMed3DNet:
        if not checkpoint:
            raise CheckpointError(f"sam-med3d needs --checkpoint PATH to {CHECKPOINT_NAME} (download it from "
                                  f"{DOWNLOAD_PAGE}); nothing is downloaded at run time.")
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"SAM-Med3D checkpoint {path} not found; download {CHECKPOINT_NAME} from "
                                  f"{DOWNLOAD_PAGE}.")
        net = SAMMed3DNet()
        try:
            net.load_state_dict(load_state_dict(path), strict=True)
        except Exception as error:
            raise CheckpointError(f"{path} does not match sam-med3d (expected the ViT-B 'turbo' layout of "
                                  f"{CHECKPOINT_NAME}): {str(error).splitlines()[0][:200]}") from None
        return net

    @property
    def cache_tag(self) -> str:
        return f"{self.name}-v1-{self.checkpoint or 'in-memory'}"

    def encode(self, cube: np.ndarray) -> torch.Tensor:
        """Raw intensities (128, 128, 128) in cube order → features (384, 8, 8, 8); cached by content."""
        if cube.shape != (CUBE_SIZE,) * 3:
            raise ValueError(f"SAM-Med3D encodes {CUBE_SIZE}³ cubes, got {cube.shape}")
        normalized = normalize_cube(np.asarray(cube, dtype=np.float32))
        key = hashlib.sha1(self.cache_tag.encode() + normalized.tobytes()).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with torch.inference_mode():
            features = self.net.image_encoder(torch.as_tensor(normalized, device=self.device)[None, None])
        features = features[0].float().cpu().clone()
        self.cache.put(key, features)
        return features

    def decode(self, features: torch.Tensor, points: np.ndarray, labels: np.ndarray,
               previous_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Prompts against one cube: ``points`` (B, N, 3) cube voxel coordinates (i, j, k), ``labels`` (B, N)
        1/0 → logits (B, 128, 128, 128) and predicted IoU (B,). ``previous_logits`` (B, 128³) refine."""
        points_t = torch.as_tensor(np.asarray(points, dtype=np.float32), device=self.device)
        labels_t = torch.as_tensor(np.asarray(labels, dtype=np.float32), device=self.device)
        low_size = CUBE_SIZE // 4
        if previous_logits is None:
            mask_input = torch.zeros(len(points_t), 1, low_size, low_size, low_size, device=self.device)
        else:
            mask_input = F.interpolate(previous_logits[:, None].float().to(self.device), size=(low_size,) * 3,
                                       mode="trilinear", align_corners=False)
        with torch.inference_mode():
            sparse, dense = self.net.prompt_encoder(points_t, labels_t, mask_input)
            masks, iou = self.net.mask_decoder(features[None].to(self.device), self.net.prompt_encoder.dense_pe(),
                                               sparse, dense)
            logits = F.interpolate(masks[:, :1], size=(CUBE_SIZE,) * 3, mode="trilinear", align_corners=False)
        return logits[:, 0].float().cpu(), iou[:, 0].float().cpu().numpy()
