"""Shared fixtures: the shared real data, one model whose embedding cache lives for the whole session, and one
default registration of the 3D CT pair that several modules read."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PROMPTREG_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "ctchest4" / "ct.nrrd").is_file():
        pytest.fail(f"shared data not found at {DATA}; set PROMPTREG_DATA to the folder holding ctchest4/")
    return DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One embedding cache for the session (set for subprocesses too), so each image is encoded once."""
    path = tmp_path_factory.mktemp("embedding-cache")
    os.environ["PROMPTREG_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def model(cache_dir):
    from PromptRegLib.models import load_model
    from PromptRegLib.models.cache import EmbeddingCache

    return load_model("litemedsam", device="cpu", cache=EmbeddingCache(cache_dir))


@pytest.fixture(scope="session")
def ct_case(data_dir):
    from PromptRegLib.apps.bench.cases import load_cases

    return {c.name: c for c in load_cases(data_dir)}


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="session")
def registered_3d(ct_case, model, tmp_path_factory):
    """The 3D CT pair registered with the case's three clicks and every default, its outputs written: the case, the
    result, the output folder, the progress reported, the inputs' digests before the run and their paths."""
    from PromptRegLib import register
    from PromptRegLib.io.outputs import write_registration

    case = ct_case["ctchest4_3d"]
    inputs = [case.path(case.fixed), case.path(case.moving)]
    before = [digest(p) for p in inputs]
    stages = []
    result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras, model=model,
                      progress=lambda stage, fraction, *count: stages.append((stage, fraction)))
    output = tmp_path_factory.mktemp("reg3d") / "out"
    write_registration(result, output)
    return case, result, output, stages, before, inputs


@pytest.fixture
def one_thread():
    """Tiny tensors (the deterministic test backends): one torch thread is faster and steadier on 2 shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: the slow launcher's cost per encoded slice and per decoder call (s): a real model's pace
SLOW_ENCODE_S, SLOW_DECODE_S = 0.05, 0.05
SLOW_LAUNCHER = '''#!{python}
"""The worker with test-patches slowed to a real model's pace: {encode_s} s a slice, {decode_s} s a decoder call."""
import runpy, sys, time
from PromptRegLib.models.patches import PatchSlices

encode, decode = PatchSlices._encode_inputs, PatchSlices._decode


def slow_encode(self, inputs):
    time.sleep({encode_s} * len(inputs))
    return encode(self, inputs)


def slow_decode(self, *args):
    time.sleep({decode_s})
    return decode(self, *args)


PatchSlices._encode_inputs, PatchSlices._decode = slow_encode, slow_decode
sys.argv = [sys.argv[0], *sys.argv[3:]]  # "-m PromptRegLib.apps.worker --serve" → "--serve"
runpy.run_module("PromptRegLib.apps.worker", run_name="__main__")
'''


@pytest.fixture
def slow_python(tmp_path) -> str:
    """A Python for the worker that makes the weight-free ``test-patches`` backend take a real model's time, so a
    cancel or a change of volume lands inside a stage: pass it where the worker's Python goes."""
    launcher = tmp_path / "slow-python"
    launcher.write_text(SLOW_LAUNCHER.format(python=sys.executable, encode_s=SLOW_ENCODE_S, decode_s=SLOW_DECODE_S))
    launcher.chmod(0o755)
    return str(launcher)
