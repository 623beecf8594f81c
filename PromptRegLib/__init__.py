"""PromptReg: training-free registration by corresponding prompts for Segment Anything models.

``register(fixed, moving, prompts, options)`` is the Python API (:mod:`.pipeline.registration`); ``promptreg`` the
command line (:mod:`.apps.cli`). This package never imports Slicer, and importing it loads no torch until the API
is used, so the Slicer GUI can start the worker (:mod:`.apps.worker_client`) without torch in its own process.
"""
import importlib

__all__ = ["Prompts", "PromptRegError", "RegistrationOptions", "RegistrationResult", "refit_transform", "register"]
__version__ = "0.1.0"

#: public name → the module that defines it (imported on first use)
_PUBLIC = {"PromptRegError": ".errors", "Prompts": ".pipeline.options", "RegistrationOptions": ".pipeline.options",
           "RegistrationResult": ".pipeline.registration", "refit_transform": ".pipeline.registration",
           "register": ".pipeline.registration"}


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module 'PromptRegLib' has no attribute {name!r}")
