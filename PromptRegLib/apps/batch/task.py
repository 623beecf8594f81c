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

from ...errors import InputImageError, PromptRegError
from .table import PairRow

#: exit codes that the same row and files will give again: a re-run does not retry them unless asked
DETERMINISTIC_EXIT_CODES = (2, 3, 4, 5, 7)


class RowOptionError(PromptRegError):
    """A per-row option of the pairs table has a value PromptReg cannot use."""

    exit_code = 2


@functools.lru_cache(maxsize=2)
def worker_model(name: str, checkpoint: str | None, device: str):
    """The model, loaded once per process (the worker keeps its weights and in-memory embeddings)."""
    from ...models import load_model

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


def _number(row: PairRow, key: str, kind):
    value = row.options.get(key)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise RowOptionError(f"column {key}: {value!r} is not a {'whole number' if kind is int else 'number'}.") \
            from None


def prompts_of(row: PairRow) -> tuple[list, list]:
    """The row's clicks: (RAS mm points, fixed-image pixel points)."""
    from ..cli import parse_point, parse_point_list
    from ...io.outputs import read_markups

    cell = row.prompts
    if cell.endswith(".json"):
        points = read_markups(cell)
    else:
        points = [parse_point(p.strip()) for p in cell.split(";") if p.strip()]
    pixels = [parse_point_list(p.strip()) for p in row.options.get("prompt_px", "").split(";") if p.strip()]
    return points, pixels


def options_of(row: PairRow, clicks: int):
    """PairOptions and FitOptions from the row's columns; no clicks and no ``auto_pairs``: the bench's
    zero-click number of sampled prompts."""
    from ..bench import DEFAULT_AUTO_PAIRS
    from ...transform.fit import FitOptions
    from ...prompting.pairs import PairOptions

    auto_pairs = _number(row, "auto_pairs", int)
    if auto_pairs is None and clicks == 0:
        auto_pairs = DEFAULT_AUTO_PAIRS
    transform = row.options.get("transform", "deformable")
    if transform not in ("affine", "deformable"):
        raise RowOptionError(f"column transform: {transform!r}; use affine or deformable.")
    fit_options = FitOptions(transform=transform)
    for key, attribute in (("bending", "bending_weight"), ("feature_weight", "feature_weight"),
                           ("mind_weight", "descriptor_weight")):
        value = _number(row, key, float)
        if value is not None:
            setattr(fit_options, attribute, value)
    return PairOptions(auto_pairs=auto_pairs, warps=_number(row, "warps", int)), fit_options


def _model_key(row: PairRow) -> tuple[str, str | None, str]:
    return row.options.get("model", "litemedsam"), row.options.get("checkpoint"), row.options.get("device", "auto")


def _where() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def register_row(row: PairRow, output_root: str, threads: int | None = None, _after=None) -> dict:
    """Register one row into ``output_root/<id>/``; a record (status, exit code, message, seconds, peak MB, pairs
    used, folding, scores). ``_after`` only orders the task after another (the shared fixed image's encoding)."""
    started = time.perf_counter()
    record = {"id": row.id, "status": "failed", "exit_code": 1, "message": "", "worker": _where(),
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
        record.update(exit_code=8, message="ran out of memory; give each worker more memory (fewer workers) or "
                                           "crop the images.")
    except Exception as error:  # a bug: one line in the summary, the traceback in the worker's log
        traceback.print_exc()
        record.update(exit_code=1, message=f"internal error: {type(error).__name__}: {error}")
    record.update(seconds=round(time.perf_counter() - started, 2), peak_mb=round(memory.peak_mb, 1))
    return record


def _register(row: PairRow, output_root: Path) -> dict:
    from ...io.outputs import write_registration
    from ...pipeline.registration import register
    from .scoring import score_row

    for role in ("fixed", "moving"):
        if not getattr(row, role):
            raise InputImageError(f"row {row.id} (line {row.line}) names no {role} image.")
    points, pixels = prompts_of(row)
    pair_options, fit_options = options_of(row, len(points) + len(pixels))
    segmenter = worker_model(*_model_key(row))
    hits, misses = segmenter.cache.hits, segmenter.cache.misses
    result = register(row.fixed, row.moving, points, (), pair_options=pair_options, fit_options=fit_options,
                      prompts_px=pixels, segmenter=segmenter)
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
        from ...core.image import read_image
        from ...views import make_views

        segmenter = worker_model(*_model_key(row))
        fixed_view, _ = make_views(segmenter, read_image(row.fixed), read_image(row.moving))
        fixed_view.feature_volume()
        return {"fixed": row.fixed, "encoded": fixed_view.encoded, "seconds": round(time.perf_counter() - started, 2),
                "worker": _where()}
    except Exception as error:  # noqa: BLE001 — reported by the rows themselves
        return {"fixed": row.fixed, "error": f"{type(error).__name__}: {error}"}
