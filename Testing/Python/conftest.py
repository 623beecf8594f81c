"""Shared fixtures: the shared real data, one model whose embedding cache lives for the whole session, and one
default registration of the 3D CT pair that several modules read."""
from __future__ import annotations

import hashlib
import os
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
