"""The weight-free test backends ``test-patches`` (slices) and ``test-patches-3d`` (cubes).

Checked: same features from every instance; features that move with the image under flips and 90° turns
(exactly) and follow a disc through a flip plus an oblique turn (approximately); a box or a click on a bright
disc (a ball) in a textured background decodes to that disc (ball); shapes and the B prompts → B masks contract.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from PromptRegLib.errors import CheckpointError
from PromptRegLib.models import MODEL_NAMES, load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.models.patches import (
    PatchCubes,
    PatchSlices,
    patch_features,
    symmetric_kernels,
)

SIZE = 128
DISC_CENTRE_YX, DISC_RADIUS = (40.0, 70.0), 22.0
BALL_CENTRE, BALL_RADIUS = (14.0, 17.0, 15.0), 11.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def disc_image(centre_yx=DISC_CENTRE_YX, radius=DISC_RADIUS, seed=1) -> tuple[np.ndarray, np.ndarray]:
    """A bright, slightly noisy disc on a textured mid-grey background, in [0, 1]; and the disc mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE].astype(float)
    background = 0.35 + 0.08 * rng.standard_normal((SIZE, SIZE)) + 0.05 * np.sin(x / 3) * np.cos(y / 5)
    disc = (y - centre_yx[0]) ** 2 + (x - centre_yx[1]) ** 2 <= radius ** 2
    image = np.where(disc, 0.85 + 0.02 * rng.standard_normal((SIZE, SIZE)), background)
    return np.clip(image, 0, 1).astype(np.float32), disc


def ball_cube(centre=BALL_CENTRE, radius=BALL_RADIUS, seed=2) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball (CT-like values) in a noisy 32³ cube, and the ball mask."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[:32, :32, :32].astype(float)
    ball = sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= radius ** 2
    cube = np.where(ball, 300 + 10 * rng.standard_normal(ball.shape), -50 + 40 * rng.standard_normal(ball.shape))
    return cube.astype(np.float32), ball


def turned(image: np.ndarray, degrees: float, shift_px: tuple[float, float], fill: float) -> np.ndarray:
    """``image`` turned by ``degrees`` about its centre and shifted (pixels, x then y), bilinear."""
    angle = math.radians(degrees)
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), -2 * shift_px[0] / SIZE],
                          [math.sin(angle), math.cos(angle), -2 * shift_px[1] / SIZE]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, SIZE, SIZE], align_corners=False)
    source = torch.as_tensor(image, dtype=torch.float32)[None, None] - fill
    return (F.grid_sample(source, grid, align_corners=False)[0, 0] + fill).numpy()


def unit_prototype(features: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """Masked mean of unit features (C, *grid), the mask (*full) weighted by its coverage of each cell."""
    pool = F.adaptive_avg_pool2d if features.dim() == 3 else F.adaptive_avg_pool3d
    weights = pool(torch.as_tensor(mask, dtype=torch.float32)[None, None], features.shape[-1])[0, 0]
    return F.normalize((F.normalize(features, dim=0) * weights).sum(dim=tuple(range(1, features.dim()))), dim=0)


def similarity(prototype: torch.Tensor, features: torch.Tensor) -> np.ndarray:
    return torch.einsum("c,c...->...", prototype, F.normalize(features, dim=0)).numpy()


def cell_of(mask: np.ndarray) -> np.ndarray:
    """A mask's centroid in cell coordinates (cell j is centred on pixel 4j + 1.5)."""
    return (np.argwhere(mask).mean(axis=0) - 1.5) / 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: on a loaded 2-core machine, waking a second torch thread for each operation cost
    10–50× the work (measured: 2D features 383 ms with 2 threads, 7 ms with 1). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def slices() -> PatchSlices:
    return load_model("test-patches", device="cpu", cache=EmbeddingCache(None))


@pytest.fixture()
def cubes() -> PatchCubes:
    return load_model("test-patches-3d", device="cpu", cache=EmbeddingCache(None))


def test_registered_with_versioned_cache_tags_and_no_checkpoint():
    assert {"test-patches", "test-patches-3d"} <= set(MODEL_NAMES)
    slices = load_model("test-patches", device="cpu", cache=EmbeddingCache(None))
    cubes = load_model("test-patches-3d", device="cpu", cache=EmbeddingCache(None))
    assert isinstance(slices, PatchSlices) and isinstance(cubes, PatchCubes)
    assert slices.cache_tag.startswith("test-patches-recipe") and cubes.cache_tag.startswith("test-patches-3d-recipe")
    assert (cubes.native_3d, cubes.supports_boxes, cubes.cube_size, cubes.grid_size, cubes.spacing_mm) == \
        (True, False, 32, 8, 3.0)
    with pytest.raises(CheckpointError, match="takes no checkpoint"):
        load_model("test-patches", checkpoint="weights.pth", device="cpu")


def test_two_instances_give_identical_features():
    image, _ = disc_image()
    cube, _ = ball_cube()
    first, second = (PatchSlices(cache=EmbeddingCache(None)) for _ in range(2))
    assert torch.equal(first.encode([image], (1.0, 1.0))[0].features, second.encode([image], (1.0, 1.0))[0].features)
    assert torch.equal(PatchCubes(cache=EmbeddingCache(None)).encode(cube),
                       PatchCubes(cache=EmbeddingCache(None)).encode(cube))
    features = first.encode([image], (1.0, 1.0))[0].features
    assert features.shape == (32, SIZE // 4, SIZE // 4)
    assert first.cache.hits == 1                     # the second encode of the same slice came from the cache


def test_random_kernels_are_symmetric_and_zero_sum():
    kernels = symmetric_kernels(16, 3)[:, 0]
    assert torch.allclose(kernels, kernels.flip(1), atol=1e-6)
    assert torch.allclose(kernels, kernels.permute(0, 3, 1, 2), atol=1e-6)
    assert torch.allclose(kernels.sum(dim=(1, 2, 3)), torch.zeros(16), atol=1e-6)
    assert not torch.allclose(kernels[0], kernels[1])


@pytest.mark.parametrize("move", ["flip columns", "flip rows", "turn 90", "transpose"])
def test_slice_features_move_with_flips_and_quarter_turns(move):
    image = torch.as_tensor(disc_image()[0])[None, None]
    moves = {"flip columns": lambda t: t.flip(-1), "flip rows": lambda t: t.flip(-2),
             "turn 90": lambda t: t.rot90(1, (-2, -1)), "transpose": lambda t: t.transpose(-2, -1)}
    kernels = symmetric_kernels(16, 2)
    moved_features = patch_features(moves[move](image), kernels)
    assert torch.allclose(moved_features, moves[move](patch_features(image, kernels)), atol=1e-4)


def test_cube_features_move_with_axis_flips_and_permutations():
    cube = torch.as_tensor(ball_cube()[0] / 400)[None, None].clamp(0, 1)
    kernels = symmetric_kernels(16, 3)
    move = lambda t: t.flip(2, 4).permute(0, 1, 4, 2, 3)  # noqa: E731
    assert torch.allclose(patch_features(move(cube), kernels), move(patch_features(cube, kernels)), atol=1e-4)


def test_box_and_click_on_a_disc_decode_to_the_disc(slices):
    image, disc = disc_image()
    embedding = slices.encode([image], (1.0, 1.0))
    rows, columns = np.nonzero(disc)
    box = np.array([[columns.min() - 2, rows.min() - 2, columns.max() + 2, rows.max() + 2]], dtype=float)
    logits, iou = slices.decode(embedding, boxes_xy=box)
    assert logits.shape == (1, SIZE, SIZE) and iou.shape == (1,)
    assert dice(logits[0].numpy() > 0, disc) >= 0.8
    assert iou[0] >= 0.75
    click = np.array([[[DISC_CENTRE_YX[1] + 5, DISC_CENTRE_YX[0] - 3]]])
    logits, _ = slices.decode(embedding, points_xy=click, point_labels=np.ones((1, 1)))
    assert dice(logits[0].numpy() > 0, disc) >= 0.8


def test_negative_click_keeps_the_disc_out_of_a_background_region(slices):
    image, disc = disc_image()
    embedding = slices.encode([image], (1.0, 1.0))
    clicks = np.array([[[110.0, 110.0], [DISC_CENTRE_YX[1], DISC_CENTRE_YX[0]]]])
    logits, _ = slices.decode(embedding, points_xy=clicks, point_labels=np.array([[1, 0]]))
    mask = logits[0].numpy() > 0
    assert mask[110, 110] and mask.sum() > 0.3 * SIZE * SIZE
    assert (mask & disc).sum() < 0.05 * disc.sum()


def test_box_bounds_the_region(slices):
    image = np.full((SIZE, SIZE), 0.6, dtype=np.float32)      # one uniform region everywhere
    embedding = slices.encode([image], (1.0, 1.0))
    logits, iou = slices.decode(embedding, boxes_xy=np.array([[40.0, 40.0, 80.0, 80.0]]))
    rows, columns = np.nonzero(logits[0].numpy() > 0)
    assert rows.min() >= 40 - 0.1 * 40 - 4 and rows.max() <= 80 + 0.1 * 40 + 4
    assert columns.min() >= 40 - 0.1 * 40 - 4 and columns.max() <= 80 + 0.1 * 40 + 4
    assert iou[0] <= 0.55                                      # the region fills its whole bound


@pytest.mark.parametrize("degrees, flip", [(90, True), (37, True), (-25, False)])
def test_disc_prototype_peaks_at_the_moved_disc(slices, degrees, flip):
    image, disc = disc_image()
    inside = F.avg_pool2d(torch.as_tensor(disc, dtype=torch.float32)[None, None], 13, 1, 6)[0, 0].numpy() > 0.999
    prototype = unit_prototype(slices.encode([image], (1.0, 1.0))[0].features, inside)
    source, source_disc = (image[:, ::-1], disc[:, ::-1]) if flip else (image, disc)
    moved = turned(np.ascontiguousarray(source), degrees, (-6.0, 4.0), fill=0.35)
    moved_disc = turned(np.ascontiguousarray(source_disc, dtype=np.float32), degrees, (-6.0, 4.0), fill=0) > 0.5
    score = similarity(prototype, slices.encode([moved], (1.0, 1.0))[0].features)
    coverage = F.adaptive_avg_pool2d(torch.as_tensor(moved_disc, dtype=torch.float32)[None, None], 32)[0, 0].numpy()
    # the disc's inside is a plateau of cosine ≈ 1: its peak lies inside the moved disc, its centroid at the centre
    assert coverage[np.unravel_index(score.argmax(), score.shape)] > 0.99
    assert np.linalg.norm(np.argwhere(score >= 0.9 * score.max()).mean(axis=0) - cell_of(moved_disc)) <= 1.0
    assert score.max() >= 0.9 and score[coverage == 0].max() <= score.max() - 0.3


def test_click_in_a_ball_decodes_to_the_ball(cubes):
    cube, ball = ball_cube()
    features = cubes.encode(cube)
    assert features.shape == (32, 8, 8, 8)
    logits, iou = cubes.decode(features, np.array([[BALL_CENTRE]]), np.ones((1, 1)))
    assert logits.shape == (1, 32, 32, 32) and iou.shape == (1,)
    assert dice(logits[0].numpy() > 0, ball) >= 0.8
    assert iou[0] >= 0.75
    refined, refined_iou = cubes.decode(features, np.array([[BALL_CENTRE]]), np.ones((1, 1)), logits)
    assert dice(refined[0].numpy() > 0, ball) >= 0.8 and 0 <= refined_iou[0] <= 1


def test_ball_prototype_peaks_at_the_moved_ball(cubes):
    cube, ball = ball_cube()
    inside = F.avg_pool3d(torch.as_tensor(ball, dtype=torch.float32)[None, None], 7, 1, 3)[0, 0].numpy() > 0.999
    prototype = unit_prototype(cubes.encode(cube), inside)
    move = lambda a: np.ascontiguousarray(np.roll(np.transpose(a[::-1, :, ::-1], (2, 0, 1)), 3, axis=1))  # noqa: E731
    moved_ball = move(ball)
    score = similarity(prototype, cubes.encode(move(cube)))
    assert np.linalg.norm(np.unravel_index(score.argmax(), score.shape) - cell_of(moved_ball)) <= 1.5
    coverage = F.adaptive_avg_pool3d(torch.as_tensor(moved_ball, dtype=torch.float32)[None, None], 8)[0, 0]
    assert score.max() >= 0.9 and score[coverage.numpy() == 0].max() <= score.max() - 0.3


def test_batched_prompts_give_one_mask_each_on_the_slice_grid(slices):
    image, disc = disc_image()
    slice_ = image[:, 20:116]                                 # 128 × 96 slice of 1 × 1.5 mm pixels
    embeddings = slices.encode([slice_] * 3, (1.0, 1.5))
    boxes = np.array([[25.0, 15.0, 75.0, 65.0], [0.0, 90.0, 40.0, 127.0], [60.0, 100.0, 95.0, 127.0]])
    logits, iou = slices.decode(embeddings, boxes_xy=boxes)
    assert logits.shape == (3, 128, 96) and iou.shape == (3,)
    assert np.all((iou >= 0) & (iou <= 1)) and len(np.unique(np.round(iou, 6))) == 3
    assert dice(logits[0].numpy() > 0, disc[:, 20:116]) >= 0.8
    features = torch.stack([e.features for e in embeddings])
    raw_logits, raw_iou = slices._decode(features, torch.as_tensor(boxes, dtype=torch.float32), None, None)
    assert raw_logits.shape == (3, 1, SIZE, SIZE) and raw_iou.shape == (3, 1)


def test_prompts_without_a_positive_give_an_empty_mask(slices, cubes):
    image, _ = disc_image()
    logits, iou = slices.decode(slices.encode([image], (1.0, 1.0)), points_xy=np.array([[[70.0, 40.0]]]),
                                point_labels=np.zeros((1, 1)))
    assert not (logits > 0).any() and iou[0] == 0
    cube, _ = ball_cube()
    points = np.array([[BALL_CENTRE], [(2.0, 2.0, 2.0)]])
    logits, iou = cubes.decode(cubes.encode(cube), points, np.array([[0], [1]]))
    assert logits.shape == (2, 32, 32, 32) and iou.shape == (2,)
    assert not (logits[0] > 0).any() and iou[0] == 0 and (logits[1] > 0).any()


def test_cube_of_the_wrong_shape_or_values_is_refused(cubes):
    with pytest.raises(ValueError, match="32³"):
        cubes.encode(np.zeros((16, 32, 32), dtype=np.float32))
    cube = np.zeros((32, 32, 32), dtype=np.float32)
    cube[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        cubes.encode(cube)
