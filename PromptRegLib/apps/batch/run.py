"""``promptreg batch``: every row of a pairs table registered on Dask, resumably.

Without a scheduler address a ``LocalCluster`` is started, sized to this machine: worker *processes*, one pair at
a time each, ``threads_per_worker`` compute threads per pair (default 2, or the cores shared among ``workers``), as
many workers as the cores and the memory the largest pair needs allow. With ``scheduler="tcp://host:8786"`` the pairs go to an existing cluster (a plain
``dask scheduler`` / ``dask worker`` set-up or ``dask-jobqueue``; see docs/cohorts.md).

Rows sharing a fixed image (an atlas) first get one task encoding it; their pairs wait for it and find its
embeddings in the embedding cache (the worker's memory, or the disk cache every worker that shares
``$PROMPTREG_CACHE`` can read). A re-run skips rows whose outputs are complete and rows that failed for a reason
the same row would meet again (exit codes 2–5 and 7; ``retry_failed`` re-runs them). A worker that dies mid-pair
(killed, out of memory) has its pair re-run once on another worker, then the pair is reported as failed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ...errors import Cancelled, OutputError, UsageError
from .summary import read_summary, write_summary
from .table import PairRow, read_pairs
from .task import DETERMINISTIC_EXIT_CODES, encode_fixed, register_row

#: how often a pair may be on a worker that dies before it is reported as failed (Dask's ``allowed-failures``)
ALLOWED_WORKER_DEATHS = 1
KILLED_EXIT_CODE = 137


class BatchSetupError(UsageError):
    """Dask is missing, or the scheduler cannot be reached."""


def _import_dask():
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError:
        raise BatchSetupError("promptreg batch needs Dask: pip install -e '.[batch]' (dask, distributed).") from None
    return distributed


def estimated_bytes(row: PairRow) -> int:
    """Memory one pair needs at its peak, from the images' headers (as :func:`~PromptRegLib.core.image.check_memory`)."""
    import SimpleITK as sitk

    from ...core.image import BYTES_PER_VOXEL, FIXED_OVERHEAD_BYTES

    voxels = 0
    for path in (row.fixed, row.moving):
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            size = 1
            for n in reader.GetSize():
                size *= n
            voxels += size
        except RuntimeError:  # unreadable: the row fails on its own, quickly
            pass
    return BYTES_PER_VOXEL * voxels + FIXED_OVERHEAD_BYTES


def default_threads(workers: int | None) -> int:
    """Compute threads per pair on a local cluster: the cores shared among ``workers``; without a worker count, two
    (measured on 2 cores, 4 CT pairs sharing the atlas: 1 worker × 2 threads 601 s, 2 workers × 1 thread 623 s)."""
    cores = os.cpu_count() or 1
    return max(1, cores // workers) if workers else min(2, cores)


def local_cluster_size(rows: list[PairRow], workers: int | None, threads: int) -> tuple[int, int]:
    """(workers, memory limit per worker in bytes): processes for the cores (``threads`` each) and for the memory
    the largest pair needs, never more than there are pairs."""
    import psutil

    from ...core.image import available_memory_bytes

    available = available_memory_bytes() or psutil.virtual_memory().available
    need = max(estimated_bytes(row) for row in rows)
    if workers is None:
        workers = max(1, min((os.cpu_count() or 1) // threads, available // need, len(rows)))
    return workers, int(available // workers)


@contextmanager
def _exclusive(output_dir: Path):
    """Hold ``OUTDIR/.batch.lock`` so two batches cannot write (and clean) the same folder at once."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; documented
        yield
        return
    handle = open(output_dir / ".batch.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutputError(f"another promptreg batch is writing to {output_dir}; wait for it or choose another -o.") \
            from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def remove_staging(output_dir: Path) -> list[str]:
    """Delete the hidden ``.promptreg-*`` folders that killed workers left (no pair of ours is writing)."""
    removed = []
    for staging in output_dir.glob(".promptreg-*"):
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging.name)
    return removed


def _complete(output_dir: Path, row: PairRow) -> bool:
    return (output_dir / row.id / "report.json").is_file()


def _record_from_outputs(output_dir: Path, row: PairRow) -> dict:
    """A summary record rebuilt from a complete output folder (when the earlier summary does not have it)."""
    record = {"id": row.id, "status": "done", "exit_code": 0, "message": "outputs from an earlier run",
              "output": str(output_dir / row.id)}
    try:
        report = json.loads((output_dir / row.id / "report.json").read_text())
        pairs = report.get("pairs", [])
        record.update(pairs_used=sum(bool(p.get("accepted")) for p in pairs), pairs_total=len(pairs),
                      folding_percent=round(100 * (report.get("folding_fraction") or 0.0), 3))
    except (OSError, ValueError, AttributeError):
        pass
    return record


def plan(rows: list[PairRow], output_dir: Path, retry_failed: bool, say) -> tuple[dict[str, dict], list[PairRow]]:
    """Records of the rows that need no work (complete, or failed before for a reason that would repeat) and the
    rows to run."""
    earlier = read_summary(output_dir)
    records, to_run = {}, []
    for row in rows:
        before = earlier.get(row.id, {})
        same_row = before.get("fingerprint") == row.fingerprint()
        if _complete(output_dir, row):
            record = before if before.get("status") == "done" else _record_from_outputs(output_dir, row)
            records[row.id] = {**record, "this_run": False}
            if before and not same_row:
                say(f"{row.id}: its row or input files changed since its outputs were written; delete "
                    f"{output_dir / row.id} to register it again.")
        elif (not retry_failed and same_row and before.get("status") == "failed"
              and before.get("exit_code") in DETERMINISTIC_EXIT_CODES):
            records[row.id] = {**before, "this_run": False}
        else:
            records[row.id] = {"id": row.id, "status": "not run", "this_run": True}
            to_run.append(row)
    return records, to_run


def _wants_shared_encoding(rows: list[PairRow]) -> bool:
    """Encode a shared fixed image up front when ≥ 2 rows use it and a row's dense refinement would encode every
    slice anyway (otherwise each pair encodes only the slices it visits)."""
    return len(rows) >= 2 and any(row.options.get("feature_weight", "2") not in ("0", "0.0") for row in rows)


def _groups(rows: list[PairRow]) -> list[list[PairRow]]:
    by_fixed: dict[tuple, list[PairRow]] = {}
    for row in rows:
        key = (row.fixed, row.options.get("model", "litemedsam"), row.options.get("checkpoint"))
        by_fixed.setdefault(key, []).append(row)
    return list(by_fixed.values())


def local_cluster_config(threads: int) -> dict:
    """Dask settings for our local clusters: a dead worker's pair is retried once; each worker's OpenMP pools
    get ``threads`` threads; and glibc keeps its adaptive memory trimming — Dask's default
    ``MALLOC_TRIM_THRESHOLD_=65536`` made a registration 1.5× slower (2D CT pair, pairs stage 36 → 55 s)."""
    environ = {"MALLOC_TRIM_THRESHOLD_": None, **{name: str(threads) for name in
                                                   ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    return {"distributed.scheduler.allowed-failures": ALLOWED_WORKER_DEATHS,
            "distributed.nanny.pre-spawn-environ": environ}


@contextmanager
def _client(scheduler: str | None, rows: list[PairRow], workers: int | None, threads: int):
    """A Dask client on ``scheduler``, or on a LocalCluster sized for ``rows``; yields (client, facts)."""
    distributed = _import_dask()
    import dask

    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise BatchSetupError(f"cannot reach the Dask scheduler at {scheduler} ({error}); start it with "
                                  "`dask scheduler` or leave --scheduler out for a local cluster.") from None
        facts = {"scheduler": scheduler, "workers": len(client.scheduler_info().get("workers", {}))}
        try:
            yield client, facts
        finally:
            client.close()
        return
    count, memory_limit = local_cluster_size(rows, workers, threads)
    with dask.config.set(local_cluster_config(threads)):
        cluster = distributed.LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                           memory_limit=memory_limit, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    facts = {"scheduler": "local", "workers": count, "threads_per_worker": threads,
             "memory_limit_mb": round(memory_limit / 2**20)}
    try:
        yield client, facts
    finally:
        client.close()
        cluster.close()


def run_batch(pairs_csv: str | os.PathLike, output_dir: str | os.PathLike, scheduler: str | None = None,
              workers: int | None = None, threads_per_worker: int | None = None, retry_failed: bool = False,
              quiet: bool = False, say=print) -> list[dict]:
    """Register every row of ``pairs_csv`` into ``output_dir/<id>/``; the summary records, in table order (also
    written to ``summary.csv``, ``summary.json`` and ``overview.png``). Raises :class:`Cancelled` on Ctrl-C after
    writing the summary of what finished."""
    rows = read_pairs(pairs_csv)
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {output_dir}: {error.strerror}.") from None
    with _exclusive(output_dir):
        remove_staging(output_dir)
        records, to_run = plan(rows, output_dir, retry_failed, say)
        run = {"pairs_table": str(Path(pairs_csv).resolve()), "rows": len(rows), "ran": len(to_run), "wall_s": 0.0}
        order = [row.id for row in rows]

        def summary(figure: bool = False) -> None:
            write_summary(output_dir, [records[i] for i in order], run, figure)

        if not to_run:
            say(f"nothing to do: all {len(rows)} pairs are complete or failed for a reason that would repeat "
                "(--retry-failed re-runs those); summary in " + str(output_dir / "summary.csv"))
            summary(figure=True)
            return [records[i] for i in order]
        threads = threads_per_worker or (None if scheduler else default_threads(workers))
        started = time.perf_counter()
        try:
            with _client(scheduler, to_run, workers, threads or 1) as (client, facts):
                run.update(facts)
                say(f"{len(to_run)} of {len(rows)} pairs to register on {facts['workers']} Dask worker(s)"
                    f"{'' if facts['workers'] else ' (none yet: the pairs wait for workers to join)'}; "
                    f"dashboard: {client.dashboard_link}")
                _submit_and_collect(client, to_run, output_dir, threads, records, quiet, summary, run, started)
        except KeyboardInterrupt:
            for record in records.values():
                if record["status"] == "not run":
                    record["message"] = "cancelled"
            raise Cancelled("batch interrupted; finished pairs are complete, the rest were not started or were "
                            "discarded; run the same command again to go on.") from None
        finally:
            remove_staging(output_dir)
            run["wall_s"] = round(time.perf_counter() - started, 1)
            summary(figure=True)
    return [records[i] for i in order]


def _submit_and_collect(client, rows: list[PairRow], output_dir: Path, threads: int | None, records: dict,
                        quiet: bool, summary, run: dict, started: float) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    token = uuid.uuid4().hex[:8]
    futures = {}
    shared = []
    for group in _groups(rows):
        warm = None
        if _wants_shared_encoding(group):
            first = next((r for r in group if Path(r.fixed).is_file() and Path(r.moving).is_file()), group[0])
            warm = client.submit(encode_fixed, first, threads, key=f"encode-{first.id}-{token}")
            shared.append(warm)
        for row in group:
            futures[client.submit(register_row, row, str(output_dir), threads, warm,
                                  key=f"register-{row.id}-{token}")] = row
    bar = tqdm(total=len(futures), unit="pair", disable=quiet, desc="pairs")
    for future in as_completed(list(futures)):
        row = futures[future]
        try:
            record = future.result()
        except Exception as error:  # noqa: BLE001 — KilledWorker and friends: the pair's workers died
            record = {"id": row.id, "status": "failed", "exit_code": KILLED_EXIT_CODE,
                      "message": f"the worker running it died {ALLOWED_WORKER_DEATHS + 1} times "
                                 f"({type(error).__name__}): out of memory or killed; see the worker logs",
                      "fingerprint": row.fingerprint()}
        records[row.id] = {**record, "this_run": True}
        run["wall_s"] = round(time.perf_counter() - started, 1)
        summary()
        bar.update(1)
        if record["status"] != "done":
            bar.write(f"{row.id}: exit {record['exit_code']}: {record['message']}")
    bar.close()
    run["shared_encodings"] = [f.result() for f in shared if f.done() and f.status == "finished"]
