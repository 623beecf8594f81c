"""LiteMedSAM's encoder and box decoder in OpenVINO: torch's masks, exported once, torch whenever it cannot run."""
import sys

import numpy as np
import openvino
import SimpleITK as sitk
import torch

from PromptRegLib.models import openvino_runtime
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.models.litemedsam import LiteMedSAM
from PromptRegLib.models.openvino_runtime import RUNTIME_NAME, load_openvino


def _refuse_export(*_args):
    raise AssertionError("exported again")


def test_exported_once_atomically_and_equal_to_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTREG_EXPORTS", str(tmp_path))
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 4, 1)).eval()
    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    example = (torch.zeros(1, 3, 32, 32),)
    first = load_openvino(network, example, "tiny-0123")
    exported = list(tmp_path.iterdir())  # the final folder only, no staging folder left
    assert first is not None and len(exported) == 1 and exported[0].name.startswith("tiny-0123-ov")
    with monkeypatch.context() as patched:
        patched.setattr(openvino_runtime, "_export", _refuse_export)
        again = load_openvino(network, example, "tiny-0123")  # a later run compiles what is there
    with torch.no_grad():
        expected = network(inputs)
    assert float((again(inputs)[0] - expected).abs().max()) < 1e-5
    assert torch.equal(first(inputs)[0], again(inputs)[0])

    def save_half(_model, path, **_options):
        open(path, "w").write("<net")
        raise OSError("disk full")

    monkeypatch.setattr(openvino, "save_model", save_half)
    assert load_openvino(network, example, "tiny-4567") is None  # a failed export → None (torch), no debris
    assert list(tmp_path.iterdir()) == exported


def test_falls_back_to_torch_without_openvino(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
    model = LiteMedSAM(device="cpu", cache=EmbeddingCache(tmp_path))
    assert model.encoder_runtime is None and model.decoder_runtime is None  # chosen at the first use
    embedding = model.encode([np.zeros((40, 40), np.float32)], (1.0, 1.0))[0]
    assert embedding.features.shape == (256, 64, 64)
    assert model.decode([embedding], boxes_xy=[[5, 5, 30, 30]])[0].shape == (1, 40, 40)
    assert (model.encoder_runtime, model.decoder_runtime) == ("torch", "torch")


def test_a_runtime_error_at_encoding_or_decoding_falls_back_to_torch(tmp_path):
    model = LiteMedSAM(device="cpu", cache=EmbeddingCache(tmp_path))
    embedding = model.encode([np.zeros((40, 40), np.float32)], (1.0, 1.0))[0]
    model.decode([embedding], boxes_xy=[[5, 5, 30, 30]])
    assert (model.encoder_runtime, model.decoder_runtime) == (RUNTIME_NAME, RUNTIME_NAME)

    def broken(*_inputs):
        raise RuntimeError("device lost")

    model._runtime_encoder = model._runtime_decoder = broken
    assert model.encode([np.ones((40, 40), np.float32)], (1.0, 1.0))[0].features.shape == (256, 64, 64)
    assert model.decode([embedding], boxes_xy=[[5, 5, 30, 30]])[0].shape == (1, 40, 40)
    assert (model.encoder_runtime, model.decoder_runtime) == ("torch", "torch")


def test_openvino_gives_the_torch_paths_masks_on_ct(data_dir, tmp_path, monkeypatch):
    """Box prompts around every labelled structure on three CT slices, encoded and decoded in OpenVINO: IoU ≥ 0.99
    with the torch path's masks, predicted IoU within 1e-3."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ctchest4" / "ct.nrrd"))).astype(np.float32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ctchest4" / "ct_labels.nii.gz")))
    runtime = LiteMedSAM(device="cpu", cache=EmbeddingCache(False))
    monkeypatch.setenv("PROMPTREG_ENCODER_RUNTIME", "torch")
    reference = LiteMedSAM(device="cpu", cache=EmbeddingCache(False))
    ious, predicted = [], []
    for z in (10, 17, 25):
        slice_01 = np.clip((ct[z] + 1024) / 2048, 0, 1)
        boxes = np.array([[xs.min(), ys.min(), xs.max(), ys.max()] for value in np.unique(labels[z])[1:]
                          for ys, xs in [np.nonzero(labels[z] == value)] if len(xs) >= 30], dtype=float)
        ours, theirs = (m.encode([slice_01], (3.05, 3.05))[0] for m in (runtime, reference))
        assert float((ours.features - theirs.features).abs().max()) < 1e-4
        decoded = [m.decode([e] * len(boxes), boxes_xy=boxes) for m, e in ((runtime, ours), (reference, theirs))]
        masks = [(logits > 0).numpy() for logits, _ in decoded]
        ious += [np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()) for a, b in zip(*masks)]
        predicted.append(np.abs(decoded[0][1] - decoded[1][1]).max())
    assert (runtime.encoder_runtime, reference.encoder_runtime) == (RUNTIME_NAME, "torch")
    assert (runtime.decoder_runtime, reference.decoder_runtime) == (RUNTIME_NAME, "torch")
    assert len(ious) >= 10 and min(ious) >= 0.99 and max(predicted) < 1e-3
