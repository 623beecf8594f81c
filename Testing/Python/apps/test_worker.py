"""The worker protocol: progress lines, a result, a refit, cancel (nothing left, no process left), a crash
and a bad request."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from PromptRegLib.apps.worker_client import WorkerRun


def request_2d(ct_case, **extra):
    case = ct_case["ctchest4_2d"]
    return {"fixed": case.path(case.fixed), "moving": case.path(case.moving), "prompts_ras": case.prompts_ras[:2],
            "auto_pairs": 0, "warps": 0, **extra}


def test_progress_then_result_then_a_refit_from_the_written_pairs(ct_case, cache_dir):
    run = WorkerRun().start(request_2d(ct_case))
    events = run.wait(timeout=600)
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[0]["stage"] == "loading model"
    assert run.error is None, run.log()
    assert {"transform.h5", "report.json", "fixed_rois.seg.nrrd"} <= set(run.result["files"])
    assert len(run.result["pairs"]) == 2 and run.result["device"] == "cpu"

    rejected = run.result["pairs"][0]["name"]
    refit = WorkerRun().start({"request": "refit", "pairs_from": run.result["output_dir"],
                               "reject_pairs": [rejected], "transform": "affine"})
    refit_events = refit.wait(timeout=600)
    assert refit.error is None, refit.log()
    stages = {e["stage"] for e in refit_events if e["type"] == "progress"}
    assert "fitting transform" in stages and not {"loading model", "encoding images"} & stages
    assert {"transform.h5", "affine.tfm", "warped_moving.nrrd", "fixed_rois.seg.nrrd", "moving_rois.seg.nrrd",
            "prompts_y.mrk.json", "report.json"} <= set(refit.result["files"])
    report = json.loads((Path(refit.result["output_dir"]) / "report.json").read_text())
    assert report["refit"]["pairs_used"] == [p["name"] for p in run.result["pairs"] if p["name"] != rejected]
    assert {p["name"]: p["rejected_because"] for p in report["pairs"]}[rejected] == "rejected by the user"
    assert report["fit_options"]["transform"] == "affine"
    assert report["dense_refinement"] == "features"  # the run's features, from the embedding cache
    old = (Path(run.result["output_dir"]) / "transform.h5").read_bytes()
    assert (Path(refit.result["output_dir"]) / "transform.h5").read_bytes() != old
    run.cleanup()
    refit.cleanup()


def _previous_output(folder: Path, pairs: list[dict]) -> Path:
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"inputs": {"fixed": "f.nrrd", "moving": "m.nrrd"},
                                                    "pairs": pairs}))
    return folder


def test_refit_with_every_pair_rejected_is_a_clear_error(tmp_path):
    previous = _previous_output(tmp_path / "previous", [{"name": "a", "accepted": True, "rejected_because": ""},
                                                        {"name": "b", "accepted": False, "rejected_because": "iou"}])
    run = WorkerRun().start({"request": "refit", "pairs_from": str(previous), "reject_pairs": ["a"]})
    run.wait(timeout=120)
    assert "no ROI pair left" in run.error
    run.cleanup()


def test_refit_of_a_folder_without_a_report_is_a_clear_error(tmp_path):
    run = WorkerRun().start({"request": "refit", "pairs_from": str(tmp_path)})
    run.wait(timeout=120)
    assert "holds no report.json" in run.error
    run.cleanup()


def test_cancel_leaves_nothing(ct_case, cache_dir):
    run = WorkerRun().start(request_2d(ct_case, auto_pairs=6, warps=2))
    deadline = time.time() + 120
    # cancelled once inverse prompting has begun (the model loaded, both images encoded, pairs under way)
    while time.time() < deadline and not any(e.get("stage") == "inverse prompting" for e in run.poll()):
        time.sleep(0.2)
    run.cancel()
    assert run.join_cancel(timeout=30)
    assert run.process.returncode is not None
    assert not run.folder.exists()


def _live_group_members(group: int) -> list[int]:
    """Processes (zombies excepted: they hold nothing) whose process group is ``group``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(stat.parent.name))
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc (Linux)")
def test_cancel_stops_the_whole_process_tree_within_two_seconds(ct_case, cache_dir, tmp_path):
    """Slicer starts the worker through the PythonSlicer launcher, whose real Python is a child process:
    cancelling must stop both, not only the launcher."""
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\n')  # no exec: Python runs as the launcher's child
    launcher.chmod(0o755)
    run = WorkerRun(python=str(launcher)).start(request_2d(ct_case, auto_pairs=6, warps=2))
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["type"] == "progress" for e in run.poll()):
        time.sleep(0.1)
    group = run.process.pid
    assert len(_live_group_members(group)) >= 2, "the launcher and its Python child should both be running"
    cancelled_at = time.monotonic()
    run.cancel()
    while _live_group_members(group) and time.monotonic() - cancelled_at < 2.0:
        time.sleep(0.05)
    assert _live_group_members(group) == [], "worker processes outlived the cancel by 2 s"
    assert run.join_cancel(timeout=30) and not run.folder.exists()


def test_sigterm_makes_the_worker_clean_up_its_staging(ct_case, cache_dir, tmp_path):
    request = {**request_2d(ct_case, auto_pairs=6, warps=2), "output_dir": str(tmp_path / "out")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    process = subprocess.Popen([sys.executable, "-m", "PromptRegLib.apps.worker", str(tmp_path / "request.json")],
                               stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if json.loads(line).get("stage") == "inverse prompting":
            break
    process.send_signal(signal.SIGTERM)
    rest = [json.loads(line) for line in process.stdout]
    assert process.wait(60) == 130
    assert rest[-1]["type"] == "error" and "cancelled" in rest[-1]["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["request.json"]


def test_bad_request_is_a_clear_error(tmp_path):
    (tmp_path / "request.json").write_text(json.dumps({"fixed": "a.nrrd"}))
    run = subprocess.run([sys.executable, "-m", "PromptRegLib.apps.worker", str(tmp_path / "request.json")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert last["type"] == "error" and "moving" in last["message"] and "output_dir" in last["message"]


def test_unreadable_input_is_reported(tmp_path, ct_case):
    bad = tmp_path / "not_an_image.nrrd"
    bad.write_text("hello")
    run = WorkerRun().start({**request_2d(ct_case), "fixed": str(bad)})
    run.wait(timeout=300)
    assert "cannot be read" in run.error
    run.cleanup()


def test_a_crashing_worker_gives_a_readable_error(ct_case, tmp_path):
    """The process dies without a word (here: killed); the client says so and points at a log that is still
    there once the run's folder is gone."""
    run = WorkerRun().start(request_2d(ct_case))
    time.sleep(1.0)
    os.kill(run.process.pid, signal.SIGKILL)
    run.wait(timeout=60)
    assert "stopped unexpectedly" in run.error and str(run.log_path) in run.error
    run.cleanup()
    assert not run.folder.exists() and run.log_path.is_file()
