"""Shared fixtures: the shared real data, and one model whose embedding cache lives for the whole session."""
from __future__ import annotations

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
    from PromptRegLib.bench import load_cases

    return {c.name: c for c in load_cases(data_dir)}


@pytest.fixture
def one_thread():
    """Tiny tensors (the deterministic test backends): one torch thread is faster and steadier on 2 shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
