"""Running the bench: each (case, method) in its own guarded process, rows collected and written."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import resource
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from ...errors import InputImageError, PromptRegError
from ...io.outputs import write_transform
from ...pipeline.options import NO_CLICK_AUTO_PAIRS
from ..progress import ProgressBar
from .cases import (
    CLICK_MARGIN_MM,
    CLICK_SEED,
    Case,
    draw_click_sets,
    load_cases,
    prepare_case,
    summarise_click_runs,
)
from .methods import METHODS, available_methods
from .report import _markdown, _plots, _summary_line
from .scoring import score

DEFAULT_TIMEOUT_S = 1800.0


DEFAULT_CLICK_SETS = 5


POLL_S = 0.1


# --- guarded child processes -------------------------------------------------------------------------------
def default_max_memory_mb() -> float:
    """Three quarters of the physical memory: a run above it would push the machine into swap."""
    return 0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


@dataclass
class Limits:
    """What one (case, method) run may use before it is killed and reported as an error row."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_memory_mb: float = field(default_factory=default_max_memory_mb)


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a running process (Linux /proc); None where it cannot be read."""
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child_main(sender, function: Callable, args: tuple) -> None:
    """In the child: run ``function(*args, progress)``; send progress messages, then its result (or its error)."""
    last = [None]

    def progress(stage: str, fraction: float | None, done: int | None = None, total: int | None = None,
                 unit: str | None = None) -> None:  # the library's progress protocol (core/progress.py), forwarded
        message = (stage, None if fraction is None else int(100 * fraction), done)
        if message != last[0]:  # at most one message per stage, percent and count
            last[0] = message
            sender.send(("progress", (stage, fraction, done, total, unit)))

    try:
        result = function(*args, progress)
    except Exception as error:  # reported in the table, never hides the other runs
        result = {"error": f"{type(error).__name__}: {error}"}
    sender.send(("result", result))
    sender.close()


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def run_guarded(function: Callable, args: tuple, limits: Limits, progress=None) -> dict:
    """``function(*args, progress)`` in a fresh (spawned) process, returning its dict. A child that dies without
    answering, runs past ``limits.timeout_s`` or holds more than ``limits.max_memory_mb`` resident (checked every
    0.1 s; Linux) is killed and becomes ``{"error": why, "seconds": …, "peak_mb": …}``."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, function, args), daemon=True)
    started = time.perf_counter()
    process.start()
    sender.close()  # only the child writes: its death closes the pipe
    peak_mb = 0.0

    def failure(why: str) -> dict:
        process.kill()
        return {"error": why, "seconds": time.perf_counter() - started, "peak_mb": peak_mb}

    try:
        while True:
            if receiver.poll(POLL_S):
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    process.join(5)
                    return failure(f"crashed: the run ended ({_exit_description(process.exitcode)}) without a result")
                if kind == "result":
                    return payload
                if progress is not None:
                    progress(*payload)
                continue
            if time.perf_counter() - started > limits.timeout_s:
                return failure(f"timed out: still running after {limits.timeout_s:.0f} s (--timeout)")
            rss = _rss_mb(process.pid)
            peak_mb = max(peak_mb, rss or 0.0)
            if rss is not None and rss > limits.max_memory_mb:
                return failure(f"memory cap: {rss:.0f} MB resident, above {limits.max_memory_mb:.0f} MB "
                               "(--max-memory-mb)")
    finally:  # a child that answered exits by itself; anything else (e.g. Ctrl-C here) is killed
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()


def _method_row(name: str, case: Case, quick: bool, options: dict, progress) -> dict:
    """In the child: run one method, then measure it (seconds, peak RSS, size of its transform written as
    transform.h5) and score it."""
    os.environ["PROMPTREG_CACHE"] = "off"  # cold start: a method's time includes encoding the images

    started = time.perf_counter()
    transform, extra = METHODS[name](case, quick, progress, **options)
    # the interactive latencies are measured after the run and are not part of the method's time
    interactive = (extra.get("second_click_s") or 0.0) + (extra.get("correction_s") or 0.0)
    row = {"seconds": time.perf_counter() - started - interactive,
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # before scoring: the method's own
    progress("writing and scoring the transform", 1.0)
    if isinstance(transform, sitk.CompositeTransform):
        transform.FlattenTransform()  # an ITK transform file holds no composite nested in another
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "transform.h5"
        write_transform(path, transform)
        row["transform_mb"] = path.stat().st_size / 2**20
    return {**score(case, transform), **extra, **row}


def run_method(name: str, case: Case, quick: bool = False, limits: Limits | None = None, options: dict | None = None,
               quiet: bool = True) -> dict:
    """Run one method on one (prepared) case in a fresh process; returns its row (an error row if it failed)."""
    bar = ProgressBar(quiet, prefix=f"{case.name} / {name}: ")
    try:
        row = run_guarded(_method_row, (name, case, quick, options or {}), limits or Limits(), bar)
    finally:
        bar.close()
    return {"case": case.name, "method": name, **row}


def _click_spread(case: Case, count: int, quick: bool, limits: Limits, quiet: bool, say) -> dict:
    """PromptReg on ``count`` click sets drawn inside the case's labelled structures, summarised."""
    prompt_sets = draw_click_sets(case, count)
    set_rows = []
    for index, prompts in enumerate(prompt_sets, 1):
        set_rows.append(run_method("promptreg", dataclasses.replace(case, prompts_ras=prompts), quick, limits,
                                   {"second_click": False}, quiet=quiet))
        say(f"  click set {index}/{count}, {_summary_line(set_rows[-1]).strip()}")
    return summarise_click_runs(prompt_sets, set_rows)


def _add_ratios(ours: dict, case_rows: list[dict]) -> None:
    """PromptReg's time and Dice over each peer's, on the peers' rows."""
    for row in case_rows:
        if row["method"].startswith("promptreg") or "error" in row:
            continue
        row["time_ratio"] = ours["seconds"] / row["seconds"]
        if row.get("dice_mean"):
            row["dice_ratio"] = ours["dice_mean"] / row["dice_mean"]


def run_bench(data_dir, output_dir, quick: bool = False, methods: str | None = None, quiet: bool = False,
              limits: Limits | None = None, click_sets: int | None = None, auto_pairs: int = NO_CLICK_AUTO_PAIRS,
              work_dir=None, case_names: str | None = None) -> list[dict]:
    """Every available method on every case (``quick``: the quick cases, fewer iterations, no click sets unless
    asked; ``case_names``: a comma-separated subset of cases). ``click_sets``: PromptReg re-run with that many click sets drawn in the labelled structures of each
    labelled case that is not derived from another (default 5, 0 in quick); ``auto_pairs``: sampled prompts of the
    zero-click ``promptreg-auto`` rows; ``work_dir``: where derived cases keep their resampled files (default
    ``output_dir/work``)."""
    cases = [c for c in load_cases(data_dir) if c.quick or not quick]
    if case_names:
        wanted = [n.strip() for n in case_names.split(",")]
        unknown_cases = sorted(set(wanted) - {c.name for c in cases})
        if unknown_cases:
            raise PromptRegError(f"unknown or unavailable case(s) {', '.join(unknown_cases)}; available: "
                                 f"{', '.join(c.name for c in cases)}.")
        cases = [c for c in cases if c.name in wanted]
    if not cases:
        raise InputImageError(f"no benchmark data found under {data_dir}; pass --data.")
    chosen = available_methods() if not methods else [m.strip() for m in methods.split(",")]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise PromptRegError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}.")
    click_sets = (0 if quick else DEFAULT_CLICK_SETS) if click_sets is None else click_sets
    limits = limits or Limits()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(work_dir) if work_dir else output_dir / "work"
    options = {"promptreg-auto": {"auto_pairs": auto_pairs}}
    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    rows = []
    for number, case in enumerate(cases, 1):
        say(f"[{number}/{len(cases)}] {case.name}")
        if case.resample_spacing is not None:
            say(f"  resampling to {case.resample_spacing} mm into {work_dir / case.name} (reused when present)")
        case = prepare_case(case, work_dir)
        rows.append({"case": case.name, "method": "identity", **score(case, None), "seconds": 0.0, "peak_mb": 0.0})
        case_rows = []
        for method in chosen:
            case_rows.append(run_method(method, case, quick, limits, options.get(method), quiet))
            say(_summary_line(case_rows[-1]))
        ours = next((r for r in case_rows if r["method"] == "promptreg"), None)
        if ours is not None and click_sets > 0 and case.fixed_labels and not case.derived_from:
            ours["click_spread"] = _click_spread(case, click_sets, quick, limits, quiet, say)
        if ours is not None and "error" not in ours:
            _add_ratios(ours, case_rows)
        rows.extend(case_rows)
    settings = {"quick": quick, "timeout_s": limits.timeout_s, "max_memory_mb": limits.max_memory_mb,
                "click_sets": click_sets, "click_seed": CLICK_SEED, "click_margin_mm": CLICK_MARGIN_MM,
                "auto_pairs": auto_pairs}
    (output_dir / "bench.json").write_text(json.dumps({**settings, "rows": rows}, indent=2))
    (output_dir / "bench.md").write_text(_markdown(rows))
    _plots(rows, output_dir)
    if not quiet:
        print(_markdown(rows))
        print(f"wrote {output_dir / 'bench.json'}, bench.md and plots")
    return rows

