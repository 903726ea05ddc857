"""Seeds: exact Otsu on float maps (hand-computed, agrees with OpenCV on integer maps), fp16 safety,
SeeDiff's layer aggregation, fixed α, and user points/boxes → grid cells."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from seediff.seeds import (
    aggregate_layers, box_pixels, fixed_seeds, is_flat, minmax, otsu_seeds, otsu_threshold, otsu_thresholds,
    point_cells, user_prompts,
)


def test_otsu_hand_computed():
    # splits of [0, 1, 2, 6]: {0}|{1,2,6}: 1/4·3/4·3² = 1.6875; {0,1}|{2,6}: 1/4·3.5² = 3.0625;
    # {0,1,2}|{6}: 3/16·5² = 4.6875 → the upper class is {6}, threshold 2.
    assert otsu_threshold(torch.tensor([6.0, 0.0, 2.0, 1.0])) == 2.0
    # 2-D map, value order irrelevant
    x = torch.tensor([[0.1, 0.9], [0.12, 0.95]])
    assert otsu_threshold(x) == pytest.approx(0.12)


def test_otsu_thresholds_batched_equal_each_map_alone():
    """One sort and scan for K maps gives each map's own threshold exactly (hand value, ties, flat, integers)."""
    g = torch.Generator().manual_seed(3)
    maps = torch.stack([
        torch.tensor([6.0, 0.0, 2.0, 1.0, 0.0, 0.0]),  # hand-computed row of the test above, padded with ties
        torch.full((6,), 0.25),  # flat: its value
        torch.randint(0, 4, (6,), generator=g).float(),  # many ties
        torch.rand(6, generator=g) ** 2,
    ])
    got = otsu_thresholds(maps)
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert got.tolist() == [otsu_threshold(m) for m in maps]
    assert got[1] == 0.25
    assert torch.equal(otsu_thresholds(maps.reshape(4, 2, 3)), got)  # maps of any shape: one per leading index
    with pytest.raises(ValueError, match="NaN or inf"):
        otsu_thresholds(torch.tensor([[0.0, 1.0], [float("nan"), 1.0]]))


def test_otsu_known_bimodal_map_recovers_modes():
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(32, 32, dtype=torch.bool)
    truth[8:20, 4:28] = True
    x = torch.where(truth, 0.7 + 0.05 * torch.randn(32, 32, generator=g), 0.2 + 0.05 * torch.randn(32, 32, generator=g))
    assert torch.equal(x > otsu_threshold(x), truth)


@pytest.mark.parametrize("seed", range(5))
def test_otsu_matches_opencv_on_integer_maps(seed):
    """On integer-valued maps a 256-bin histogram is exact, so OpenCV's Otsu must give the same split."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(60, 15, 300), rng.normal(170, 25, 200)]).clip(0, 255).astype(np.uint8)
    t_cv, _ = cv2.threshold(x.reshape(20, 25), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ours = otsu_threshold(torch.from_numpy(x.astype(np.float32)))
    assert np.array_equal(x > ours, x > t_cv)


# fp16 values (exactly representable) on which squaring *in fp16* moves Otsu's split: the 0.6802 cell is
# upper class with fp16 squares, lower class with fp32 squares (found by search, kept as a regression case).
FP16_CASE = [0.29736328125, 0.276611328125, 0.79736328125, 0.386962890625, 0.9169921875, 0.41259765625,
             0.5537109375, 0.564453125, 0.50244140625, 0.2205810546875, 0.68017578125, 0.387939453125,
             0.315185546875, 0.50830078125, 0.9453125, 0.30078125]


def test_otsu_fp16_input_thresholded_in_fp32():
    """Guards against thresholding in fp16 (attention is often fp16): seeds must be computed in fp32."""
    x16 = torch.tensor(FP16_CASE, dtype=torch.float16)
    p16 = x16**2
    in_fp16 = p16 > otsu_threshold(p16)  # what an fp16 pipeline would do
    p64 = x16.double() ** 2
    ref = p64 > otsu_threshold(p64)  # fp64 reference on the same values
    assert not torch.equal(in_fp16, ref), "the case must discriminate fp16 from fp32 arithmetic"
    assert torch.equal(otsu_seeds(x16), ref)
    assert torch.equal(otsu_seeds(x16), otsu_seeds(x16.float()))


def test_otsu_edge_cases():
    assert not bool((torch.full((4, 4), 0.3) > otsu_threshold(torch.full((4, 4), 0.3))).any())  # flat: nothing above
    with pytest.raises(ValueError, match="NaN or inf"):
        otsu_threshold(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="non-empty"):
        otsu_threshold(torch.zeros(0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        otsu_threshold(np.zeros(3))


def test_minmax_and_flatness():
    assert torch.allclose(minmax(torch.tensor([2.0, 4.0, 3.0])), torch.tensor([0.0, 1.0, 0.5]))
    assert is_flat(torch.full((3, 3), 0.25)) and not bool(minmax(torch.full((3, 3), 0.25)).any())
    assert is_flat(torch.tensor([0.5, 0.50001]))  # range 1e-5 ≤ 1e-4 · 0.5
    assert not is_flat(torch.tensor([0.5, 0.51]))
    per_row = minmax(torch.tensor([[0.0, 2.0], [1.0, 1.0]]), dims=(1,))
    assert torch.equal(per_row, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))


def test_aggregate_layers_hand_computed():
    layers = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[3.0, 3.0], [3.0, 3.0]], [[10.0, 10.0], [10.0, 40.0]]])
    # layer 0 → [0, 1/3, 2/3, 1]; layer 1 flat → 0; layer 2 → [0, 0, 0, 1]; sum [0, 1/3, 2/3, 2] → /2
    expected = torch.tensor([[0.0, 1 / 6], [1 / 3, 1.0]])
    assert torch.allclose(aggregate_layers(layers), expected)
    with pytest.raises(ValueError, match=r"\[L, h, w\]"):
        aggregate_layers(torch.zeros(4, 4))


def test_fixed_seeds_alpha():
    m = torch.tensor([0.1, 0.45, 0.5, 0.55, 1.0])
    assert fixed_seeds(m, 0.5).tolist() == [False, False, False, True, True]
    assert fixed_seeds(m, 0.4).tolist() == [False, True, True, True, True]
    with pytest.raises(ValueError, match="alpha"):
        fixed_seeds(m, 1.0)


def test_point_cells_hand_computed():
    # 512×512 image, 16×16 grid: a cell is 32 px; (x=40, y=100) → column 1, row 3 → 3·16 + 1
    assert point_cells(np.array([[40.0, 100.0]]), (512, 512), (16, 16)).tolist() == [49]
    # non-square: 300×600 image (H×W) on a 3×6 grid, 100 px cells; the far edge maps into the last cell
    assert point_cells(np.array([[599.0, 0.0], [600.0, 300.0], [0, 0]]), (300, 600), (3, 6)).tolist() == [5, 17, 0]


def test_box_pixels_are_the_pixel_centres_inside_any_box():
    cells = box_pixels(np.array([[0, 0, 256, 128]]), (512, 512), (4, 4))  # 128 px pixels, centres at 64, 192, …
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, :2] = True
    assert torch.equal(cells, expected)
    assert box_pixels(np.zeros((0, 4)), (512, 512), (4, 4)) is None
    two = box_pixels(np.array([[0, 0, 100, 100], [400, 400, 512, 512]]), (512, 512), (4, 4))
    assert two.sum() == 2 and bool(two[0, 0]) and bool(two[3, 3])


def test_user_prompts_parsing():
    p = user_prompts(["dog"], [(10, 20), (30, 40, 0), (50, 60, 1)], [0, 0, 100, 100], (128, 128))["dog"]
    assert p.positive.tolist() == [[10, 20], [50, 60]] and p.negative.tolist() == [[30, 40]]
    assert p.boxes.tolist() == [[0, 0, 100, 100]]
    both = user_prompts(["dog", "cat"], {"cat": [(5, 5)]}, None, (64, 64))
    assert both["dog"].empty and len(both["cat"].positive) == 1


@pytest.mark.parametrize(
    "classes, points, boxes, match",
    [
        (["dog", "cat"], [(1, 1)], None, "must be a dict"),
        (["dog"], {"cow": [(1, 1)]}, None, "not among the classes"),
        (["dog"], [(1, 1, 2)], None, "must be 1 .positive. or 0"),
        (["dog"], [(200, 1)], None, "outside the 100x50 image"),
        (["dog"], [(1, 2, 3, 4)], None, r"rows \(x, y\)"),
        (["dog"], None, [10, 10, 5, 20], "x0 < x1"),
        (["dog"], None, [200, 0, 300, 10], "outside"),
        (["dog"], None, [[1, 2, 3]], r"\(x0, y0, x1, y1\)"),
    ],
)
def test_user_prompts_errors(classes, points, boxes, match):
    with pytest.raises(ValueError, match=match):
        user_prompts(classes, points, boxes, (50, 100))
