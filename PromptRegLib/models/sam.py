"""SAM ViT-B/L/H from the ``segment-anything`` package, with a checkpoint file the user gives.

``segment_anything/__init__`` imports its predictor, which needs torchvision; the model itself
(``build_sam``, ``modeling``) is pure torch. Where torchvision is absent we register the package without
running its ``__init__`` — this is the only place that does so.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from .base import PromptableSegmenter
from .cache import file_digest

CHECKPOINT_SOURCES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
_DOWNLOAD_PAGE = "the 'Model Checkpoints' section of github.com/facebookresearch/segment-anything"


def _sam_model_registry():
    """``segment_anything.build_sam.sam_model_registry`` without importing torchvision."""
    if importlib.util.find_spec("torchvision") is None and "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None:
            raise CheckpointError("the segment-anything package is not installed: pip install segment-anything==1.0")
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.build_sam").sam_model_registry


class SAM(PromptableSegmenter):
    input_size = 1024
    supports_points = True
    supports_boxes = True
    pixel_mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    pixel_std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]

    def __init__(self, variant: str, checkpoint: str | None, device: str = "cpu", cache=None):
        super().__init__(device, cache)
        if variant not in CHECKPOINT_SOURCES:
            raise CheckpointError(f"unknown SAM variant {variant!r}; choose one of {sorted(CHECKPOINT_SOURCES)}")
        self.name = f"sam-{variant.replace('_', '-')}"
        expected = CHECKPOINT_SOURCES[variant]
        if not checkpoint:
            raise CheckpointError(f"{self.name} needs --checkpoint PATH to {expected} (download it from "
                                  f"{_DOWNLOAD_PAGE}); nothing is downloaded at run time.")
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"SAM checkpoint {path} not found; download {expected} from {_DOWNLOAD_PAGE}.")
        self.net = _sam_model_registry()[variant](checkpoint=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state, strict=True)
        except Exception as error:
            raise CheckpointError(f"{path} does not match {self.name} (expected {expected}): "
                                  f"{str(error).splitlines()[0][:200]}") from None
        self.net.eval().to(self.device)
        self.checkpoint = str(path)
        self.weights_digest = file_digest(path)

    def _normalize(self, resized_01):
        return (resized_01[None].expand(3, -1, -1) * 255.0 - self.pixel_mean) / self.pixel_std

    def _encode_inputs(self, inputs):
        return self.net.image_encoder(inputs)

    def _decode(self, features, boxes_uv, points_uv, point_labels):
        points = None if points_uv is None else (points_uv, point_labels)
        sparse, dense = self.net.prompt_encoder(points=points, boxes=None if boxes_uv is None else boxes_uv[:, None],
                                                masks=None)
        single_point = boxes_uv is None and points_uv is not None and points_uv.shape[1] == 1
        low_res, iou = self.net.mask_decoder(image_embeddings=features, image_pe=self.net.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=single_point)
        logits = F.interpolate(low_res, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return logits, iou
