"""One options object: the same outside names give the same options from every entry point.

The five entry points — the command line, a worker request, a cohort table's row, a bench case and the Slicer
panel's parameters — each hand their own form of the same choices to ``RegistrationOptions.from_mapping``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from PromptRegLib.apps.batch.table import read_pairs
from PromptRegLib.apps.batch.task import options_of
from PromptRegLib.apps.bench.cases import Case
from PromptRegLib.apps.cli import attach_coordinates, build_parser
from PromptRegLib.core.image import Image
from PromptRegLib.errors import UsageError
from PromptRegLib.pipeline.options import NO_CLICK_AUTO_PAIRS, OPTION_NAMES, Prompts, RegistrationOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "PromptReg"))
from PromptRegSlicer.options import registration_options  # noqa: E402  (Qt-free: the panel's mapping)

#: each case: the choices, as the command line, a worker request, a table row, a bench case and the panel say them
CASES = {
    "no sampled pairs at all": ({"auto_pairs": 0}, ["--auto-pairs", "0"], {"autoPairs": 0}),
    "quick preset": ({"preset": "quick"}, ["--preset", "quick"], {"preset": "Quick"}),
    "stiffer affine": ({"transform": "affine", "bending": 5.0, "warps": 1},
                       ["--transform", "affine", "--bending", "5", "--warps", "1"],
                       {"transformType": "affine", "bending": 5.0, "warps": 1}),
}
PANEL_DEFAULTS = {"model": "litemedsam", "checkpoint": "", "device": "auto", "preset": "Default", "autoPairs": -1,
                  "warps": -1, "transformType": "deformable", "bending": 10.0}


def from_command_line(arguments: list[str]) -> RegistrationOptions:
    args = build_parser().parse_args(attach_coordinates(["register", "f.nrrd", "m.nrrd", "-o", "out", *arguments]))
    return RegistrationOptions.from_mapping(vars(args))


def from_worker_request(choices: dict) -> RegistrationOptions:
    return RegistrationOptions.from_mapping({"fixed": "f.nrrd", "moving": "m.nrrd", "output_dir": "out", **choices})


def from_table_row(choices: dict, folder: Path) -> RegistrationOptions:
    columns = ",".join(choices)
    (folder / "pairs.csv").write_text(f"id,fixed,moving,prompts,{columns}\n"
                                      f"a,f.nrrd,m.nrrd,,{','.join(str(v) for v in choices.values())}\n")
    (row,) = read_pairs(folder / "pairs.csv")
    return options_of(row)


def from_bench_case(choices: dict) -> RegistrationOptions:
    case = Case(name="c", data_dir=Path("."), fixed="f.nrrd", moving="m.nrrd", prompts_ras=[], options=choices)
    return RegistrationOptions.from_mapping(case.options)


def from_panel(parameters: dict) -> RegistrationOptions:
    request = {"fixed": "f.nrrd", "moving": "m.nrrd",
               **registration_options(SimpleNamespace(**{**PANEL_DEFAULTS, **parameters}))}
    return RegistrationOptions.from_mapping({k: v for k, v in request.items() if v is not None})


@pytest.mark.parametrize("name", CASES)
def test_every_entry_point_gives_the_same_options(name, tmp_path):
    choices, arguments, panel = CASES[name]
    expected = RegistrationOptions.from_mapping(choices)
    got = {"command line": from_command_line(arguments), "worker request": from_worker_request(choices),
           "table row": from_table_row(choices, tmp_path), "bench case": from_bench_case(choices),
           "Slicer panel": from_panel(panel)}
    assert {where: options == expected for where, options in got.items()} == dict.fromkeys(got, True)


def test_auto_pairs_zero_means_no_sampled_pairs_even_where_every_click_fails():
    """The rule lives in one place (the pairs stage reads an explicit 0 as none at all): from any entry point."""
    none = RegistrationOptions.from_mapping({"auto_pairs": 0})
    default = RegistrationOptions()
    assert none.pairs.auto_pairs == 0 and default.pairs.auto_pairs is None
    assert default.pairs.fallback_auto_pairs > 0  # the fallback stands by for a run that asked for nothing


def test_no_prompts_means_automatic_pairs_and_the_report_note_says_so():
    image = Image(sitk.GetImageFromArray(np.zeros((8, 32, 32), np.float32)))
    pairs, _, _, notes = RegistrationOptions().for_run(image, Prompts())
    assert pairs.auto_pairs == NO_CLICK_AUTO_PAIRS and notes == [f"no prompts given: {NO_CLICK_AUTO_PAIRS} automatic pairs"]
    pairs, _, _, notes = RegistrationOptions().for_run(image, Prompts.of([(0.0, 0.0, 0.0)]))
    assert pairs.auto_pairs is None and notes == []
    pairs, _, _, _ = RegistrationOptions.from_mapping({"auto_pairs": 0}).for_run(image, Prompts())
    assert pairs.auto_pairs == 0  # asked for none: the run refuses, it does not sample


@pytest.mark.parametrize("name, value, message", [
    ("auto_pairs", "many", "is not a whole number"), ("auto_pairs", -1, "≥ 0"), ("bending", "stiff", "a number"),
    ("transform", "rigid", "affine or deformable"), ("preset", "fast", "one of quick"), ("device", "tpu", "cuda"),
    ("pairs_only", "perhaps", "true or false"), ("slice_spacing_mm", 0, "> 0"),
])
def test_a_bad_value_is_refused_naming_the_option(name, value, message):
    with pytest.raises(UsageError, match=f"option {name}: .*{message}"):
        RegistrationOptions.from_mapping({name: value})


def test_the_outside_names_round_trip():
    options = RegistrationOptions.from_mapping({"auto_pairs": 3, "bending": 2.5, "reject_pairs": "Prompt 1;Prompt 2",
                                                "preset": "accurate", "slice_spacing_mm": 7})
    assert RegistrationOptions.from_mapping(options.as_mapping()) == options
    assert set(options.as_mapping()) == set(OPTION_NAMES)
    assert options.reject_pairs == ("Prompt 1", "Prompt 2")
