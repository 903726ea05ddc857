"""Calibration from annotated images (seediff.calibrate): observations from real masks of the bundled model on
procedural scenes, the fit, shrinkage towards the defaults, applying it, and the calibration file."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from seediff.calibrate import (
    Calibration, FitPrior, LabelCalibration, Observation, apply_calibration, calibrated_config, class_iou, fit,
    is_kept, knob_grid, load_calibration, mask_knob, save_calibration,
)
from seediff.calibration_data import observe_photo
from seediff.masks import ClassMasks
from seediff.methods import CONFIGS, SeeDiffConfig
from seediff.predictor import SeeDiffPredictor
from seediff.prompts import class_prompt
from seediff.testing.shapes import SHAPES, SceneConfig, make_scene

WORDS = list(SHAPES)


@pytest.fixture(scope="module")
def shapes_pipe():
    from seediff.pipeline import load_model

    model = load_model("builtin:shapes", device="cpu")
    model.pipe.set_progress_bar_config(disable=True)
    return model


def _observations(pipe, scenes, truth=lambda s: s.class_masks()):
    """Observations of every shape word on each scene (every word prompted and presence decided, as the backend
    does), the model's mask threshold and its P(present) threshold."""
    out, default, presence = [], None, None
    for scene in scenes:
        predictor = SeeDiffPredictor.from_model(pipe)
        predictor.set_image(scene.image, class_prompt(WORDS), mode="noise", t=100)
        obs, default, presence = observe_photo(predictor, WORDS, truth(scene))
        out += obs
    return out, default, presence


def _shifted(seeds):
    return [make_scene(s, SceneConfig(radius=(3.0, 4.5))) for s in seeds]


# ---- observations -----------------------------------------------------------------------------------
def test_observations_compare_real_proposals_with_the_annotation(shapes_pipe):
    scene = make_scene(123_456, n_objects=2)
    obs, default, presence = _observations(shapes_pipe, [scene])
    assert default == 0.6 and len(knob_grid(default)) == len(obs[0].scores)
    assert presence == shapes_pipe.defaults.presence.threshold
    assert all(0 < o.presence < 1 for o in obs) and sum(o.best for o in obs) == 1
    assert max(obs, key=lambda o: o.presence).best
    assert {o.word for o in obs if o.present} == set(scene.classes)
    pixels = scene.image.shape[0] * scene.image.shape[1]
    for o in obs:
        assert o.gt == pytest.approx(scene.class_mask(o.word).sum() / pixels)
        assert all(0 <= i <= min(p, o.gt) + 1e-9 for i, p in zip(o.inter, o.pred))
        assert all((p > 0) == (s > 0) for p, s in zip(o.pred, o.scores))  # a score only for a proposed region
    present = [o for o in obs if o.present]
    assert max(o.iou(knob_grid(default).index(default)) for o in present) > 0.5  # the model finds its shapes


def test_class_iou_by_hand():
    a = Observation("circle", 0.2, (0.5,), (0.3,), (0.2,))   # IoU 0.2 / 0.3
    b = Observation("circle", 0.0, (0.4,), (0.1,), (0.0,))   # spurious: adds 0.1 to the union
    assert class_iou([a], 0) == pytest.approx(0.2 / 0.3)
    assert class_iou([a, b], 0) == pytest.approx(0.2 / 0.4)
    assert class_iou([a, b], 0, keep=lambda o: o.scores[0] > 0.45) == pytest.approx(0.2 / 0.3)
    assert np.isnan(class_iou([Observation("x", 0.0, (0.0,), (0.0,), (0.0,))], 0))
    with pytest.raises(ValueError, match="of one length"):
        Observation("x", 0.0, (0.1, 0.2), (0.0,), (0.0,))


# ---- fit and shrinkage ---------------------------------------------------------------------------------
def test_no_change_below_the_minimum_evidence(shapes_pipe):
    obs, default, presence = _observations(shapes_pipe, _shifted(range(700, 703)))  # at most 6 drawn objects
    calibration = fit(obs, "seediff", default, presence_default=presence)
    assert calibration.is_identity and calibration.mask_value is None
    assert all(c.n < FitPrior().min_examples for c in calibration.labels.values())


def test_five_odd_annotations_never_make_things_worse(shapes_pipe):
    """An annotator who swaps the labels on 5 tasks (circle drawn as square …): nothing moves, proposals equal."""
    swap = {"circle": "square", "square": "triangle", "triangle": "circle"}
    odd = lambda s: {swap[w]: m for w, m in s.class_masks().items()}  # noqa: E731
    obs, default, presence = _observations(shapes_pipe, _shifted(range(710, 715)), truth=odd)
    calibration = fit(obs, "seediff", default, presence_default=presence)
    assert calibration.is_identity
    # Even with the evidence floor lowered, shrinkage and the margin keep a handful of odd examples harmless.
    lenient = fit(obs, "seediff", default, prior=FitPrior(min_examples=1), presence_default=presence)
    scenes = _shifted(range(720, 730))
    before = after = 0.0
    for scene in scenes:
        predictor = SeeDiffPredictor.from_model(shapes_pipe)
        predictor.set_image(scene.image, class_prompt(WORDS), mode="noise", t=100)
        base = shapes_pipe.defaults.config("seediff")
        plain = predictor.predict(WORDS, config=base)
        tuned = apply_calibration(lenient, predictor.predict(WORDS, config=calibrated_config(lenient, "seediff", base),
                                                             presence_thresholds=lenient.presence_thresholds()))
        assert np.array_equal(apply_calibration(calibration, plain).masks, plain.masks)
        for w in WORDS:
            gt = scene.class_mask(w)
            union = lambda m: (m | gt).sum() or 1  # noqa: E731
            before += (plain.mask(w) & gt).sum() / union(plain.mask(w))
            after += (tuned.mask(w) & gt).sum() / union(tuned.mask(w))
    assert after >= before - 1e-9


def test_consistent_evidence_moves_the_settings_and_helps_on_new_scenes(shapes_pipe):
    """20 annotated shifted scenes: the fit moves away from the defaults and does not lose IoU on 20 others."""
    fit_scenes, test_scenes = _shifted(range(800, 820)), _shifted(range(820, 840))
    obs, default, presence = _observations(shapes_pipe, fit_scenes)
    calibration = fit(obs, "seediff", default, images=20, presence_default=presence)
    assert not calibration.is_identity and calibration.images == 20
    unshrunk = fit(obs, "seediff", default, prior=FitPrior(strength=0.0, margin=0.0), presence_default=presence)
    test_obs, _, _ = _observations(shapes_pipe, test_scenes)
    grid = knob_grid(default)

    def held_out_miou(cal: Calibration) -> float:
        i = grid.index(cal.mask_value if cal.mask_value is not None else default)
        labels = cal.labels

        def keep(o):
            c = labels.get(o.word)
            p = presence if c is None or c.presence_threshold is None else c.presence_threshold
            return o.presence_kept(p) and is_kept(o.scores[i], c.threshold if c else 0.0)

        return float(np.nanmean([class_iou([o for o in test_obs if o.word == w], i, keep) for w in WORDS]))

    identity = Calibration("seediff", "pamr_threshold")
    assert held_out_miou(calibration) >= held_out_miou(identity) - 0.005
    # Shrinkage puts every fitted value between the default and the unshrunk fit. The region-score threshold is
    # fitted on what the presence decision keeps, so it is comparable only where both presence thresholds agree
    # (builtin:shapes' 4th stage: a label's shrunk P threshold 0.62 vs 0.87 unshrunk gave score thresholds 0.05 vs 0).
    for w, c in calibration.labels.items():
        u = unshrunk.labels[w]
        if c.presence_threshold == u.presence_threshold:
            assert 0.0 <= c.threshold <= u.threshold + 1e-9
        assert 0.0 <= c.threshold <= 1.0
        if c.presence_threshold is not None:
            lo, hi = sorted([presence, u.presence_threshold])
            assert lo - 1e-9 <= c.presence_threshold <= hi + 1e-9


def test_fit_rejects_observations_of_another_grid():
    obs = [Observation("circle", 0.1, (0.5,) * 3, (0.1,) * 3, (0.05,) * 3)]
    with pytest.raises(ValueError, match="not made on the grid"):
        fit(obs, "seediff", 0.6)
    with pytest.raises(ValueError, match="unknown method"):
        fit(obs, "sam", 0.6)
    with pytest.raises(ValueError, match="min_examples must be an int >= 1"):
        FitPrior(min_examples=0)


# ---- applying it -----------------------------------------------------------------------------------------
def _masks():
    m = np.zeros((3, 4, 4), bool)
    m[0, :2], m[1, 2:], m[2, 0, 0] = True, True, True
    return ClassMasks(WORDS, m, [0.9, 0.3, 0.5], method="seediff", config=SeeDiffConfig())


def test_apply_drops_low_scores_rescores_the_rest_and_keeps_clicked_labels():
    cal = Calibration("seediff", "pamr_threshold", 0.7, {
        "circle": LabelCalibration(20, 0.2, ((0.0, 1.0), (0.1, 0.8))), "square": LabelCalibration(20, 0.4)})
    out = apply_calibration(cal, _masks())
    assert out.masks[0].any() and out.scores[0] == pytest.approx(0.1 + 0.9 * 0.7)
    assert not out.masks[1].any() and out.scores[1] == 0 and "calibrated threshold 0.4" in out.reasons["square"]
    assert out.masks[2].any() and out.scores[2] == pytest.approx(0.5)  # no calibration for triangle
    assert apply_calibration(cal, _masks(), keep={"square"}).masks[1].any()
    assert apply_calibration(None, _masks()) is not None
    assert calibrated_config(cal, "seediff", SeeDiffConfig()).pamr_threshold == 0.7
    assert calibrated_config(cal, "seediff", SeeDiffConfig(pamr_iterations=0)).threshold == 0.7
    assert calibrated_config(cal, "daam", CONFIGS['daam']()) == CONFIGS['daam']()  # fitted for another method
    assert mask_knob("daam", CONFIGS['daam']()) == "tau"


def test_calibration_file_round_trip_and_errors(tmp_path):
    cal = Calibration("seediff", "pamr_threshold", 0.7,
                      {"circle": LabelCalibration(20, 0.2, ((0.0, 0.5, 1.0), (0.1, 0.4, 0.8)), 0.35)}, 20)
    save_calibration(cal, tmp_path / "c.json")
    back = load_calibration(tmp_path / "c.json")
    assert back == cal and back.digest == cal.digest and len(cal.digest) == 8
    assert back.presence_thresholds() == {"circle": 0.35}
    assert dataclasses.replace(cal, mask_value=0.8).digest != cal.digest
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="bad.json: not a usable calibration file"):
        load_calibration(tmp_path / "bad.json")
    broken = cal.to_dict()
    broken["labels"]["circle"]["knots"] = [[1.0, 0.0], [0.1, 0.2]]
    (tmp_path / "knots.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="x increasing"):
        load_calibration(tmp_path / "knots.json")


def test_per_label_presence_thresholds_replace_the_models(shapes_pipe):
    scene = make_scene(123_457, n_objects=1)
    predictor = SeeDiffPredictor.from_model(shapes_pipe)
    predictor.set_image(scene.image, class_prompt(WORDS), mode="noise", t=100)
    default = predictor.predict(WORDS)
    everything = predictor.predict(WORDS, presence_thresholds={w: 0.0 for w in WORDS})
    assert all(everything.mask(w).any() or w in everything.reasons for w in WORDS)
    assert not any("judged absent" in r for r in everything.reasons.values())
    strict = predictor.predict(WORDS, presence_thresholds={w: 1.0 for w in WORDS})  # only the best survives
    kept = [w for w in WORDS if "judged absent" not in strict.reasons.get(w, "")]
    assert len(kept) == 1 and kept[0] in default.labels
    assert predictor.predict(WORDS, presence_thresholds={}).masks.tolist() == default.masks.tolist()
    o = Observation("circle", 0.1, (0.5,), (0.1,), (0.05,), 0.3, True)
    assert Observation.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    assert o.presence_kept(0.9) and not dataclasses.replace(o, best=False).presence_kept(0.9)
    assert Observation.from_dict(Observation("x", 0.0, (0.0,), (0.0,), (0.0,)).to_dict()).presence_kept(0.9)
