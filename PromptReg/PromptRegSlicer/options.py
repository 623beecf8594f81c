"""The panel's parameters as the library's options: each parameter under the option's outside name.

The library turns these names into options (``PromptRegLib.pipeline.options.RegistrationOptions.from_mapping``) the
same way for the panel as for the command line, a cohort table or a script; what a preset implies (quick: an
affine) is decided there, never here. Qt-free, so it is tested on a headless scene.
"""
from __future__ import annotations

#: panel parameter → outside option name; a negative count means "the library's default"
PARAMETER_OPTIONS = {"model": "model", "checkpoint": "checkpoint", "device": "device", "preset": "preset",
                     "autoPairs": "auto_pairs", "warps": "warps", "transformType": "transform", "bending": "bending"}
#: what a refit (reject-and-refit, a Prompt Y correction) takes from the panel: it fits again, it prompts nothing new
REFIT_PARAMETERS = ("preset", "transformType", "bending")


def _value(parameter: str, value):
    if parameter in ("autoPairs", "warps") and value is not None and value < 0:
        return None
    if parameter == "preset":
        return str(value).lower()
    return value if value != "" else None


def registration_options(parameters, pairs_only: bool = False) -> dict:
    """A registration request's options from the parameter node (its outside names)."""
    options = {name: _value(parameter, getattr(parameters, parameter)) for parameter, name in PARAMETER_OPTIONS.items()}
    return {**options, "pairs_only": pairs_only}


def refit_options(parameters) -> dict:
    """A refit request's options from the parameter node."""
    return {PARAMETER_OPTIONS[p]: _value(p, getattr(parameters, p)) for p in REFIT_PARAMETERS}
