"""The worker protocol: progress lines, a result, cancel (nothing left), a crash and a bad request."""
import json
import os
import signal
import subprocess
import sys
import time


from PromptRegLib.worker_client import WorkerRun


def request_2d(ct_case, **extra):
    case = ct_case["ctchest4_2d"]
    return {"fixed": case.path(case.fixed), "moving": case.path(case.moving), "prompts_ras": case.prompts_ras[:2],
            "auto_pairs": 0, "warps": 0, **extra}


def test_progress_then_result(ct_case, cache_dir):
    run = WorkerRun().start(request_2d(ct_case))
    events = run.wait(timeout=600)
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[0]["stage"] == "loading model"
    assert run.error is None, run.log()
    assert {"transform.h5", "report.json", "fixed_rois.seg.nrrd"} <= set(run.result["files"])
    assert len(run.result["pairs"]) == 2
    run.cleanup()


def test_cancel_leaves_nothing(ct_case, cache_dir):
    run = WorkerRun().start(request_2d(ct_case, auto_pairs=6, warps=2))
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["type"] == "progress" and e["fraction"] > 0.3 for e in run.poll()):
        time.sleep(0.2)
    run.cancel()
    assert run.process.returncode is not None
    assert not run.folder.exists()


def test_sigterm_makes_the_worker_clean_up_its_staging(ct_case, cache_dir, tmp_path):
    request = {**request_2d(ct_case, auto_pairs=6, warps=2), "output_dir": str(tmp_path / "out")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    process = subprocess.Popen([sys.executable, "-m", "PromptRegLib.worker", str(tmp_path / "request.json")],
                               stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if json.loads(line).get("fraction", 0) > 0.3:
            break
    process.send_signal(signal.SIGTERM)
    rest = [json.loads(line) for line in process.stdout]
    assert process.wait(60) == 130
    assert rest[-1]["type"] == "error" and "cancelled" in rest[-1]["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["request.json"]


def test_bad_request_is_a_clear_error(tmp_path):
    (tmp_path / "request.json").write_text(json.dumps({"fixed": "a.nrrd"}))
    run = subprocess.run([sys.executable, "-m", "PromptRegLib.worker", str(tmp_path / "request.json")],
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
    """The process dies without a word (here: killed); the client says so and points at the log."""
    run = WorkerRun().start(request_2d(ct_case))
    time.sleep(1.0)
    os.kill(run.process.pid, signal.SIGKILL)
    run.wait(timeout=60)
    assert "stopped unexpectedly" in run.error and "worker.log" in run.error
    run.cleanup()
