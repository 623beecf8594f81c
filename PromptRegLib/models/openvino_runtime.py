"""A model's image encoder and mask decoder run by OpenVINO on CPU, exported once per checkpoint; torch stays
the fallback.

OpenVINO at f32 precision gives torch's features (within 1e-5) and the same masks, faster on CPU
(``Testing/Analysis/encoder_runtimes.py`` measures the encoder beside torch, torch.compile and ONNX Runtime;
``Testing/Analysis/decode_batch.py`` the decoder: 0.06–0.075 s a box against torch's 0.12–0.15 s on 2 cores).
Its default precision may be bf16 on CPUs that have it, which changes masks, so f32 is asked for explicitly.

Each exported network (OpenVINO IR with f32 weights, one batch item per call) is written once per checkpoint
digest, OpenVINO version and :data:`EXPORT_VERSION` under :func:`export_dir`, through a temporary folder
renamed into place; later runs only compile it. It is kept apart from the embedding cache: it depends on the
weights alone, so a run with the embedding cache off or elsewhere (tests, benchmarks) still finds it.

``$PROMPTREG_ENCODER_RUNTIME=torch`` when a model is built runs torch for both networks; ``$PROMPTREG_EXPORTS=off``
as well (nothing is exported).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
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


class OpenVINOModel:
    """Called like the torch network, one batch item at a time: tensors (B, ...) → tuple of tensors (B, ...)."""

    def __init__(self, compiled_model):
        self._request = compiled_model.create_infer_request()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arrays = [x.detach().cpu().float() for x in inputs]
        # copy: the request reuses its output buffers at the next call
        items = [[torch.from_numpy(out.copy()) for out in
                  self._request.infer([x[i: i + 1].contiguous().numpy() for x in arrays]).values()]
                 for i in range(len(arrays[0]))]
        return tuple(torch.cat(outputs) for outputs in zip(*items))


def load_openvino(network: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
                  export_name: str) -> OpenVINOModel | None:
    """``network`` in OpenVINO at f32 for inputs shaped as ``example_inputs`` (batch 1), exported to
    ``export_name`` if not yet, or None where it cannot run.

    Any failure (package missing, export or compilation refused) is logged at INFO and answered with None:
    the caller runs torch.
    """
    try:
        import openvino as ov

        folder = export_dir() / f"{export_name}-ov{ov.__version__.split('-')[0]}-e{EXPORT_VERSION}"
        if not (folder / "model.xml").is_file():
            _export(network, example_inputs, folder)
        compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        return OpenVINOModel(compiled)
    except Exception as error:  # noqa: BLE001 — any runtime trouble means: run torch
        _log.info("OpenVINO unavailable for %s, running torch: %s", export_name, error)
        return None


def _export(network: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], folder: Path) -> None:
    """Convert ``network`` for inputs of the examples' shapes and save it atomically as ``folder/model.xml``."""
    import openvino as ov

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # torch.export (TorchScript tracing is deprecated) deep-copies its own tree specs, and torch 2.13 warns
            # about its own deprecated LeafSpec class while doing it: nothing the caller can act on
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            program = torch.export.export(network, tuple(example_inputs))
            converted = ov.convert_model(program)
        converted.reshape({port: list(x.shape) for port, x in zip(converted.inputs, example_inputs)})
        ov.save_model(converted, str(staging / "model.xml"), compress_to_fp16=False)
        try:
            os.replace(staging, folder)
        except OSError:  # another run exported the same model first: keep theirs
            if not (folder / "model.xml").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def exported_bytes() -> int:
    """Disk space the exported networks take (0 where none or exporting is off)."""
    folder = export_dir()
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder and folder.is_dir() else 0


def clear_exports() -> int:
    """Delete every exported network (the next run exports again); returns the bytes freed."""
    freed = exported_bytes()
    if freed:
        shutil.rmtree(export_dir(), ignore_errors=True)
    return freed
