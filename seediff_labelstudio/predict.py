"""One way to predict a Label Studio task, used by the backend (``/predict``) and by ``seediff preannotate``.

:class:`PredictOptions` holds every setting that changes the proposals (method, photo mode, t, steps, seed,
prompt template, drop_absent, presence, control type) and names them in one ``model_version``. Given the loaded
model, a photo and the label plan, :func:`read_photo_for` reads the photo once (the expensive part, which the backend caches),
:func:`task_masks` segments it and :func:`task_prediction` builds the Label Studio regions; :func:`predict_photo`
chains the three. The same task under the same options gives the same bytes on either path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from seediff.calibrate import Calibration, apply_calibration, calibrated_config, calibrated_version
from seediff.jobs.store import slug
from seediff.prompts import DEFAULT_TEMPLATE, check_template, class_prompt

from .labels import CONTROLS, LabelPlan, plan_results

__all__ = ["PredictOptions", "model_version_for", "read_photo_for", "task_masks", "task_prediction",
           "predict_photo"]


# Bumped when a release changes what the same settings propose (2: presence decided by default, clicks that
# follow the hand, one control type per project; 3: presence without the attention-mass feature and with the
# prior of the label set's size; 4: builtin:shapes retrained on a richer world, edges snapped to the photo,
# region scores from the region's shape too), so Label Studio retrieves tasks again instead of keeping
# proposals of the older rules under the same name.
PROPOSALS_REVISION = 4


def model_version_for(model: str, method: str, mode: str, t: int) -> str:
    """A model_version naming what made the predictions (same settings → same version → skipped on rerun)."""
    name = Path(str(model).rstrip("/")).name or str(model)
    return (f"seediff-{slug(name)[:40]}-{method}-{mode}" + (f"-t{t}" if mode == "noise" else "")
            + f"-r{PROPOSALS_REVISION}")


@dataclass(frozen=True)
class PredictOptions:
    """What makes a task's proposals: the model's name and every setting that changes its masks."""

    model: str = "builtin:shapes"
    method: str = "seediff"
    photo_mode: str = "noise"
    t: int = 100
    steps: int = 10
    seed: int = 0
    prompt_template: str = DEFAULT_TEMPLATE
    drop_absent: bool = False
    control: str = "polygon"  # the control type of the regions where a label is in both kinds (labels.CONTROLS)
    presence: bool = True  # decide which labels the photo shows before segmenting (seediff.evidence)
    calibration: Calibration | None = None  # a project's (seediff.calibrate): mask threshold, presence, scores

    def __post_init__(self) -> None:
        from seediff.methods import METHODS
        from seediff.modes import PHOTO_MODES

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.photo_mode not in PHOTO_MODES:
            raise ValueError(f"photo_mode must be one of {list(PHOTO_MODES)}, got {self.photo_mode!r}")
        for name in ("t", "steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "steps" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'steps' else 0}, got {v!r}")
        object.__setattr__(self, "prompt_template", check_template(self.prompt_template))
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {', '.join(CONTROLS)}, got {self.control!r}")

    @classmethod
    def from_settings(cls, s) -> "PredictOptions":
        """The options of the backend's :class:`~seediff_labelstudio.settings.Settings`."""
        return cls(model=s.model, method=s.method, photo_mode=s.photo_mode, t=s.timestep, steps=s.steps, seed=s.seed,
                   prompt_template=s.prompt_template, drop_absent=s.drop_absent, control=s.control,
                   presence=s.presence)

    @property
    def model_version(self) -> str:
        """:func:`model_version_for` (model, method, photo mode, t), plus a short hash of any other non-default
        setting that changes the masks or their regions (prompt template, seed, steps where they count,
        drop_absent, presence off, control type), plus the calibration's digest."""
        extra: dict[str, Any] = {}
        if self.prompt_template != DEFAULT_TEMPLATE:
            extra["prompt_template"] = self.prompt_template
        if self.seed != 0:
            extra["seed"] = self.seed
        if self.photo_mode != "noise" and self.steps != 10:
            extra["steps"] = self.steps
        if self.drop_absent:
            extra["drop_absent"] = True
        if not self.presence:
            extra["presence"] = False
        if self.control != "polygon":
            extra["control"] = self.control
        base = model_version_for(self.model, self.method, self.photo_mode, self.t)
        if extra:
            base = f"{base}-{hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]}"
        return calibrated_version(base, self.calibration)  # + '-cal<digest>' under a calibration

    def prompt(self, classes) -> str:
        """The prompt a task's photo is read with: every class word in the template."""
        return class_prompt(classes, self.prompt_template)


def read_photo_for(model, image, classes, options: PredictOptions):
    """A :class:`seediff.SeeDiffPredictor` holding the photo read once with every class word (the UNet part);
    ``model``: a :class:`seediff.pipeline.LoadedModel` (its defaults choose the method's config). Classes that do
    not fit one prompt are read later, once per group that fits (:func:`seediff.prompts.split_vocabulary`)."""
    from seediff.predictor import SeeDiffPredictor
    from seediff.prompts import split_vocabulary

    predictor = SeeDiffPredictor.from_model(model, prompt_template=options.prompt_template)
    one = len(split_vocabulary(model.pipe.tokenizer, classes, options.prompt_template)) == 1
    predictor.set_image(image, options.prompt(classes) if one else None,
                        classes if options.presence and not options.drop_absent else None, mode=options.photo_mode,
                        t=options.t, steps=options.steps, seed=options.seed)
    return predictor


def task_masks(predictor, classes, options: PredictOptions, points=None, boxes=None, config=None):
    """ClassMasks for the task's classes from a read photo; points only reach methods that accept them.

    Under ``options.calibration`` the method's mask threshold and each label's P(present) threshold are the
    calibrated ones, and each label's region is dropped below its region-score threshold (never a label the user
    clicked or boxed) and rescored to an expected IoU. ``config``: the method's config instead of the model's.
    """
    from seediff.methods import get_method

    cal = options.calibration
    if config is None:
        config = calibrated_config(cal, options.method, predictor.defaults.config(options.method)) if cal else None
    seeds = (points or None) if get_method(options.method).accepts_points else None
    masks = predictor.predict(list(classes), points=seeds, boxes=boxes or None, method=options.method,
                              config=config, drop_absent=options.drop_absent, presence=options.presence,
                              presence_thresholds=cal.presence_thresholds() if cal else None)
    return apply_calibration(cal, masks, keep={*(points or {}), *(boxes or {})})


def task_prediction(plan: LabelPlan, masks, size: tuple[int, int], model_version: str, *, control: str = "polygon",
                    only: set[str] | None = None) -> dict[str, Any]:
    """The Label Studio prediction: regions for the plan's controls (of the ``control`` type; only the labels in
    ``only`` when given: an interactive click answers its own label), their mean score, the model_version."""
    result = plan_results(plan, masks, size, control=control, only=only)
    scores = [r["score"] for r in result if isinstance(r.get("score"), (int, float))]
    return {"result": result, "score": float(np.mean(scores)) if scores else 0.0, "model_version": model_version}


def predict_photo(model, image, plan: LabelPlan, options: PredictOptions, model_version: str | None = None,
                  points: Mapping | None = None, boxes: Mapping | None = None) -> dict[str, Any]:
    """One task's prediction for a fetched photo: read, segment, regions (``model_version`` default: the options')."""
    predictor = read_photo_for(model, image, plan.classes, options)
    masks = task_masks(predictor, plan.classes, options, points, boxes)
    return task_prediction(plan, masks, (image.width, image.height), model_version or options.model_version,
                           control=options.control)
