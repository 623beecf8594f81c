"""What a Slicer user waits for with the long-lived worker, step by step, on a real case with LiteMedSAM.

Drives ``python -m PromptRegLib.apps.worker --serve`` through ``WorkerSession`` as the panel does: encode both
volumes as soon as they are chosen; register with the case's clicks but the last (the quick affine shown first, then
the final transform); the last click added (its pair, then the refitted transform); the first used pair's Prompt Y
dragged 3 mm along R (a new transform). Cancels, each once under way: the first encoding (the encode after it goes on
from the slices held), a click's pairing and a refit (the held result stays as it was). Prints seconds per step (wall clock in this process: what the panel sees) and the embedding cache's
hits and misses. A fresh embedding cache by default (a first session: every slice encoded); ``--cache DIR`` to reuse
one. Takes minutes on 2 cores. Run:
    .venv/bin/python Testing/Analysis/worker_latency.py --data ../shared/data [--case ctchest4_3d] [--cache DIR]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

from PromptRegLib.apps.bench.cases import load_cases, prepare_case
from PromptRegLib.apps.worker_client import WorkerSession

#: how far the simulated user drags a Prompt Y (mm, along R), as the bench's correction latency
DRAG_MM = 3.0
FINAL = ("result", "encoded", "error")


def timed(worker: WorkerSession, kind: str, marks=(), **fields) -> tuple[dict, dict]:
    """Send one request and wait for its answer: the answer and the seconds to it and to each mark (an event
    predicate by name, first time it holds)."""
    started = time.monotonic()
    request_id = worker.request(kind, **fields)
    seconds: dict = {}
    while True:
        for event in worker.poll():
            if event.get("id") != request_id:
                continue
            for name, reached in dict(marks).items():
                if name not in seconds and reached(event):
                    seconds[name] = time.monotonic() - started
            if event["type"] in FINAL:
                seconds["answer"] = time.monotonic() - started
                if event["type"] == "error":
                    raise SystemExit(f"{kind}: {event['message']}")
                return event, seconds
        time.sleep(0.01)


def cancel_latency(worker: WorkerSession, kind: str, reached, **fields) -> float | None:
    """Seconds from a cancel to its answer, the cancel sent once an event of the request satisfies ``reached``; None
    when the request ended first (nothing left to do: e.g. every slice already in the cache)."""
    request_id = worker.request(kind, **fields)
    while True:
        events = [e for e in worker.poll() if e.get("id") == request_id]
        if any(e["type"] in FINAL for e in events):
            return None
        if any(reached(e) for e in events):
            break
        time.sleep(0.01)
    started = time.monotonic()
    worker.cancel(request_id)
    while not any(e.get("id") == request_id and e["type"] in FINAL for e in worker.poll()):
        time.sleep(0.01)
    return time.monotonic() - started


def session_steps(worker: WorkerSession, case, output: Path, model: str = "litemedsam") -> tuple[dict, dict]:
    """The panel's steps, each timed, and the cancel latencies; returns both."""
    images = {"fixed": case.path(case.fixed), "moving": case.path(case.moving), "model": model, **case.options}
    steps, latencies = {}, {}
    # cancelled once its first slice is done; the encode after it goes on from the slices held
    latencies["encoding"] = cancel_latency(worker, "encode", lambda e: e.get("done", 0) >= 1, **images)
    encoded, steps["encode both"] = timed(worker, "encode", **images)
    print(f"encoded: {encoded['slices']} slices, cache {encoded['embedding_cache']}")
    fitting = lambda e: e.get("stage", "").startswith("fitting")  # noqa: E731
    registered, steps["register"] = timed(worker, "register", {"affine shown": lambda e: e["type"] == "affine"},
                                          prompts_ras=case.prompts_ras[:-1], output_dir=str(output / "register"),
                                          **images)
    print(f"register: {[(p['name'], p['accepted']) for p in registered['pairs']]}, "
          f"cache {registered['report']['embedding_cache']}")
    clicked, steps["add a click"] = timed(worker, "add_click", {"pair found": fitting},
                                          prompt_ras=case.prompts_ras[-1], output_dir=str(output / "click"))
    print(f"added: {clicked['pairs'][-1]['name']} accepted {clicked['pairs'][-1]['accepted']} "
          f"{clicked['pairs'][-1]['rejected_because']}")
    used = next(p for p in clicked["pairs"] if p["accepted"])
    dragged = [used["prompt_y_ras"][0] + DRAG_MM, *used["prompt_y_ras"][1:]]
    _, steps["drag a Prompt Y 3 mm"] = timed(worker, "correct", {"ROI Y found": fitting},
                                            prompt_y_ras={used["name"]: dragged}, output_dir=str(output / "correct"))
    # the held result is left as it was by each cancelled change
    latencies["pairing"] = cancel_latency(worker, "add_click", lambda e: e.get("stage", "").startswith("growing"),
                                          prompt_ras=case.prompts_ras[0])
    latencies["fitting"] = cancel_latency(worker, "refit", lambda e: e.get("stage", "").startswith("fitting the"),
                                          reject_pairs=[])
    return steps, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--case", default="ctchest4_3d")
    parser.add_argument("--work", type=Path, default=Path("out/analysis-work"), help="resampled case files")
    parser.add_argument("--cache", help="embedding cache folder (default: a fresh one)")
    args = parser.parse_args()
    case = prepare_case({c.name: c for c in load_cases(args.data)}[args.case], args.work)
    with tempfile.TemporaryDirectory(prefix="promptreg-latency-") as scratch:
        os.environ["PROMPTREG_CACHE"] = args.cache or str(Path(scratch) / "cache")
        worker = WorkerSession()
        try:
            started = time.monotonic()
            worker.start()
            steps, latencies = session_steps(worker, case, Path(scratch) / "out")
        finally:
            worker.close()
            worker.join_close(30)
    print(f"\n{case.name}, LiteMedSAM, long-lived worker (seconds from the request):")
    for step, seconds in steps.items():
        print(f"  {step:22s} " + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))
    print("  cancel → answer        " + ", ".join(f"{stage} {'-' if value is None else f'{value:.2f}'}"
                                              for stage, value in latencies.items()))
    print(f"  whole session          {time.monotonic() - started:.0f}")


if __name__ == "__main__":
    main()
