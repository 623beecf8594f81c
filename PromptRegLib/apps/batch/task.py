"""What a Dask worker runs: one cohort row registered into ``OUTDIR/<id>/``, or a shared fixed image encoded.

Both return plain records and never raise for a bad row: a row's failure is its exit code and message, so one
bad pair cannot stop the others. Outputs are staged and moved into place whole (:func:`~PromptRegLib.io.outputs.
staged_output`), so a worker killed mid-pair leaves only a hidden ``.promptreg-<id>-…`` folder, which the batch
removes. The model is loaded once per worker process and kept: its weights and in-memory embedding cache serve
every pair the worker runs.
"""
from __future__ import annotations

import functools
import os
import socket
import threading
import time
import traceback
from pathlib import Path

from ...core.image import read_image
from ...errors import (
    CheckpointError,
    InputImageError,
    MemoryLimitError,
    PromptError,
    PromptRegError,
    RegistrationError,
    UsageError,
)
from ...io.outputs import write_registration
from ...io.points import parse_point, parse_point_list, read_markups
from ...models import load_model
from ...pipeline.options import Prompts, RegistrationOptions
from ...pipeline.registration import register
from ...views import make_views
from .scoring import score_row
from .table import PairRow


class RowOptionError(UsageError):
    """A per-row option of the pairs table has a value PromptReg cannot use."""


#: exit codes that the same row and files will give again: a re-run does not retry them unless asked
DETERMINISTIC_EXIT_CODES = tuple(error.exit_code for error in (RowOptionError, InputImageError, PromptError,
                                                               CheckpointError, RegistrationError))


@functools.lru_cache(maxsize=2)
def worker_model(name: str, checkpoint: str | None, device: str):
    """The model, loaded once per process (the worker keeps its weights and in-memory embeddings)."""
    return load_model(name, checkpoint, device)


class PeakMemory:
    """Highest resident memory (MB) of this process while the block runs, sampled every 50 ms."""

    def __init__(self, interval_s: float = 0.05):
        import psutil

        self.process, self.interval_s = psutil.Process(), interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def prompts_of(row: PairRow) -> tuple[list, list]:
    """The row's clicks: (RAS mm points, fixed-image pixel points)."""
    cell = row.prompts
    if cell.endswith(".json"):
        points = read_markups(cell)
    else:
        points = [parse_point(p.strip()) for p in cell.split(";") if p.strip()]
    pixels = [parse_point_list(p.strip()) for p in row.options.get("prompt_px", "").split(";") if p.strip()]
    return points, pixels


def options_of(row: PairRow) -> RegistrationOptions:
    """The row's options, from its option columns (their names are the options' outside names)."""
    try:
        return RegistrationOptions.from_mapping(row.options)
    except UsageError as error:
        raise RowOptionError(f"this row's {error}") from None


def _where() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def register_row(row: PairRow, output_root: str, threads: int | None = None, _after=None) -> dict:
    """Register one row into ``output_root/<id>/``; a record (status, exit code, message, seconds, peak MB, pairs
    used, folding, scores). ``_after`` only orders the task after another (the shared fixed image's encoding)."""
    started = time.perf_counter()
    record = {"id": row.id, "status": "failed", "exit_code": PromptRegError.exit_code, "message": "", "worker": _where(),
              "fingerprint": row.fingerprint()}
    memory = PeakMemory()
    try:
        with memory:
            _set_threads(threads)
            record.update(_register(row, Path(output_root)))
        record.update(status="done", exit_code=0)
    except PromptRegError as error:
        record.update(exit_code=error.exit_code, message=str(error))
    except MemoryError:
        record.update(exit_code=MemoryLimitError.exit_code, message="ran out of memory; give each worker more memory (fewer workers) or "
                                           "crop the images.")
    except Exception as error:  # a bug: one line in the summary, the traceback in the worker's log
        traceback.print_exc()
        record.update(exit_code=PromptRegError.exit_code, message=f"internal error: {type(error).__name__}: {error}")
    record.update(seconds=round(time.perf_counter() - started, 2), peak_mb=round(memory.peak_mb, 1))
    return record


def _register(row: PairRow, output_root: Path) -> dict:
    for role in ("fixed", "moving"):
        if not getattr(row, role):
            raise InputImageError(f"row {row.id} (line {row.line}) names no {role} image.")
    points, pixels = prompts_of(row)
    options = options_of(row)
    segmenter = worker_model(options.model, options.checkpoint, options.device)
    hits, misses = segmenter.cache.hits, segmenter.cache.misses
    result = register(row.fixed, row.moving, Prompts(points_ras=tuple(points), points_px=tuple(pixels)), options,
                      model=segmenter)
    transform = result.transform.to_sitk()
    scores: dict = {}
    if row.scoring:
        try:
            scoring = {**row.scoring, "fixed": row.fixed}
            after = score_row(scoring, result.fixed_image, transform)
            before = score_row(scoring, result.fixed_image, None)
            scores = {**after, **{f"{k}_before": v for k, v in before.items()}}
        except PromptRegError as error:
            scores = {"score_error": str(error)}
    write_registration(result, output_root / row.id)
    return {"pairs_used": len(result.accepted_pairs), "pairs_total": len(result.pairs),
            "folding_percent": round(100 * result.report.get("folding_fraction", 0.0), 3),
            "encoded_fixed": result.fixed_view.encoded, "encoded_moving": result.moving_view.encoded,
            "cache_hits": segmenter.cache.hits - hits, "cache_misses": segmenter.cache.misses - misses,
            "output": str(output_root / row.id), **scores}


def encode_fixed(row: PairRow, threads: int | None = None) -> dict:
    """Encode the working slices of ``row``'s fixed image as its registration will see them (every slice, as the
    dense refinement does), so the rows sharing it find the embeddings in the cache. Never raises: a fixed image
    that cannot be read fails its rows with their own message."""
    started = time.perf_counter()
    try:
        _set_threads(threads)
        options = options_of(row)
        segmenter = worker_model(options.model, options.checkpoint, options.device)
        fixed_view, _ = make_views(segmenter, read_image(row.fixed), read_image(row.moving))
        fixed_view.feature_volume()
        return {"fixed": row.fixed, "encoded": fixed_view.encoded, "seconds": round(time.perf_counter() - started, 2),
                "worker": _where()}
    except Exception as error:  # noqa: BLE001 — reported by the rows themselves
        return {"fixed": row.fixed, "error": f"{type(error).__name__}: {error}"}
