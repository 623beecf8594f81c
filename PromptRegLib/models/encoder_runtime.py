"""An image encoder run by OpenVINO on CPU, exported once per checkpoint; torch stays the fallback.

OpenVINO at f32 precision gives torch's features (within 1e-5) and the same masks, faster on CPU
(``Testing/Analysis/encoder_runtimes.py`` measures it beside torch, torch.compile and ONNX Runtime). Its
default precision may be bf16 on CPUs that have it, which changes masks, so f32 is asked for explicitly.

The exported model (OpenVINO IR with f32 weights) is written once per checkpoint digest, OpenVINO version
and :data:`EXPORT_VERSION` under :func:`export_dir`, through a temporary folder renamed into place; later
runs only compile it. It is kept apart from the embedding cache: it depends on the weights alone, so a run
with the embedding cache off or elsewhere (tests, benchmarks) still finds it.

``$PROMPTREG_ENCODER_RUNTIME=torch`` when a model is built runs torch; ``$PROMPTREG_EXPORTS=off`` as well
(nothing is exported).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

#: bump when the export recipe changes, so older exported files are not used
EXPORT_VERSION = 1
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


def load_openvino_encoder(encoder: torch.nn.Module, input_size: int, export_name: str) -> OpenVINOEncoder | None:
    """``encoder`` in OpenVINO at f32 (exported to ``export_name`` if not yet), or None where it cannot run.

    Any failure (package missing, export or compilation refused) is logged at INFO and answered with None:
    the caller runs torch.
    """
    try:
        import openvino as ov

        folder = export_dir() / f"{export_name}-ov{ov.__version__.split('-')[0]}-e{EXPORT_VERSION}"
        if not (folder / "encoder.xml").is_file():
            _export(encoder, input_size, folder)
        compiled = ov.Core().compile_model(str(folder / "encoder.xml"), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        return OpenVINOEncoder(compiled)
    except Exception as error:  # noqa: BLE001 — any runtime trouble means: run torch
        _log.info("OpenVINO encoder unavailable, running torch: %s", error)
        return None


def _export(encoder: torch.nn.Module, input_size: int, folder: Path) -> None:
    """Convert ``encoder`` for one (1, 3, S, S) input and save it atomically as ``folder/encoder.xml``."""
    import openvino as ov

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        with torch.inference_mode(False), torch.no_grad():  # torch.export: TorchScript tracing is deprecated
            program = torch.export.export(encoder, (torch.zeros(1, 3, input_size, input_size),))
        converted = ov.convert_model(program)
        converted.reshape([1, 3, input_size, input_size])
        ov.save_model(converted, str(staging / "encoder.xml"), compress_to_fp16=False)
        try:
            os.replace(staging, folder)
        except OSError:  # another run exported the same model first: keep theirs
            if not (folder / "encoder.xml").is_file():
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
