"""Runs that are cancelled at any stage, run twice at once on one cache, or meet a stale cache entry."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptRegLib.apps.worker_client import WorkerRun
from PromptRegLib.core.image import read_image
from PromptRegLib.errors import Cancelled
from PromptRegLib.pipeline.options import RegistrationOptions
from PromptRegLib.pipeline.registration import register
from PromptRegLib.prompting.pairs import PairOptions
from PromptRegLib.views import make_view


def quick_options() -> PairOptions:
    return PairOptions(auto_pairs=0, warps=0)


def pair_2d(ct_case) -> tuple[str, str, list]:
    """The 2D CT pair and one click: every stage of a run, at the least decoding."""
    case = ct_case["ctchest4_2d"]
    return case.path(case.fixed), case.path(case.moving), case.prompts_ras[:1]


def stages_of_a_full_run(fixed, moving, prompts) -> list[str]:
    stages = []
    register(fixed, moving, prompts, RegistrationOptions(device="cpu", pairs=quick_options()),
             progress=lambda stage, *_: stages.append(stage))
    return list(dict.fromkeys(stages))


class CancelAt:
    """Cancels from the moment ``stage`` is first reported."""

    def __init__(self, stage: str):
        self.stage, self.reached = stage, False

    def progress(self, stage: str, *_fraction_and_count) -> None:
        self.reached = self.reached or stage == self.stage

    def cancel(self) -> bool:
        return self.reached


def test_cancel_at_every_stage_stops_the_run(ct_case, cache_dir):
    fixed, moving, prompts = pair_2d(ct_case)
    stages = stages_of_a_full_run(fixed, moving, prompts)
    assert {"loading model", "segmenting Prompt X", "inverse prompting", "fitting transform"} <= set(stages)
    for stage in stages:
        canceller = CancelAt(stage)
        with pytest.raises(Cancelled):
            register(fixed, moving, prompts, RegistrationOptions(device="cpu", pairs=quick_options()),
                     progress=canceller.progress, cancel=canceller.cancel)


def test_two_runs_at_once_on_one_cold_cache_agree_and_leave_it_sound(ct_case, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTREG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes × two threads on two cores: 142 s instead of ~50 s
    fixed, moving, prompts = pair_2d(ct_case)
    request = {"fixed": fixed, "moving": moving, "prompts_ras": prompts, "auto_pairs": 0, "warps": 0}
    runs = [WorkerRun(work_root=str(tmp_path)).start(request) for _ in range(2)]
    for run in runs:
        run.wait(timeout=600)
        assert run.error is None, run.log()
    fields = [sitk.GetArrayFromImage(sitk.ReadTransform(str(run.folder / "output" / "transform.h5"))
                                     .GetDisplacementField()) for run in runs]
    np.testing.assert_allclose(fields[0], fields[1], atol=1e-5)
    entries = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in entries if p.suffix == ".tmp"], "a half-written cache entry was left"
    for entry in [p for p in entries if p.suffix == ".pt"]:
        assert isinstance(torch.load(entry, weights_only=True), torch.Tensor)
    for run in runs:
        run.cleanup()


def test_an_image_changed_on_disk_is_encoded_again(model, tmp_path, data_dir):
    source = sitk.ReadImage(str(data_dir / "ctchest4" / "pair2d_fixed.nrrd"))
    path = tmp_path / "changing.nrrd"
    sitk.WriteImage(source, str(path))
    first = make_view(model, read_image(path)).embeddings([0])[0].features
    misses = model.cache.misses
    changed = sitk.GetArrayFromImage(source)
    changed[100:200, 100:200] = changed.max()
    edited = sitk.GetImageFromArray(changed)
    edited.CopyInformation(source)
    sitk.WriteImage(edited, str(path))                       # same path, new content
    second = make_view(model, read_image(path)).embeddings([0])[0].features
    assert model.cache.misses == misses + 1
    assert not torch.equal(first, second)
