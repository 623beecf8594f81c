"""The interface every promptable segmenter implements, and the exact slice ↔ model-input mapping.

A backend encodes one 2D slice (expensive, cached) into a feature grid, then decodes prompts against
that grid (cheap). Prompts and masks cross the boundary in *slice pixel indices* (x = column,
y = row, continuous); each backend maps them to its padded square input with :class:`SliceGeometry`.
"""
from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cache import EmbeddingCache

#: Part of every slice model's cache key: bump when anything between a slice and its cached features changes
#: (resizing, padding, normalisation, how the encoder is run) in a way the hashed input tensor does not show.
PREPROCESSING_VERSION = 2


@dataclass(frozen=True)
class SliceGeometry:
    """How a slice of ``height``×``width`` pixels sits in a model's ``input_size`` square input.

    The slice is resized so its *physical* longest side fills the input (pixels of unequal spacing become
    square), then padded at the bottom/right. Indices map as continuous pixel centres:
    ``u = (x + 0.5) * resized_width / width - 0.5``.
    """

    height: int
    width: int
    resized_height: int
    resized_width: int
    input_size: int

    @classmethod
    def fit(cls, height: int, width: int, pixel_spacing_yx: tuple[float, float], input_size: int) -> "SliceGeometry":
        extent_y, extent_x = height * pixel_spacing_yx[0], width * pixel_spacing_yx[1]
        scale = input_size / max(extent_y, extent_x)
        resized_height = int(min(input_size, max(1, round(extent_y * scale))))
        resized_width = int(min(input_size, max(1, round(extent_x * scale))))
        return cls(height, width, resized_height, resized_width, input_size)

    @property
    def scale_xy(self) -> np.ndarray:
        return np.array([self.resized_width / self.width, self.resized_height / self.height])

    def to_model(self, points_xy: np.ndarray) -> np.ndarray:
        """Slice pixel indices (..., 2) as (x, y) → model input pixel indices."""
        return (np.asarray(points_xy, dtype=float) + 0.5) * self.scale_xy - 0.5

    def from_model(self, points_uv: np.ndarray) -> np.ndarray:
        """Model input pixel indices (..., 2) → slice pixel indices (x, y)."""
        return (np.asarray(points_uv, dtype=float) + 0.5) / self.scale_xy - 0.5

    def slice_to_input(self, slice_01: np.ndarray, normalize=lambda resized: resized[None]) -> torch.Tensor:
        """A slice (H, W) in [0, 1] → resized, ``normalize``d to (C, h, w), zero-padded bottom/right: (C, S, S)."""
        tensor = torch.as_tensor(np.ascontiguousarray(slice_01), dtype=torch.float32)[None, None]
        resized = F.interpolate(tensor, size=(self.resized_height, self.resized_width), mode="bilinear",
                                align_corners=False, antialias=True)[0, 0]
        channels = normalize(resized)
        padded = torch.zeros(channels.shape[0], self.input_size, self.input_size)
        padded[:, : self.resized_height, : self.resized_width] = channels
        return padded

    def input_to_slice(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps over the model input (..., S, S) → the slice grid (..., H, W) (padding cropped, bilinear)."""
        lead = maps.shape[:-2]
        cropped = maps[..., : self.resized_height, : self.resized_width].reshape(-1, 1, self.resized_height,
                                                                                 self.resized_width)
        resized = F.interpolate(cropped.float(), size=(self.height, self.width), mode="bilinear", align_corners=False)
        return resized.reshape(*lead, self.height, self.width)

    def slice_to_grid(self, maps: torch.Tensor, grid_size: int) -> torch.Tensor:
        """Slice maps (..., H, W), e.g. ROI masks, → fractions over the model's feature grid (..., g, g)."""
        lead = maps.shape[:-2]
        flat = maps.reshape(-1, 1, self.height, self.width).float()
        resized = F.interpolate(flat, size=(self.resized_height, self.resized_width), mode="area")
        padded = torch.zeros(flat.shape[0], 1, self.input_size, self.input_size)
        padded[..., : self.resized_height, : self.resized_width] = resized
        pooled = F.adaptive_avg_pool2d(padded, grid_size)
        return pooled.reshape(*lead, grid_size, grid_size)

    def grid_to_slice(self, grid_maps: torch.Tensor) -> torch.Tensor:
        """Feature-grid maps (..., g, g) → the slice grid (..., H, W) (bilinear, sub-cell)."""
        lead = grid_maps.shape[:-2]
        flat = grid_maps.reshape(-1, 1, *grid_maps.shape[-2:]).float()
        at_input = F.interpolate(flat, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.input_to_slice(at_input.reshape(*lead, self.input_size, self.input_size))


@dataclass
class EncoderWork:
    """What the image encoder has computed (cache hits cost nothing and are not counted): slices and seconds."""

    slices: int = 0
    seconds: float = 0.0

    def add(self, slices: int, seconds: float) -> None:
        self.slices += slices
        self.seconds += seconds

    def since(self, before: "EncoderWork", gflop_per_slice: float | None) -> dict:
        """The work done since ``before`` (a copy taken earlier), for a report: slices, seconds, GFLOP, GFLOP/s."""
        slices, seconds = self.slices - before.slices, self.seconds - before.seconds
        gflop = None if gflop_per_slice is None else slices * gflop_per_slice
        return {"slices": slices, "seconds": round(seconds, 2), "gflop": gflop,
                "gflop_per_s": round(gflop / seconds, 1) if gflop and seconds > 0 else None}


@dataclass
class Embedding:
    """Encoder output for one slice: ``features`` (C, g, g) on the model's feature grid, and its geometry."""

    features: torch.Tensor
    geometry: SliceGeometry


class PromptableSegmenter(ABC):
    """A SAM-family model: ``encode`` a slice once, ``decode`` many prompts against it."""

    #: name used on the command line and in reports
    name: str = ""
    input_size: int = 1024
    supports_points: bool = True
    supports_boxes: bool = True
    #: content digest of the loaded checkpoint (:func:`~.cache.file_digest`); None for weight-free backends
    weights_digest: str | None = None
    #: what ran the image encoder: "torch", an exported runtime such as "openvino-f32", or None where a backend
    #: chooses at its first encoding and has not encoded yet
    encoder_runtime: str | None = "torch"
    #: the image encoder's cost per slice (GFLOP, ``torch.utils.flop_counter.FlopCounterMode`` on one input);
    #: None where not measured
    gflop_per_slice: float | None = None

    @property
    def decode_batch_size(self) -> int:
        """Prompts decoded together. CPU: 4 (measured with LiteMedSAM on 2 cores, 0.13 s a box against 0.18 s in
        batches of 64: a small batch's activations stay in cache; ``Testing/Analysis/decode_batch.py``), GPU: 64."""
        return 64 if self.device.type == "cuda" else 4

    def __init__(self, device: str = "cpu", cache: EmbeddingCache | None = None):
        self.device = torch.device(device)
        self.cache = cache if cache is not None else EmbeddingCache()
        self.encoder_work = EncoderWork()

    # --- to implement -------------------------------------------------------------------------------
    @abstractmethod
    def _normalize(self, resized_01: torch.Tensor) -> torch.Tensor:
        """A resized slice (h, w) in [0, 1] → the model's input channels (3, h, w), before padding."""

    @abstractmethod
    def _encode_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Padded model inputs (B, 3, S, S) → features (B, C, g, g)."""

    @abstractmethod
    def _decode(self, features: torch.Tensor, boxes_uv: torch.Tensor | None, points_uv: torch.Tensor | None,
                point_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched prompts (model pixel indices) → (mask logits (B, M, S, S), predicted IoU (B, M))."""

    # --- shared -------------------------------------------------------------------------------------
    @property
    def cache_tag(self) -> str:
        """Model name, preprocessing version, checkpoint digest and numerics, hashed into every cache key.

        The numerics are the device type, not the runtime: on CPU, torch and the exact (f32) exported runtimes
        give features equal within 1e-5 (``Testing/Analysis/encoder_runtimes.py``), so they share entries; CUDA
        convolutions may run in TF32 and get entries of their own. A lower-precision runtime must change this.
        """
        return f"{self.name}-pre{PREPROCESSING_VERSION}-{self.weights_digest}-{self.device.type}-f32"

    def encode(self, slices_01: list[np.ndarray], pixel_spacing_yx: tuple[float, float],
               batch_size: int | None = None) -> list[Embedding]:
        """Encode slices (each (H, W) in [0, 1]); results come from the cache when the input is unchanged.

        ``batch_size`` None: one slice at a time on CPU (measured: batches of 4 cost 1.4–1.8× more per slice
        with LiteMedSAM on 2 cores), 8 on a GPU.
        """
        batch_size = batch_size or (8 if self.device.type == "cuda" else 1)
        geometries = [SliceGeometry.fit(*s.shape, pixel_spacing_yx, self.input_size) for s in slices_01]
        inputs = [g.slice_to_input(s, self._normalize) for g, s in zip(geometries, slices_01)]
        keys = [hashlib.sha1(self.cache_tag.encode() + x.numpy().tobytes()).hexdigest() for x in inputs]
        features: dict[int, torch.Tensor] = {}
        missing = []
        for index, key in enumerate(keys):
            cached = self.cache.get(key)
            if cached is None:
                missing.append(index)
            else:
                features[index] = cached
        for start in range(0, len(missing), batch_size):
            chunk = missing[start: start + batch_size]
            started = time.perf_counter()
            with torch.inference_mode():
                batch = self._encode_inputs(torch.stack([inputs[i] for i in chunk]).to(self.device)).float().cpu()
            self.encoder_work.add(len(chunk), time.perf_counter() - started)
            for i, feature in zip(chunk, batch):
                features[i] = feature.clone()
                self.cache.put(keys[i], features[i])
        return [Embedding(features[i], geometries[i]) for i in range(len(slices_01))]

    def decode(self, embeddings: list[Embedding], boxes_xy: np.ndarray | None = None,
               points_xy: np.ndarray | None = None, point_labels: np.ndarray | None = None,
               ) -> tuple[torch.Tensor, np.ndarray]:
        """Decode one prompt per embedding (lists of equal length), all in slice pixel indices.

        ``boxes_xy`` (B, 4) as x0, y0, x1, y1; ``points_xy`` (B, N, 2) with ``point_labels`` (B, N), 1 = positive,
        0 = negative. Returns the best candidate per prompt: logits on each slice grid (B, H, W) (slices of equal
        shape) and predicted IoU (B,).
        """
        if boxes_xy is not None and not self.supports_boxes:
            raise ValueError(f"{self.name} does not take box prompts")
        geometry = embeddings[0].geometry
        boxes_uv = points_uv = labels = None
        if boxes_xy is not None:
            corners = geometry.to_model(np.asarray(boxes_xy, dtype=float).reshape(-1, 2, 2))
            boxes_uv = torch.as_tensor(corners.reshape(-1, 4), dtype=torch.float32, device=self.device)
        if points_xy is not None:
            points_uv = torch.as_tensor(geometry.to_model(points_xy), dtype=torch.float32, device=self.device)
            labels = torch.as_tensor(point_labels, dtype=torch.float32, device=self.device)
        logits, iou = [], []
        for start in range(0, len(embeddings), self.decode_batch_size):
            chunk = slice(start, start + self.decode_batch_size)
            features = torch.stack([e.features for e in embeddings[chunk]]).to(self.device)
            with torch.inference_mode():
                chunk_logits, chunk_iou = self._decode(features, None if boxes_uv is None else boxes_uv[chunk],
                                                       None if points_uv is None else points_uv[chunk],
                                                       None if labels is None else labels[chunk])
            best = chunk_iou.argmax(dim=1)
            rows = torch.arange(len(best))
            logits.append(geometry.input_to_slice(chunk_logits[rows, best].float().cpu()))
            iou.append(chunk_iou[rows, best].float().cpu())
        return torch.cat(logits), torch.cat(iou).numpy()
