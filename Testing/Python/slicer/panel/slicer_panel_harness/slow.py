"""A worker Python that makes the weight-free ``test-patches`` backend take a real model's time: a launcher script
the panel's logic starts instead of its Python, so a cancel or a change of volume lands inside a stage."""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["write_slow_python"]

LAUNCHER = '''#!{python}
"""The worker with test-patches slowed: {encode_s} s a slice, {decode_s} s a decoder call."""
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


def write_slow_python(folder: Path, encode_s: float = 0.05, decode_s: float = 0.05) -> Path:
    """The launcher, executable, in ``folder``; pass it where the worker's Python goes."""
    launcher = Path(folder) / "slow-python"
    launcher.write_text(LAUNCHER.format(python=sys.executable, encode_s=encode_s, decode_s=decode_s))
    launcher.chmod(0o755)
    return launcher
