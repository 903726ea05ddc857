"""SeeDiffPredictor on the tiny pipeline: generate/set_image once, predict many times; RuntimeError when misused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import seediff
import seediff.modes
from seediff.predictor import SeeDiffPredictor
from seediff.prompts import class_prompt
from seediff.segment import segment


@pytest.fixture()
def predictor(tiny_pipe):
    return SeeDiffPredictor(tiny_pipe)


def _photo(h: int = 37, w: int = 53) -> np.ndarray:
    """An odd-size RGB photo: a red disc on blue."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 3) ** 2
    return np.where(disc[..., None], [210, 30, 30], [30, 40, 200]).astype(np.uint8)


def test_predict_before_image_raises(predictor):
    with pytest.raises(RuntimeError, match=r"no image is set: call .generate\(prompt, seed\) or .set_image"):
        predictor.predict(["dog"])
    with pytest.raises(RuntimeError, match="no image is set"):
        predictor.image
    assert not predictor.is_image_set and "no image" in repr(predictor)


def test_generate_then_predict_many(predictor):
    img = predictor.generate("a photo of a dog and a cat", seed=1, steps=3, height=32, width=32)
    assert isinstance(img, Image.Image) and img.size == (32, 32)
    a = predictor.predict(["dog", "cat"])
    assert a.masks.shape == (2, 32, 32) and a.masks.dtype == bool and a.labels == ["dog", "cat"]
    b = predictor.predict(["dog", "cat"])
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.scores, b.scores)
    assert any(k[0] == "self_hat" for k in predictor._cache)  # the second query reused the normalised attention
    # same answer as calling segment on the stored maps directly
    assert np.array_equal(segment(predictor.maps, ["dog", "cat"]).masks, a.masks)
    absent = predictor.predict("car", method="daam")
    assert not absent.masks.any() and absent.reasons["car"] == "'car' is not in the prompt"
    # a negative click where the dog mask is changes that mask
    if a.masks[0].any():
        y, x = np.argwhere(a.masks[0])[0]
        clicked = predictor.predict("dog", points=[(x + 0.5, y + 0.5, 0)])
        assert not np.array_equal(clicked.masks[0], a.masks[0])


def test_generate_is_deterministic(tiny_pipe):
    p1, p2 = SeeDiffPredictor(tiny_pipe), SeeDiffPredictor(tiny_pipe)
    i1 = p1.generate("a photo of a dog", seed=3, steps=2, height=32, width=32)
    i2 = p2.generate("a photo of a dog", seed=3, steps=2, height=32, width=32)
    assert np.array_equal(np.asarray(i1), np.asarray(i2))
    assert np.array_equal(p1.predict("dog").masks, p2.predict("dog").masks)


def test_set_image_with_prompt_masks_at_photo_size(predictor):
    photo = _photo()
    predictor.set_image(photo, prompt="a photo of a dog on the grass")
    r = predictor.predict(["dog", "grass"])
    assert r.masks.shape == (2, 37, 53)
    assert predictor.image.size == (53, 37)
    boxed = predictor.predict("dog", boxes=[(0, 0, 20, 37)])
    assert not boxed.masks[0][:, 21:].any()  # cut to the box


def test_set_image_without_prompt_reads_once_per_class_list(predictor, monkeypatch):
    calls = []
    real = seediff.modes.read_photo

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(seediff.modes, "read_photo", counting)
    predictor.set_image(Image.fromarray(_photo(32, 32)), mode="noise", t=200)
    assert predictor.maps is None and calls == []
    r1 = predictor.predict(["dog", "cat"], presence=False)  # every class segmented (the random model's
    r2 = predictor.predict(["dog", "cat"], method="diffumask", presence=False)  # presence is noise)
    predictor.predict(["car"])  # presence on: its leave-one-out row ('' for one class) rides in the same read
    assert calls == ["a photo of a dog and a cat", ["a photo of a car", "a photo of"]]
    assert r1.masks.shape == r2.masks.shape == (2, 32, 32)
    assert "dog" not in r1.reasons or "flat" in r1.reasons["dog"]  # the words are in the prompt it made


def test_class_prompt_and_template_check(tiny_pipe):
    assert class_prompt(["dog", "cat"]) == "a photo of a dog and a cat"
    assert class_prompt(["tree"], "a picture of {}") == "a picture of a tree"
    with pytest.raises(ValueError, match="must contain"):
        SeeDiffPredictor(tiny_pipe, prompt_template="a photo")


def test_package_level_names():
    assert seediff.SeeDiffPredictor is SeeDiffPredictor
    assert seediff.ClassMasks.__name__ == "ClassMasks"
