"""The Slicer-harness MRML tests (PromptReg/Testing/Python, run inside Slicer by ctest) run headless here on
slicer-core: the same unittest cases, collected by pytest."""
import sys
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")
MODULE = Path(__file__).resolve().parents[2] / "PromptReg"
sys.path[:0] = [str(MODULE), str(MODULE / "Testing" / "Python")]
slicer.mrmlScene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()

from PromptRegMRMLTest import PromptRegMRMLTest  # noqa: E402,F401
