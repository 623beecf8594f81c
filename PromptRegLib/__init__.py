"""PromptReg: training-free registration by corresponding prompts for Segment Anything models.

``register(fixed, moving, prompts_ras)`` is the Python API; ``promptreg`` the command line.
This package never imports Slicer, and importing it loads no torch until the API is used, so the
Slicer GUI can start the worker (``PromptRegLib.apps.worker_client``) without torch in its own process.
"""
__all__ = ["PromptRegError", "RegistrationResult", "refit_transform", "register"]
__version__ = "0.1.0"


def __getattr__(name):
    if name == "PromptRegError":
        from .errors import PromptRegError
        return PromptRegError
    if name in ("RegistrationResult", "refit_transform", "register"):
        import importlib
        return getattr(importlib.import_module(".pipeline.registration", __name__), name)
    raise AttributeError(f"module 'PromptRegLib' has no attribute {name!r}")
