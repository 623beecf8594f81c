"""PromptReg: training-free registration by corresponding prompts for Segment Anything models.

``register(fixed, moving, prompts_ras)`` is the Python API; ``promptreg`` the command line.
This package never imports Slicer.
"""
from .errors import PromptRegError
from .register import RegistrationResult, refit_transform, register

__all__ = ["PromptRegError", "RegistrationResult", "refit_transform", "register"]
__version__ = "0.1.0"
