"""The long-lived worker (``python -m PromptRegLib.apps.worker --serve``) through its client ``WorkerSession``:
requests answered in order, each stage cancelled within 2 s with the session going on, a killed worker replaced,
the state dropped when the images change, and encoding early (nothing encoded again; a fresh process reads the
disk cache).

Synthetic pairs written per test (their own noise: nothing cached from another test) and the weight-free backend
``test-patches``; the cancel and kill tests start the worker through a launcher that makes that backend take
time per slice and per decoder call, as a real model does, so a cancel lands inside each stage.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PromptRegLib.apps.worker_client import WorkerSession

#: cancel → its error event, at most (the issue's bound)
CANCEL_LIMIT_S = 2.0
CLICKS_RAS = [[40.0, 0.0], [-40.0, 0.0], [0.0, -30.0]]
CLICKS_3D_RAS = [[40.0, 0.0, 0.0], [-40.0, 0.0, 0.0]]
#: the stage of a region growing through slices (decoder calls only, once its slices are encoded)
GROWING = "growing regions through slices"
#: pairs from the clicks only, the fit on the ROI pairs only (seconds on these images)
FAST = {"model": "test-patches", "auto_pairs": 0, "warps": 0, "feature_weight": 0, "mind_weight": 0}



def phantom(size, spacing: float, shift_lps, seed: int) -> sitk.Image:
    """A body with two dark 'lungs' and a bright blob (ellipsoids in LPS mm about the centre), moved by ``shift_lps``."""
    dimension = len(size)
    origin = -spacing * (np.array(size) - 1) / 2
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[..., ::-1]
    points = index * spacing + origin - np.asarray(shift_lps[:dimension])
    values = np.where(((points / np.array([85.0, 75.0, 75.0][:dimension])) ** 2).sum(-1) <= 1, 0.3, 0.0)
    for centre, radii, value in (((-40.0, 0.0, 0.0), (22.0, 30.0, 45.0), 0.05),
                                 ((40.0, 0.0, 0.0), (20.0, 28.0, 40.0), 0.05),
                                 ((0.0, 30.0, -20.0), (15.0, 15.0, 20.0), 0.8)):
        values[(((points - centre[:dimension]) / radii[:dimension]) ** 2).sum(-1) <= 1] = value
    values = values + np.random.default_rng(seed).normal(0, 0.02, values.shape)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing([spacing] * dimension)
    image.SetOrigin(origin.tolist())
    return image


def write_pair(folder: Path, name: str, seed: int, size=(96, 88), spacing=2.0) -> dict:
    """A fixed and a moving image (shifted 6, −4[, 3] mm LPS) as files: the request's ``fixed`` and ``moving``."""
    paths = {"fixed": str(folder / f"{name}_fixed.nrrd"), "moving": str(folder / f"{name}_moving.nrrd")}
    sitk.WriteImage(phantom(size, spacing, (0.0, 0.0, 0.0), seed), paths["fixed"])
    sitk.WriteImage(phantom(size, spacing, (6.0, -4.0, 3.0), seed + 1), paths["moving"])
    return paths


@pytest.fixture(autouse=True)
def quiet_workers(cache_dir, monkeypatch):
    """Workers share the session's embedding cache and use one thread (tiny tensors: faster and steadier)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def worker(tmp_path):
    session = WorkerSession(log_dir=str(tmp_path / "logs"))
    yield session
    session.close()
    assert session.join_close(30)


@pytest.fixture
def slow_worker(slow_python, tmp_path):
    session = WorkerSession(python=slow_python, log_dir=str(tmp_path / "logs"))
    yield session
    session.close()
    assert session.join_close(30)


def answered(worker: WorkerSession, request_id: int, timeout: float = 120) -> tuple[list[dict], dict]:
    """The events of request ``request_id`` up to its answer, and the answer."""
    events = [e for e in worker.wait(request_id, timeout) if e.get("id") == request_id]
    return events, events[-1]


def cancelled_when(worker: WorkerSession, request_id: int, reached, timeout: float = 120) -> tuple[dict, float]:
    """Cancel request ``request_id`` once one of its events satisfies ``reached``; its answer and the seconds from the
    cancel to the answer."""
    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in worker.poll() if e.get("id") == request_id]
        assert not [e for e in events if e["type"] in ("result", "encoded", "error")], f"ended before the stage: {events}"
        if any(reached(e) for e in events):
            break
        assert time.monotonic() < deadline, "the stage was never reached"
        time.sleep(0.01)
    started = time.monotonic()
    worker.cancel(request_id)
    _, answer = answered(worker, request_id, 30)
    return answer, time.monotonic() - started


def test_requests_are_answered_in_order_and_each_updates_the_last_result(worker, tmp_path):
    images = write_pair(tmp_path, "a", seed=10)
    ids = [worker.request("encode", **images, **FAST),
           worker.request("register", **images, prompts_ras=CLICKS_RAS[:2], output_dir=str(tmp_path / "out"),
                          **FAST),
           worker.request("add_click", prompt_ras=CLICKS_RAS[2]),
           worker.request("correct", prompt_y_ras={"Prompt 1": [37.0, 4.0]}),  # 3 mm off
           worker.request("refit", reject_pairs=["Prompt 3"], transform="affine"),
           worker.request("nonsense")]
    events = worker.wait(ids[-2], 120)
    answers = [e for e in events if e["type"] in ("result", "encoded", "error")]
    assert [a["id"] for a in answers] == ids[-1:] + ids[:-1], "a bad request at once, the others in order"
    bad, encoded, registered, clicked, corrected, refitted = answers
    assert encoded["type"] == "encoded" and encoded["embedding_cache"]["misses"] == 2, encoded
    assert registered["type"] == "result", registered
    assert registered["report"]["embedding_cache"]["misses"] == 0 and registered["report"]["encoder"]["slices"] == 0
    assert {"transform.h5", "report.json", "moving_rois.seg.nrrd"} <= set(registered["files"])
    kinds = [e["type"] for e in events if e.get("id") == ids[1]]
    assert "affine" in kinds and kinds.index("affine") < kinds.index("result"), "the quick affine first"
    affine = next(e for e in events if e["type"] == "affine")
    np.testing.assert_allclose(affine["affine_lps"]["offset"], [6.0, -4.0], atol=2.0)
    assert [p["name"] for p in clicked["pairs"]] == ["Prompt 1", "Prompt 2", "Prompt 3"], clicked
    assert clicked["pairs"][2]["accepted"] and clicked["report"]["session"]["added"] == ["Prompt 3"]
    assert corrected["pairs"][0]["corrected"] and corrected["pairs"][0]["prompt_y_ras"][:2] == [37.0, 4.0]
    assert [p["rejected_by_user"] for p in refitted["pairs"]] == [False, False, True], refitted
    assert bad["type"] == "error" and "unknown request" in bad["message"]
    process = worker.process
    worker.close()
    assert worker.join_close(30) and process.returncode == 0, "it shut down by itself"


def test_cancel_is_answered_within_two_seconds_in_every_stage_and_the_session_goes_on(slow_worker, tmp_path):
    volumes = write_pair(tmp_path, "v", seed=20, size=(48, 44, 24), spacing=4.0)  # 24 slices each
    images = write_pair(tmp_path, "a", seed=30)
    latencies = {}
    encoding = slow_worker.request("encode", **volumes, **FAST)
    answer, latencies["encoding"] = cancelled_when(slow_worker, encoding, lambda e: e.get("done", 0) >= 1)
    assert answer["type"] == "error" and answer["cancelled"], answer
    _, encoded = answered(slow_worker, slow_worker.request("encode", **volumes, **FAST))  # from where it stopped
    assert encoded["type"] == "encoded" and encoded["embedding_cache"]["misses"] < 48, encoded
    # every slice held: only the decoder's own check can stop a region growing through the slices
    pairing = slow_worker.request("register", **volumes, prompts_ras=CLICKS_3D_RAS, **FAST)
    answer, latencies["pairing"] = cancelled_when(slow_worker, pairing, lambda e: e.get("stage") == GROWING)
    assert answer["type"] == "error" and answer["cancelled"], answer
    fitting = slow_worker.request("register", **images, prompts_ras=CLICKS_RAS[:2], **FAST)
    answer, latencies["fitting"] = cancelled_when(
        slow_worker, fitting, lambda e: e.get("stage", "").startswith("fitting the deformation"))
    assert answer["type"] == "error" and answer["cancelled"], answer
    print(f"cancel → answer: {', '.join(f'{stage} {seconds:.2f} s' for stage, seconds in latencies.items())}")
    assert max(latencies.values()) < CANCEL_LIMIT_S, latencies
    _, final = answered(slow_worker, slow_worker.request("register", **images, prompts_ras=CLICKS_RAS[:2],
                                                          **{**FAST, "transform": "affine"}))
    assert final["type"] == "result" and all(p["accepted"] for p in final["pairs"]), final
    assert final["report"]["embedding_cache"]["misses"] == 0, "the views outlived the cancels"


def test_an_encode_of_other_images_cancels_the_running_one(slow_worker, tmp_path):
    volumes = write_pair(tmp_path, "v", seed=40, size=(48, 44, 24), spacing=4.0)
    images = write_pair(tmp_path, "a", seed=50)
    first = slow_worker.request("encode", **volumes, **FAST)
    deadline = time.monotonic() + 60
    while not any(e.get("id") == first and e.get("done") for e in slow_worker.poll()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = slow_worker.request("encode", **images, **FAST)
    events = slow_worker.wait(second, 60)
    answers = {e["id"]: e for e in events if e["type"] in ("encoded", "error")}
    assert answers[first]["type"] == "error" and answers[first]["cancelled"]
    assert answers[second]["type"] == "encoded" and answers[second]["slices"] == {"fixed": 1, "moving": 1}


def test_a_killed_worker_is_replaced_and_a_fresh_one_reads_the_disk_cache(slow_worker, tmp_path):
    images = write_pair(tmp_path, "a", seed=60)
    volumes = write_pair(tmp_path, "v", seed=70, size=(48, 44, 24), spacing=4.0)
    _, first = answered(slow_worker, slow_worker.request("encode", **images, **FAST))
    assert first["embedding_cache"] == {"hits": 0, "misses": 2}, first
    killed_pid = slow_worker.process.pid
    doomed = slow_worker.request("encode", **volumes, **FAST)
    deadline = time.monotonic() + 60
    while not any(e.get("id") == doomed and e.get("done") for e in slow_worker.poll()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(killed_pid, signal.SIGKILL)
    events, answer = answered(slow_worker, doomed, 30)
    assert answer["type"] == "error" and "stopped unexpectedly" in answer["message"]
    assert str(slow_worker.log_path) in answer["message"] and slow_worker.log_path.is_file()
    time.sleep(0.3)
    events += [e for e in slow_worker.poll() if e.get("id") == doomed]
    assert len([e for e in events if e["type"] == "error"]) == 1, "one error, not one per symptom"
    _, again = answered(slow_worker, slow_worker.request("encode", **images, **FAST))
    assert slow_worker.process.pid != killed_pid
    assert again["type"] == "encoded" and again["embedding_cache"] == {"hits": 2, "misses": 0}, again


def test_other_images_drop_the_state_and_a_click_then_is_a_clear_error(worker, tmp_path):
    images, others = write_pair(tmp_path, "a", seed=80), write_pair(tmp_path, "b", seed=90)
    worker.request("register", **images, prompts_ras=CLICKS_RAS[:2], **{**FAST, "transform": "affine"})
    worker.request("encode", **others, **FAST)
    stale = worker.request("add_click", prompt_ras=CLICKS_RAS[2])
    _, answer = answered(worker, stale)
    assert answer["type"] == "error" and "images changed" in answer["message"], answer
    _, registered = answered(worker, worker.request("register", **others, prompts_ras=CLICKS_RAS[:2],
                                                    **{**FAST, "transform": "affine"}))
    assert registered["report"]["embedding_cache"]["misses"] == 0  # the second encode's views
    _, named = answered(worker, worker.request("add_click", prompt_ras=CLICKS_RAS[2], **images))
    assert named["type"] == "error" and "images changed" in named["message"], named
    worker.request("forget")
    _, forgotten = answered(worker, worker.request("correct", prompt_y_ras={"Prompt 1": [37.0, 4.0]}))
    assert forgotten["type"] == "error" and "cleared" in forgotten["message"], forgotten
    worker.process.stdin.close()  # the client is gone: the worker ends by itself
    assert worker.process.wait(30) == 0


def test_the_client_imports_no_torch():
    check = "import sys, PromptRegLib.apps.worker_client; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0
