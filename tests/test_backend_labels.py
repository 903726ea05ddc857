"""Labeling configs → label plans (LabelInterface), and hand-made masks → regions Label Studio's own validator
accepts, each on the control that holds its label."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend_fixtures import BOTH, BRUSH, NO_CONTROL, NO_IMAGE, POLY
from seediff.masks import ClassMasks
from seediff_labelstudio.labels import LabelPlan, label_plan, pick_control, plan_results
from seediff_labelstudio.model import context_seeds

MULTI = """<View><Image name="image" value="$image"/><Image name="other" value="$other"/>
<PolygonLabels name="vehicles" toName="image"><Label value="Car"/><Label value="Traffic light"/></PolygonLabels>
<PolygonLabels name="people" toName="image"><Label value="Person" predicted_values="person, man,woman"/></PolygonLabels>
<BrushLabels name="paint" toName="image"><Label value="Car"/><Label value="Road"/></BrushLabels>
<PolygonLabels name="elsewhere" toName="other"><Label value="Tree"/></PolygonLabels></View>"""


def test_plans_of_real_configs():
    both = label_plan(BOTH)
    assert (both.to_name, both.data_key, both.polygon, both.brush) == ("image", "image", "poly", "brush")
    assert both.words == {"Dog": ["dog"], "Cat": ["cat"]} and both.classes == ["dog", "cat"]
    poly = label_plan(POLY)
    assert (poly.to_name, poly.data_key, poly.polygon, poly.brush) == ("img", "photo", "poly", None)
    assert poly.words == {"Traffic light": ["traffic light"], "Pet": ["dog", "cat"]}
    assert label_plan(BRUSH).targets("Dog") == (None, "brush")
    multi = label_plan(MULTI)
    assert multi.to_name == "image" and multi.classes == ["car", "traffic light", "person", "man", "woman", "road"]
    assert [multi.targets(x) for x in ("Car", "Traffic light", "Person", "Road")] == [
        ("vehicles", "paint"), ("vehicles", None), ("people", None), (None, "paint")]
    assert "Tree" not in multi.words  # its control is on the other image
    assert LabelPlan(**multi.to_dict()) == multi  # round-trips through the preannotate job's JSON params
    old = {k: v for k, v in both.to_dict().items() if k != "controls"}  # a plan saved before 'controls' existed
    assert LabelPlan(**old).targets("Dog") == ("poly", "brush")


@pytest.mark.parametrize("config,message", [
    (NO_IMAGE, r"no <Image> \(it has <Text name='text'>\)"),
    (NO_CONTROL, r"no <PolygonLabels> or <BrushLabels> on an <Image> \(it has <RectangleLabels name='box'>\)"),
    ("""<View><Image name="i" value="$i"/><PolygonLabels name="p" toName="i"></PolygonLabels></View>""", "no <Label>s"),
])
def test_unsupported_configs_say_why(config, message):
    with pytest.raises(ValueError, match=message):
        label_plan(config)


def test_regions_go_to_the_control_of_their_label_and_validate():
    """Square masks for every class word; 'Person' is man ∪ woman; with control='both' Car has a hole → brush
    (COCO rule); by default (control='polygon') every label a polygon control holds is a polygon."""
    h, w = 40, 60
    labels = ["car", "traffic light", "person", "man", "woman", "road"]
    masks = np.zeros((len(labels), h, w), bool)
    masks[0, 2:18, 2:18] = True
    masks[0, 8:12, 8:12] = False  # a hole
    masks[1, 2:10, 30:40] = True
    masks[3, 20:30, 2:10] = True
    masks[4, 20:30, 12:20] = True
    masks[5, 32:40, :] = True  # touches the border
    cm = ClassMasks(labels, masks, np.array([0.9, 0.8, 0.0, 0.6, 0.4, 0.7]))
    plan = label_plan(MULTI)
    result = plan_results(plan, cm, (w, h), control="both")
    by_label = {}
    for r in result:
        by_label.setdefault(r["value"][r["type"]][0], []).append((r["from_name"], r["type"]))
    assert by_label == {"Car": [("paint", "brushlabels")], "Traffic light": [("vehicles", "polygonlabels")],
                        "Person": [("people", "polygonlabels")] * 2, "Road": [("paint", "brushlabels")]}
    person = [r for r in result if r["value"].get("polygonlabels") == ["Person"]]
    assert sorted(r["score"] for r in person) == pytest.approx([0.5, 0.5])  # mean of man and woman
    li = LabelInterface(MULTI)
    assert li.validate_prediction({"result": result, "score": 0.5, "model_version": "v"}), result
    assert all(r["to_name"] == "image" and (r["original_width"], r["original_height"]) == (w, h) for r in result)


def _kinds(result) -> dict[str, set[str]]:
    """label → the region types it was answered with."""
    out: dict[str, set[str]] = {}
    for r in result:
        out.setdefault(r["value"][r["type"]][0], set()).add(r["type"])
    return out


def test_one_control_type_per_project():
    """BOTH holds Dog and Cat in a polygon and a brush control: answers use one type (polygons by default), even
    for a mask with holes; a label only one kind of control holds keeps that kind (MULTI's Road)."""
    h, w = 30, 40
    masks = np.zeros((2, h, w), bool)
    masks[0, 2:20, 2:20] = True
    masks[0, 8:12, 8:12] = False  # a hole: 'both' would make it a brush
    masks[1, 22:28, 25:38] = True
    cm = ClassMasks(["dog", "cat"], masks, np.array([0.9, 0.8]))
    plan = label_plan(BOTH)
    assert _kinds(plan_results(plan, cm, (w, h))) == {"Dog": {"polygonlabels"}, "Cat": {"polygonlabels"}}
    assert _kinds(plan_results(plan, cm, (w, h), control="brush")) == {"Dog": {"brushlabels"}, "Cat": {"brushlabels"}}
    assert _kinds(plan_results(plan, cm, (w, h), control="both")) == {"Dog": {"brushlabels"}, "Cat": {"polygonlabels"}}
    assert _kinds(plan_results(plan, cm, (w, h), only={"Cat"})) == {"Cat": {"polygonlabels"}}  # an interactive click
    multi = label_plan(MULTI)
    assert pick_control(multi.targets("Road"), "polygon") == (None, "paint")
    assert pick_control(multi.targets("Traffic light"), "brush") == ("vehicles", None)
    assert pick_control(multi.targets("Car"), "brush") == (None, "paint")
    for bad in ("Polygon", "rle", ""):
        with pytest.raises(ValueError, match=f"control must be one of polygon, brush, both, got {bad!r}"):
            plan_results(plan, cm, (w, h), control=bad)
    li = LabelInterface(BOTH)
    for control in ("polygon", "brush", "both"):
        assert li.validate_prediction({"result": plan_results(plan, cm, (w, h), control=control), "score": 0.5,
                                       "model_version": "v"})


def test_context_seeds_read_is_positive_where_label_studio_puts_it():
    """Label Studio's smart KeyPointLabels: is_positive on the region (false for an Alt-click); percent → pixels."""
    plan = label_plan(POLY)
    click = {"type": "keypointlabels", "from_name": "kp", "to_name": "img", "original_width": 200,
             "original_height": 100, "value": {"x": 25.0, "y": 50.0, "width": 1, "keypointlabels": ["Pet"]}}
    regions = [click, {**click, "is_positive": True, "value": {**click["value"], "x": 50.0}},
               {**click, "is_positive": False, "value": {**click["value"], "x": 75.0}},
               {**click, "value": {**click["value"], "x": 10.0, "is_positive": False}},  # older clients: in value
               {**click, "is_positive": True, "value": {**click["value"], "x": 90.0, "is_positive": False}}]
    points, boxes = context_seeds({"result": regions}, plan, (200, 100))
    assert boxes == {} and points["dog"] == points["cat"] == [
        (50.0, 50.0, 1), (100.0, 50.0, 1), (150.0, 50.0, 0), (20.0, 50.0, 0), (180.0, 50.0, 1)]
    rect = {"type": "rectanglelabels", "value": {"x": 10, "y": 20, "width": 50, "height": 30,
                                                 "rectanglelabels": ["Traffic light"]}}
    assert context_seeds({"result": [rect]}, plan, (200, 100)) == ({}, {"traffic light": [(20.0, 20.0, 120.0, 50.0)]})
