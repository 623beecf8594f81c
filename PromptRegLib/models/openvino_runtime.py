"""LiteMedSAM's image encoder and box decoder run by OpenVINO on CPU, exported once per checkpoint; torch stays
the fallback.

OpenVINO at f32 precision gives torch's features (within 1e-5) and the same masks, faster on CPU
(``Testing/Analysis/encoder_runtimes.py`` measures the encoder beside torch, torch.compile and ONNX Runtime; the
decoder, measured on this project's 2-core AVX2 machine: 0.07–0.10 s per box against torch's 0.11–0.17 s, logits
within 3e-5). Its default precision may be bf16 on CPUs that have it, which changes masks, so f32 is asked for
explicitly.

Each exported model (OpenVINO IR with f32 weights) is written once per checkpoint digest, OpenVINO version
and :data:`EXPORT_VERSION` under :func:`export_dir`, through a temporary folder renamed into place; later
runs only compile it. It is kept apart from the embedding cache: it depends on the weights alone, so a run
with the embedding cache off or elsewhere (tests, benchmarks) still finds it.

``$PROMPTREG_ENCODER_RUNTIME=torch`` when a model is built runs torch for both; ``$PROMPTREG_EXPORTS=off`` as
well (nothing is exported).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

#: bump when the export recipe changes, so older exported files are not used
EXPORT_VERSION = 2
RUNTIME_NAME = "openvino-f32"

_log = logging.getLogger(__name__)


def export_dir() -> Path | None:
    """``$PROMPTREG_EXPORTS`` (``off``: never export), else ``~/.cache/promptreg/exported``."""
    value = os.environ.get("PROMPTREG_EXPORTS")
    if value == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "promptreg" / "exported"


def runtime_wanted() -> bool:
    """False where ``$PROMPTREG_ENCODER_RUNTIME`` is ``torch`` or ``$PROMPTREG_EXPORTS`` is ``off``."""
    return os.environ.get("PROMPTREG_ENCODER_RUNTIME", "auto") != "torch" and export_dir() is not None


class OpenVINOEncoder:
    """Called like the torch encoder: inputs (B, 3, S, S) → features (B, C, g, g), one slice at a time."""

    def __init__(self, compiled_model):
        self._request = compiled_model.create_infer_request()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        # copy: the request reuses its output buffer at the next call
        return torch.cat([torch.from_numpy(self._request.infer([x[None].contiguous().numpy()])[0].copy())
                          for x in inputs.detach().cpu().float()])


class OpenVINOBoxDecoder:
    """Called like LiteMedSAM's prompt encoder + mask decoder for boxes: features (B, C, g, g) and boxes
    (B, 4) in model input pixels → low-resolution logits (B, 1, 4g, 4g) and predicted IoU (B, 1)."""

    def __init__(self, compiled_model):
        self._request = compiled_model.create_infer_request()

    def __call__(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self._request.infer([features.detach().cpu().float().contiguous().numpy(),
                                      boxes.detach().cpu().float().contiguous().numpy()])
        return torch.from_numpy(result[0].copy()), torch.from_numpy(result[1].copy())  # buffers are reused


class BoxDecoder(torch.nn.Module):
    """SAM's prompt encoder and mask decoder for one box per image embedding, single-mask output: the module
    exported for OpenVINO."""

    def __init__(self, prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
        return self.mask_decoder(image_embeddings=features, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)


def load_openvino_encoder(encoder: torch.nn.Module, input_size: int, export_name: str) -> OpenVINOEncoder | None:
    """``encoder`` in OpenVINO at f32 (exported to ``export_name`` if not yet), or None where it cannot run."""
    compiled = _compiled(encoder, (torch.zeros(1, 3, input_size, input_size),), None, export_name, "encoder")
    return None if compiled is None else OpenVINOEncoder(compiled)


def load_openvino_box_decoder(prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module, feature_shape,
                              export_name: str) -> OpenVINOBoxDecoder | None:
    """The box decoder (:class:`BoxDecoder`) in OpenVINO at f32, any batch size; None where it cannot run."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = (torch.zeros(2, *feature_shape), torch.tensor([[8.0, 8.0, 64.0, 64.0]] * 2))
    compiled = _compiled(BoxDecoder(prompt_encoder, mask_decoder).eval(), example, ({0: batch}, {0: batch}),
                         export_name, "box_decoder")
    return None if compiled is None else OpenVINOBoxDecoder(compiled)


def _compiled(module: torch.nn.Module, example: tuple, dynamic_shapes, export_name: str, part: str):
    """``module`` compiled by OpenVINO at f32 (exported as ``export_name``/``part``.xml if not yet), or None.

    Any failure (package missing, export or compilation refused) is logged at INFO and answered with None:
    the caller runs torch.
    """
    try:
        import openvino as ov

        folder = export_dir() / f"{export_name}-ov{ov.__version__.split('-')[0]}-e{EXPORT_VERSION}-{part}"
        if not (folder / "model.xml").is_file():
            _export(module, example, dynamic_shapes, folder)
        return ov.Core().compile_model(str(folder / "model.xml"), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    except Exception as error:  # noqa: BLE001 — any runtime trouble means: run torch
        _log.info("OpenVINO %s unavailable, running torch: %s", part, error)
        return None


def _export(module: torch.nn.Module, example: tuple, dynamic_shapes, folder: Path) -> None:
    """Convert ``module`` for ``example`` inputs (static shapes unless ``dynamic_shapes``) and save it atomically
    as ``folder/model.xml``."""
    import openvino as ov

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        with torch.inference_mode(False), torch.no_grad():  # torch.export: TorchScript tracing is deprecated
            program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes)
        converted = ov.convert_model(program)
        if dynamic_shapes is None:
            converted.reshape({index: list(x.shape) for index, x in enumerate(example)})
        ov.save_model(converted, str(staging / "model.xml"), compress_to_fp16=False)
        try:
            os.replace(staging, folder)
        except OSError:  # another run exported the same model first: keep theirs
            if not (folder / "model.xml").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def exported_bytes() -> int:
    """Disk space the exported encoders take (0 where none or exporting is off)."""
    folder = export_dir()
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder and folder.is_dir() else 0


def clear_exports() -> int:
    """Delete every exported encoder (the next run exports again); returns the bytes freed."""
    freed = exported_bytes()
    if freed:
        shutil.rmtree(export_dir(), ignore_errors=True)
    return freed
