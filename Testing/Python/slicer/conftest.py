"""Fixtures of the Slicer-side tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_thread_workers():
    """The workers these tests start (python -m PromptRegLib.apps.worker) use one torch thread: the test backends'
    tensors are tiny, and on two shared cores a second thread made a deformable fit ten times slower (6 s → 60 s)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
