"""Presence by default (seediff.evidence): features, the fitted model, the predictor's decision, the switches."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import seediff
from seediff.defaults import parse_model_defaults
from seediff.evidence import (IOU_FEATURES, PRESENCE_FEATURES, REGION_FEATURES, LogisticModel, PresenceModel,
                              RegionModel, decide, edge_disagreement, fit_logistic, fit_region_model, iou_rows,
                              loo_gains, loo_prompts, prior_shift, region_edges, region_shape)
from seediff.pipeline import BUILTIN_MODELS
from seediff.testing.shapes import SHAPES, make_scene
from seediff.testing.shifted import ShiftedConfig, make_shifted_scene, shifted_split, world_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return seediff.load_model("builtin:shapes", device="cpu")


def test_fit_logistic_separates_and_round_trips():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + 0.5 * x[:, 2] > 0).astype(float)
    m = fit_logistic(x, y, PRESENCE_FEATURES)
    assert ((m.predict(x) > 0.5) == (y > 0.5)).mean() > 0.95
    again = LogisticModel.from_dict(json.loads(json.dumps(m.to_dict())))
    np.testing.assert_allclose(again.predict(x), m.predict(x))
    with pytest.raises(ValueError, match="targets must be in"):
        fit_logistic(x, y + 1, PRESENCE_FEATURES)
    with pytest.raises(ValueError, match=r"rows must be \[N, 3\]"):
        m.logit(x[:, :2])


def test_decide_keeps_best_forced_and_threshold():
    assert decide(["a", "b", "c"], [0.9, 0.1, 0.3], 0.25) == ["a", "c"]
    assert decide(["a", "b"], [0.1, 0.2], 0.5) == ["b"]  # the best is always kept with two or more classes
    assert decide(["a"], [0.1], 0.5) == []  # one class: the threshold alone decides
    assert decide(["a", "b"], [0.9, 0.1], 0.5, forced=["b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="2 probabilities for 3 classes"):
        decide(["a", "b", "c"], [0.1, 0.2], 0.5)


def test_loo_prompts_and_gains():
    assert loo_prompts(["circle", "square"]) == ["a photo of a circle and a square", "a photo of a square",
                                                "a photo of a circle"]
    assert loo_prompts(["circle"]) == ["a photo of a circle", "a photo of"]
    assert loo_prompts(["circle"], "{}") == ["a circle", "a photo"]
    np.testing.assert_allclose(loo_gains([0.5, 0.75, 0.5]), [0.5, 0.0])
    with pytest.raises(ValueError, match="at least one leave-one-out"):
        loo_gains([0.5])


def test_region_shape_counts_pieces_and_outline_against_a_disc():
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2
    pieces, ratio = region_shape(disc)
    assert pieces == 0 and 0.95 < ratio < 1.1  # a disc's outline is a disc's
    cut = disc.copy(); cut[:, 30:34] = False
    assert region_shape(cut)[0] == 1 and region_shape(cut)[1] > 1.5  # two halves: one extra piece, longer outline
    comb = np.zeros((64, 64), bool); comb[10:50, 10:50:4] = True  # ten thin bars
    assert region_shape(comb) == (9, pytest.approx(region_shape(comb)[1])) and region_shape(comb)[1] > 3


def _disc_photo(size=96, r=20, centre=(48, 48), colour=(200, 40, 40), bg=(30, 90, 160)):
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < r ** 2
    img = np.empty((size, size, 3), np.uint8); img[:] = bg; img[disc] = colour
    return img, disc


def test_edge_disagreement_is_zero_on_the_object_and_grows_off_it():
    """The true mask of a flat object has no disagreeing edge pixel; a shifted, shrunken or grown mask does; a
    mask on pure noise is a coin flip; a region with nothing around it gives no evidence (0.5)."""
    img, disc = _disc_photo()
    assert edge_disagreement(img, disc) == 0.0
    assert edge_disagreement(img, np.roll(disc, 4, axis=1)) > 0.15  # off by 4 px: both sides disagree
    _, small = _disc_photo(r=14)
    _, big = _disc_photo(r=26)
    assert edge_disagreement(img, small) > 0.3  # no colour edge along its outline (the object goes on)
    assert edge_disagreement(img, big) > 0.3  # likewise: background on both sides of its outline
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert 0.35 < edge_disagreement(noise, disc) < 0.65
    assert edge_disagreement(img, np.ones((96, 96), bool)) == 0.5
    assert edge_disagreement(img.mean(2).astype(np.uint8), disc) > 0.3  # the two colours are equally bright
    assert edge_disagreement(np.where(disc, 220, 40).astype(np.uint8), disc) == 0.0  # a grey photo works too
    with pytest.raises(ValueError, match="empty"):
        edge_disagreement(img, np.zeros((96, 96), bool))
    with pytest.raises(ValueError, match="differ in size"):
        edge_disagreement(img, disc[:50])


def test_edge_disagreement_on_a_huge_region_is_judged_at_a_bounded_size():
    """A region whose box exceeds EDGE_MAX_SIDE is judged on a resized box: same verdicts as at full size."""
    img, disc = _disc_photo(size=2400, r=1000, centre=(1200, 1200))
    assert edge_disagreement(img, disc) < 0.01
    assert edge_disagreement(img, np.roll(disc, 40, axis=1)) > 0.15
    # region_edges resizes a photo of another size to the masks' once
    np.testing.assert_allclose(region_edges(img[::4, ::4], disc[None, ::4, ::4]), [0.0], atol=0.02)


def test_region_model_fits_ranks_and_round_trips():
    """Regions right by presence and by edges score above right-object regions with ragged edges, which score
    above wrong objects; iou_rows caps the object log-odds at 0 (only doubt counts)."""
    rng = np.random.default_rng(1)
    n = 400
    rows = rng.normal(size=(n, len(REGION_FEATURES)))
    right = rows[:, 0] + 0.5 * rows[:, 1] > 0
    edges = np.where(right, rng.uniform(0, 0.3, n), rng.uniform(0.1, 0.8, n))
    iou = np.where(right, 1.0 - edges / 2, rng.uniform(0, 0.3, n))
    model = fit_region_model(rows, edges, iou)
    est = model.predict(rows, edges)
    assert est[right].mean() > est[~right].mean() + 0.3
    ok = right & (edges < 0.1); ragged = right & (edges > 0.2)
    assert est[ok].mean() > est[ragged].mean()
    again = RegionModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(again.predict(rows, edges), est)
    np.testing.assert_allclose(iou_rows([3.0, -2.0], [0.1, 0.4]), [[0.0, 0.1], [-2.0, 0.4]])
    with pytest.raises(ValueError, match="2 object logits for 1"):
        iou_rows([1.0, 2.0], [0.1])
    with pytest.raises(ValueError, match="IoU model's features"):
        RegionModel(model.object, dataclasses.replace(model.iou, features=("a", "b")))


def test_a_region_model_of_an_older_release_is_left_out_with_a_warning():
    """A seediff.json fitted by an older release (one logistic IoU model over 4 features) still loads: presence
    works, region scores fall back to the mask method's until refitted."""
    data = json.loads((BUILTIN_MODELS["builtin:shapes"] / "seediff.json").read_text())["presence"]
    old = dict(data, region=dict(features=["presence_logit", "attention_inside", "area", "log_classes_kept"],
                                 mean=[0.0] * 4, scale=[1.0] * 4, weights=[1.0] * 4, bias=0.0))
    with pytest.warns(UserWarning, match="refitted"):
        pm = PresenceModel.from_dict(old)
    assert pm.region is None and pm.presence == PresenceModel.from_dict(data).presence


def test_shipped_presence_model_parses():
    data = json.loads((BUILTIN_MODELS["builtin:shapes"] / "seediff.json").read_text())
    defaults = parse_model_defaults(data)
    assert isinstance(defaults.presence, PresenceModel) and isinstance(defaults.presence.region, RegionModel)
    assert tuple(defaults.presence.region.object.features) == REGION_FEATURES
    assert tuple(defaults.presence.region.iou.features) == IOU_FEATURES
    bad = dict(data, presence=dict(data["presence"], threshold=1.5))
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        parse_model_defaults(bad)


def test_prior_shift_for_larger_label_sets_and_feature_subsets():
    """A model fitted with 1.5 of 3 classes present: 100 labels lower each logit by log(1.5/98.5) − log(1.5/1.5);
    label sets no larger than the dev one are left alone; a model may use a named subset of the features."""
    lm = LogisticModel(PRESENCE_FEATURES[1:], (0.0, 0.0), (1.0, 1.0), (1.0, 2.0), 0.5)
    pm = PresenceModel(1, 0.2, lm, fitted_classes=3, fitted_present=1.5)
    assert prior_shift(pm, 100) == pytest.approx(np.log(1.5 / 98.5))
    assert prior_shift(pm, 3) == prior_shift(pm, 2) == prior_shift(pm, None) == 0.0
    assert prior_shift(PresenceModel(1, 0.2, lm), 100) == 0.0  # no fitted prior: no shift
    again = PresenceModel.from_dict(json.loads(json.dumps(pm.to_dict())))
    assert again == pm and prior_shift(again, 10) == pytest.approx(np.log(1.5 / 8.5))
    with pytest.raises(ValueError, match="fitted_present must be in"):
        PresenceModel(1, 0.2, lm, fitted_classes=3, fitted_present=3.0)
    bad = LogisticModel(("log_attention_peak", "colour"), (0.0, 0.0), (1.0, 1.0), (1.0, 2.0), 0.5)
    with pytest.raises(ValueError, match="presence features must be distinct names"):
        PresenceModel(1, 0.2, bad)


def test_predictor_drops_absent_classes_by_default(model):
    """Twenty one-object scenes of the benchmark split, every class asked: the object's class is kept with a good
    mask, absent classes get no region (a reason instead) in most scenes; presence=False brings them back."""
    kept_good = clean = 0
    for seed in range(100_000, 100_020):
        scene = make_scene(seed, n_objects=1)
        predictor = seediff.SeeDiffPredictor.from_model(model)
        predictor.set_image(scene.image, "a photo of a circle and a square and a triangle")
        out = predictor.predict(list(SHAPES))
        present = scene.classes[0]
        mask, truth = out.mask(present), scene.class_mask(present)
        kept_good += (mask & truth).sum() / (mask | truth).sum() > 0.8
        assert 0.0 <= out.scores[out.labels.index(present)] <= 1.0
        absent = [c for c in SHAPES if c != present]
        clean += not any(out.mask(c).any() for c in absent)
        assert all("judged absent" in out.reasons[c] for c in absent if not out.mask(c).any() and c in out.reasons)
    # measured 17 and 18 of 20 (100000: the circle's mask lands off the circle; 100007: a spurious circle takes
    # part of the square; 100016: a spurious triangle); the 160-scene aggregate is in docs/QUALITY.md
    # (bench/presence.py): mIoU 0.915, 91 % of regions IoU ≥ 0.8
    assert kept_good >= 16 and clean >= 16, (kept_good, clean)
    every = predictor.predict(list(SHAPES), presence=False)  # the switch: every class segmented
    assert sum(m.any() for m in every.masks) > 1


def test_user_points_keep_a_class(model):
    scene = make_scene(100_003, n_objects=1)
    absent = next(c for c in SHAPES if c not in scene.classes)
    predictor = seediff.SeeDiffPredictor.from_model(model)
    predictor.set_image(scene.image, "a photo of a circle and a square and a triangle")
    out = predictor.predict(list(SHAPES), points={absent: [(3.5, 3.5, 1)]})
    assert absent not in out.reasons or "judged absent" not in out.reasons[absent]


def test_shifted_world_is_deterministic_and_exact():
    a, b = make_shifted_scene(800_001), make_shifted_scene(800_001)
    assert (a.image == b.image).all() and a.caption == b.caption
    assert a.image.shape == (128, 128, 3) and 1 <= len(a.objects) <= 3
    assert len(set(a.classes)) == len(a.classes)  # distinct shapes by default
    for obj, mask in zip(a.objects, a.instance_masks):
        assert mask.any()
    assert not (a.instance_masks.sum(0) > 1).any()
    assert len(shifted_split("dev", 3)) == 3 and len(world_split("test", 2)) == 4
    with pytest.raises(ValueError, match="split must be one of"):
        shifted_split("train", 1)
    with pytest.raises(ValueError, match="objects must satisfy"):
        ShiftedConfig(objects=(0, 4))


def test_label_sets_of_any_size_are_read_in_groups_in_one_call(model, monkeypatch):
    """100 labels on a 32-token model: the classes are split into prompts that fit, read in one batched UNet
    call; the shapes present still get their regions, and every label gets a mask or a reason."""
    calls = []
    real = seediff.modes.read_photo

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(seediff.modes, "read_photo", counting)
    words = list(SHAPES) + [f"thing{i}" for i in range(97)]
    scene = make_scene(200_004, n_objects=2)
    predictor = seediff.SeeDiffPredictor.from_model(model)
    predictor.set_image(scene.image)
    out = predictor.predict(words)
    assert len(calls) == 1 and isinstance(calls[0], list) and len(calls[0]) > 10  # one batched read of all groups
    assert out.labels == words and out.masks.shape == (100, 32, 32)
    assert not (out.masks.sum(0) > 1).any()  # still one label per pixel
    for c in scene.classes:
        mask, truth = out.mask(c), scene.class_mask(c)
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8, c
    # the 97 other words are judged absent (the prior of a 100-label set, no attention-mass feature)
    assert [w for i, w in enumerate(words) if out.masks[i].any() and w not in scene.classes] == []
    assert all(out.masks[i].any() or w in out.reasons for i, w in enumerate(words))


def test_read_photo_with_several_prompts_matches_single_reads(model):
    scene = make_scene(200_004, n_objects=2)
    prompts = ["a photo of a circle and a square", "a photo of a triangle"]
    batched = seediff.read_photo(model.pipe, scene.image, prompts)
    for i, p in enumerate(prompts):
        one = seediff.read_photo(model.pipe, scene.image, p).maps
        got = batched.maps_for(i)
        assert got.token_ids == one.token_ids and got.image is not None
        for name in one.cross:
            np.testing.assert_allclose(got.cross[name].numpy(), one.cross[name].numpy(), atol=1e-4)


def test_cli_annotate_presence_switch(tmp_path):
    """`seediff annotate` decides presence by default (absent shapes get no annotation); --no-presence annotates
    every class."""
    from typer.testing import CliRunner

    from seediff.cli import app
    from seediff.coco import read_coco

    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image
    for seed in (100_000, 100_001, 100_002):
        Image.fromarray(make_scene(seed, n_objects=1).image).save(photos / f"s{seed}.png")
    counts = {}
    for flag in ("--presence", "--no-presence"):
        out = tmp_path / f"{flag}.json"
        r = CliRunner().invoke(app, ["annotate", str(photos), "--classes", *SHAPES, "--out", str(out), "--model",
                                     "builtin:shapes", "--device", "cpu", "--no-progress", flag])
        assert r.exit_code == 0, r.output
        counts[flag] = len(read_coco(out)["annotations"])
    assert counts["--presence"] <= 4 < counts["--no-presence"], counts  # one object per photo


def test_region_scores_rank_regions_by_their_true_iou(model):
    """Forty scenes of the independent generator's test split (not fitted on), every class asked through the
    predictor: the region scores rank the proposed regions by their IoU with the truth (Spearman) and put the
    wrong ones (IoU < 0.5) below the right ones."""
    spec = importlib.util.spec_from_file_location("seediff_bench_presence", ROOT / "bench" / "presence.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)

    scores, ious = [], []
    for scene in shifted_split("test", 40):
        predictor = seediff.SeeDiffPredictor.from_model(model)
        predictor.set_image(scene.image, "a photo of a circle and a square and a triangle")
        out = predictor.predict(list(SHAPES))
        for c, m, s in zip(out.labels, out.masks, out.scores):
            if m.any():
                truth = scene.class_mask(c)
                scores.append(float(s)); ious.append((m & truth).sum() / (m | truth).sum())
    scores, ious = np.array(scores), np.array(ious)
    wrong = ious < 0.5
    assert len(ious) > 60 and 0 < wrong.sum() < len(ious) / 3
    rho = bench.spearman(scores, ious)
    # measured 0.86 on these 40 scenes (86 regions, 9 wrong); the previous release's one logistic IoU model: 0.51.
    # All 100 test scenes: 0.89 (docs/QUALITY.md, bench/presence.py)
    assert rho > 0.75, rho
    assert scores[~wrong].mean() > scores[wrong].mean() + 0.3
