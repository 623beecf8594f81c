"""SAM-Med3D backend: native 3D prompting on 128³ cubes at 1.5 mm (checkpoint given by the user).

The network is the authors' own, from their package ``medim`` (``build_sam3D_vit_b_ori``, what
``medim.create_model("SAM-Med3D")`` builds); PromptReg keeps the preprocessing, the checkpoint loading
and the prompting around it. It encodes a *cube* (:class:`~PromptRegLib.cube.CubeCrop`) into an 8×8×8×384
feature grid and decodes *point* prompts (positive/negative, cube voxel indices) into a 128³ logit cube.
Preprocessing follows the public inference: intensities z-normalised over the crop's voxels above zero,
points in cube index order, a zero 32³ mask input when there is no previous mask, the single-mask output
(token 0) upsampled trilinearly. Nothing is downloaded: medim's weight fetching is never called.
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .base import EncoderWork
from .cache import EmbeddingCache, file_digest

CUBE_SIZE = 128
GRID_SIZE = 8
#: bumped whenever :func:`normalize_cube` or the cube layout changes, so old cached features are not reused
PREPROCESSING_VERSION = 1
CHECKPOINT_NAME = "sam_med3d_turbo.pth"
DOWNLOAD_PAGE = "the SAM-Med3D model zoo (github.com/uni-medical/SAM-Med3D, e.g. huggingface.co/blueyo0/SAM-Med3D)"
MEDIM_INSTALL = "pip install --no-deps medim==0.1.2 && pip install appdirs requests"

#: Orientation of the cubes the network expects: column ``a`` is the LPS direction in which cube array axis
#: ``a`` increases, i.e. axes (0, 1, 2) run towards patient Right, Anterior, Superior (RAS+), and point
#: prompts are given as (index along axis 0, axis 1, axis 2). Read from the public inference
#: (uni-medical/SAM-Med3D ``utils/infer_utils.py``, ``data_preprocess``: torchio ``Resample`` to 1.5 mm, then
#: ``ToCanonical`` (RAS+), ``CropOrPad`` to 128³, ``ZNormalization`` over voxels > 0; clicks are
#: ``torch.argwhere`` indices of that same array, and ``data_postprocess`` transposes the torchio (i, j, k)
#: array back to SimpleITK's (z, y, x)). Training (``train.py``) also used ``ToCanonical`` but added
#: ``RandomFlip`` on all three axes, so the axis *order* matters more to the weights than the signs.
CUBE_AXES_LPS = np.diag([-1.0, -1.0, 1.0])


def build_network() -> nn.Module:
    """SAM-Med3D (ViT-B, the "turbo" checkpoint's layout) from ``medim`` with random weights, in eval mode."""
    try:
        from medim.models.sam_med3d import build_sam3D_vit_b_ori
    except ImportError as error:
        raise CheckpointError(f"sam-med3d needs the authors' package medim ({error}); install it with "
                              f"'{MEDIM_INSTALL}'.") from None
    return build_sam3D_vit_b_ori(pretrained=False).eval()


def normalize_cube(cube: np.ndarray) -> np.ndarray:
    """Z-score over the voxels above zero (all voxels if none are), as the public inference does."""
    values = cube[cube > 0] if np.any(cube > 0) else cube.ravel()
    std = float(values.std())
    return ((cube - float(values.mean())) / (std if std > 1e-8 else 1.0)).astype(np.float32)


def read_state_dict(path: Path) -> dict:
    """Tensors from a checkpoint file: a plain state dict, or a training checkpoint's ``model_state_dict``
    (how the public checkpoints are saved); a ``module.`` prefix on every key (a model saved inside
    DistributedDataParallel) is removed. Raises ValueError when the file holds no state dict."""
    with torch.serialization.safe_globals([argparse.Namespace]):  # training checkpoints keep their args
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("model_state_dict"), dict):
        loaded = loaded["model_state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"holds a {type(loaded).__name__}, not a state dict")
    if all(isinstance(key, str) and key.startswith("module.") for key in loaded):
        loaded = {key[len("module."):]: value for key, value in loaded.items()}
    return loaded


def layout_problems(expected: dict, found: dict) -> list[str]:
    """What keeps ``found`` from loading strictly into a network whose state dict is ``expected``."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong = [key for key in expected if key in found and (not isinstance(found[key], torch.Tensor)
                                                          or found[key].shape != expected[key].shape)]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label} ({', '.join(map(str, keys[:3]))}{', ...' if len(keys) > 3 else ''})")
    return problems


def state_digest(net: nn.Module) -> str:
    """SHA-256 of a network's parameters and buffers (hex, first 16 characters): the cache identity of
    weights that come from no file."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class SAMMed3D:
    """A promptable segmenter on cubes; selectable as ``--model sam-med3d --checkpoint FILE``."""

    name = "sam-med3d"
    native_3d = True
    supports_points = True
    supports_boxes = False
    cube_size = CUBE_SIZE
    grid_size = GRID_SIZE
    spacing_mm = 1.5
    cube_axes_lps = CUBE_AXES_LPS     # the cube view samples cubes in this orientation

    def __init__(self, checkpoint: str | None, device: str = "cpu", cache: EmbeddingCache | None = None,
                 net: nn.Module | None = None):
        self.device = torch.device(device)
        self.cache = cache if cache is not None else EmbeddingCache()
        self.encoder_work = EncoderWork()
        if net is None:
            net = self._load(checkpoint)
            self.checkpoint = str(checkpoint)
            weights = file_digest(checkpoint)
        else:
            self.checkpoint = None
            weights = f"in-memory-{state_digest(net)}"
        self.net = net.eval().to(self.device)
        self.cache_tag = f"{self.name}-pre{PREPROCESSING_VERSION}-{weights}"

    @staticmethod
    def _load(checkpoint: str | None) -> nn.Module:
        if not checkpoint:
            raise CheckpointError(f"sam-med3d needs --checkpoint PATH to {CHECKPOINT_NAME} (download it from "
                                  f"{DOWNLOAD_PAGE}); nothing is downloaded at run time.")
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"SAM-Med3D checkpoint {path} not found; download {CHECKPOINT_NAME} from "
                                  f"{DOWNLOAD_PAGE}.")
        try:
            state = read_state_dict(path)
        except Exception as error:  # not a torch file, a pickle torch refuses to load, or no state dict
            raise CheckpointError(f"{path} cannot be read as a SAM-Med3D checkpoint: "
                                  f"{str(error).splitlines()[0][:200]}") from None
        net = build_network()
        problems = layout_problems(net.state_dict(), state)
        if problems:
            raise CheckpointError(f"{path} does not match sam-med3d (expected the ViT-B 'turbo' layout of "
                                  f"{CHECKPOINT_NAME}): keys {'; '.join(problems)}.")
        net.load_state_dict(state, strict=True)
        return net

    def encode(self, cube: np.ndarray) -> torch.Tensor:
        """Raw intensities (128, 128, 128) in cube order (see :data:`CUBE_AXES_LPS`) → features (384, 8, 8, 8);
        cached by the normalised content, the weights' digest and the preprocessing version."""
        if cube.shape != (CUBE_SIZE,) * 3:
            raise ValueError(f"SAM-Med3D encodes {CUBE_SIZE}³ cubes, got {cube.shape}")
        normalized = normalize_cube(np.asarray(cube, dtype=np.float32))
        key = hashlib.sha1(self.cache_tag.encode() + normalized.tobytes()).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        with torch.inference_mode():
            features = self.net.image_encoder(torch.as_tensor(normalized, device=self.device)[None, None])
        features = features[0].float().cpu().clone()
        self.encoder_work.add(1, time.perf_counter() - started)
        self.cache.put(key, features)
        return features

    def decode(self, features: torch.Tensor, points: np.ndarray, labels: np.ndarray,
               previous_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Prompts against one cube: ``points`` (B, N, 3) cube voxel indices in array axis order, ``labels``
        (B, N) 1/0 → logits (B, 128, 128, 128) and predicted IoU (B,). ``previous_logits`` (B, 128³) refine."""
        points_t = torch.as_tensor(np.asarray(points, dtype=np.float32), device=self.device)
        labels_t = torch.as_tensor(np.asarray(labels, dtype=np.float32), device=self.device)
        low_size = CUBE_SIZE // 4
        if previous_logits is None:
            mask_input = torch.zeros(len(points_t), 1, low_size, low_size, low_size, device=self.device)
        else:
            mask_input = F.interpolate(previous_logits[:, None].float().to(self.device), size=(low_size,) * 3,
                                       mode="trilinear", align_corners=False)
        with torch.inference_mode():
            sparse, dense = self.net.prompt_encoder(points=(points_t, labels_t), boxes=None, masks=mask_input)
            masks, iou = self.net.mask_decoder(image_embeddings=features[None].to(self.device),
                                               image_pe=self.net.prompt_encoder.get_dense_pe(),
                                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                               multimask_output=False)
            logits = F.interpolate(masks, size=(CUBE_SIZE,) * 3, mode="trilinear", align_corners=False)
        return logits[:, 0].float().cpu(), iou[:, 0].float().cpu().numpy()
