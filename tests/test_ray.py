"""Ray executor: Ray Data map_batches over an actor pool gives byte-identical COCO to the in-process run,
reports a failing item by id without losing the others, and refuses pools that would take every CPU.

One local Ray (``num_cpus=2``: one actor, one CPU left for Ray Data) is shared by the whole module.
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from seediff.jobs import LocalExecutor, RayExecutor, finish, plan_synthesize, run_job, synthesize_spec  # noqa: E402
from seediff.jobs.probe import plan_probe, probe_spec  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs for the whole test session."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", configure_logging=True,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                                           "DIFFUSERS_VERBOSITY": "error"}})
    yield ray
    ray.shutdown()


def test_probe_on_ray_matches_local_and_reports_the_failing_item(ray_session, tmp_path):
    items = plan_probe(6, seed=9)
    bad = items[3].id
    spec = probe_spec(tmp_path / "ray", fail=[bad])
    report = run_job(spec, items, RayExecutor(batch_size=2), progress=False)
    assert report.failed == {bad: f"RuntimeError: probe failure requested for {bad}"}
    assert sorted(report.done) == sorted(i.id for i in items if i.id != bad)
    # Each batch left a shard manifest naming what it did; together they cover every item once.
    shards = [json.loads(p.read_text()) for p in sorted((tmp_path / "ray" / "shards").glob("*.json"))]
    assert sorted(i for s in shards for i in s["ids"]) == sorted(i.id for i in items)
    assert {k: v for s in shards for k, v in s["failed"].items()} == report.failed

    # Resuming may use another executor: the item records are the truth, not who wrote them.
    rerun = run_job(probe_spec(tmp_path / "ray"), items, LocalExecutor(), progress=False)
    assert rerun.skipped == 5 and rerun.done == [bad] and rerun.complete
    finish(spec, items, tmp_path / "ray.json")

    local = probe_spec(tmp_path / "local")
    run_job(local, items, LocalExecutor(), progress=False)
    finish(local, items, tmp_path / "local.json")
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "local.json").read_bytes()


def test_synthesize_on_ray_is_byte_identical_to_local(ray_session, tmp_path, tiny_pipe_path):
    pytest.importorskip("seediff.segment", reason="seediff.segment (masks helper) has not landed")
    classes = ["dog", "cat"]
    items = plan_synthesize(classes, 2, "a photo of a {}", seed=4)
    params = dict(model=str(tiny_pipe_path), device="cpu", dtype=None, classes=classes, prompt="a photo of a {}",
                  seed=4, steps=3, guidance=7.5, height=None, width=None, method="seediff", threads=1)
    outs = {}
    for name, executor in [("ray", RayExecutor()), ("local", LocalExecutor())]:
        spec = synthesize_spec(tmp_path / name, params)
        report = run_job(spec, items, executor, progress=False)
        assert report.complete, report
        finish(spec, items, tmp_path / name / "coco.json")
        outs[name] = (tmp_path / name / "coco.json").read_bytes()
    assert outs["ray"] == outs["local"]
    for item in items:  # the images themselves, not only the COCO, are the same
        a = Image.open(tmp_path / "ray" / item.data["file_name"])
        b = Image.open(tmp_path / "local" / item.data["file_name"])
        assert a.tobytes() == b.tobytes()


def test_cli_annotate_on_ray_reports_a_broken_image_and_keeps_the_rest(ray_session, tmp_path, tiny_pipe_path):
    pytest.importorskip("seediff.segment", reason="seediff.segment (masks helper) has not landed")
    from typer.testing import CliRunner

    from seediff.cli import app

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, c in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (40 + 8 * i, 32), c).save(photos / f"p{i}.png")
    (photos / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "photos.json"
    argv = ["annotate", str(photos), "--classes", "dog,cat", "--out", str(out), "--model", str(tiny_pipe_path),
            "--device", "cpu", "--executor", "ray", "--no-progress"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert "failed broken-" in result.output and "UnidentifiedImageError" in result.output
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["p0.png", "p1.png"]
    assert [(im["width"], im["height"]) for im in coco["images"]] == [(40, 32), (48, 32)]
    manifest = json.loads((tmp_path / "photos.json.work" / "manifest.json").read_text())
    assert [k.split("-")[0] for k in manifest["failed"]] == ["broken"] and len(manifest["done"]) == 2

    Image.new("RGB", (36, 30), (20, 200, 20)).save(photos / "broken.png")  # fixed: the rerun retries it only
    again = CliRunner().invoke(app, [*argv[:-3], "--executor", "local", "--no-progress"])  # any executor resumes
    assert again.exit_code == 0, again.output
    assert "3 items, 2 already done, 1 done now, 0 failed" in again.output
    assert [im["file_name"] for im in json.loads(out.read_text())["images"]] == ["broken.png", "p0.png", "p1.png"]


def test_pool_that_would_take_every_cpu_is_refused(ray_session, tmp_path):
    with pytest.raises(ValueError, match="at most 1 so Ray Data keeps a CPU"):
        run_job(probe_spec(tmp_path), plan_probe(2), RayExecutor(workers=2), progress=False)


def test_actor_that_cannot_load_its_model_stops_the_job_with_the_cause(ray_session, tmp_path):
    from seediff.jobs.executors import ExecutorError

    params = dict(model=str(tmp_path / "no-such-model"), device="cpu", dtype=None, classes=["dog"],
                  prompt="a photo of a {}", seed=0, steps=3, guidance=7.5, height=None, width=None,
                  method="seediff", threads=1)
    with pytest.raises(ExecutorError, match=r"ModelLoadError: model path .*no-such-model does not exist"):
        run_job(synthesize_spec(tmp_path / "out", params), plan_synthesize(["dog"], 2, "a {}", 0), RayExecutor(),
                progress=False)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["pending"] == ["dog-00000", "dog-00001"]
