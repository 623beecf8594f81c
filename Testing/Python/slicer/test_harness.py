"""The Slicer-harness MRML tests (PromptReg/Testing/Python, run inside Slicer by ctest) run headless here on
slicer-core: the same unittest cases, collected by pytest."""
import sys
from pathlib import Path


import slicer  # noqa: E402  (slicer-core, a test dependency: missing it is an error, not a skip)
MODULE = Path(__file__).resolve().parents[3] / "PromptReg"
sys.path[:0] = [str(MODULE), str(MODULE / "Testing" / "Python")]
slicer.mrmlScene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()

from PromptRegMRMLTest import PromptRegMRMLTest  # noqa: E402,F401
