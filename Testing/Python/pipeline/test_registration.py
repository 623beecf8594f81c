"""The Python API on the synthetic backend: the README's example runs as written, and register's steps compose."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptRegLib import Prompts, RegistrationOptions, register
from PromptRegLib.models import load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.pipeline.registration import register_views, see

README = Path(__file__).resolve().parents[3] / "README.md"


def ball_pair(folder: Path, shift_mm=(6.0, 0.0, 0.0)) -> tuple[str, str]:
    """A ball in a 32³ box of 4 mm voxels (LPS origin at the corner) and the same ball moved by ``shift_mm`` (LPS)."""
    index = np.indices((32, 32, 32)).astype(float)[::-1].transpose(1, 2, 3, 0) * 4.0  # (x, y, z) mm
    paths = []
    for name, centre in (("fixed.nrrd", np.array([64.0, 64.0, 64.0])), ("moving.nrrd", 64.0 + np.array(shift_mm))):
        values = 800.0 * (np.linalg.norm(index - centre, axis=-1) < 24.0)
        image = sitk.GetImageFromArray(values.astype(np.float32))
        image.SetSpacing([4.0, 4.0, 4.0])
        sitk.WriteImage(image, str(folder / name))
        paths.append(str(folder / name))
    return paths[0], paths[1]


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's first screen cannot rot: its Python block runs, with only the images and the model swapped for
    a synthetic pair and the weight-free backend (on 12 mm working slices, for the suite's time)."""
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    fixed, moving = ball_pair(tmp_path)
    click_ras = "(-64.0, -64.0, 64.0)"  # the ball's centre: LPS (64, 64, 64)
    code = (block.replace('"fixed.nrrd"', repr(fixed)).replace('"moving.nrrd"', repr(moving))
            .replace('"out"', repr(str(tmp_path / "out"))).replace("(-71.2, -33.6, -140.2)", click_ras)
            .replace('{"preset": "default"}', '{"preset": "default", "model": "test-patches", "slice_spacing_mm": 12}'))
    assert code != block and "register(" in code
    monkeypatch.setenv("PROMPTREG_CACHE", "off")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    result = namespace["result"]
    assert (tmp_path / "out" / "transform.h5").is_file() and result.accepted_pairs
    moved = result.transform.to_sitk().TransformPoint([64.0, 64.0, 64.0])
    assert np.allclose(moved, [70.0, 64.0, 64.0], atol=2.5), moved  # the ball's shift, fixed → moving


def test_see_then_register_views_is_register(tmp_path):
    """register() is its steps: views made once can serve another registration (what a session keeps)."""
    fixed, moving = ball_pair(tmp_path)
    model = load_model("test-patches", cache=EmbeddingCache(False))
    options = RegistrationOptions.from_mapping({"transform": "affine", "feature_weight": 0, "slice_spacing_mm": 12})
    prompts = Prompts.of([(-64.0, -64.0, 64.0)])
    whole = register(fixed, moving, prompts, options, model=model)
    views = see(model, whole.fixed_image, whole.moving_image, options)
    again = register_views(views, prompts, options)
    assert np.allclose(whole.transform.affine_offset, again.transform.affine_offset, atol=1e-4)
    assert again.report["prompts"] == "1 given" and "encoder" in again.report
