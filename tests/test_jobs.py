"""Job engine: deterministic items, atomic per-item files, resume, failure reporting, byte-stable merge.

Engine behaviour is checked with the model-free probe job (fast, exact); the real synthesize job runs on the
random-weight tiny pipeline, including a run killed with SIGKILL mid-way and resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seediff.coco import read_coco
from seediff.convert import segmentation_to_mask
from seediff.jobs import (
    Item, JobMismatchError, JobStore, LocalExecutor, derive_seed, merge, plan_annotate, plan_synthesize, records,
    run_job,
)
from seediff.jobs.datasets import finish
from seediff.jobs.probe import plan_probe, probe_spec
from seediff.jobs.store import check_item_id, slug, write_output


# ------------------------------------------------------------------------------------------------ planning

def test_derive_seed_is_sha256_of_seed_and_id():
    expected = int.from_bytes(hashlib.sha256(b"7:dog-00003").digest()[:4], "big") & 0x7FFFFFFF
    assert derive_seed(7, "dog-00003") == expected
    assert derive_seed(7, "dog-00003") != derive_seed(8, "dog-00003") != derive_seed(7, "dog-00004")
    assert all(0 <= derive_seed(s, "x") < 2**31 for s in range(50))


def test_plan_synthesize_ids_order_and_prompts():
    items = plan_synthesize(["dog", "traffic light"], 2, "a photo of a {}", seed=3)
    assert [i.id for i in items] == ["dog-00000", "dog-00001", "traffic_light-00000", "traffic_light-00001"]
    assert items[2].data == {"class": "traffic light", "prompt": "a photo of a traffic light",
                             "file_name": "images/traffic_light-00000.png"}
    assert [i.seed for i in items] == [derive_seed(3, i.id) for i in items]
    assert plan_synthesize(["dog", "traffic light"], 2, "a photo of a {}", seed=3) == items


@pytest.mark.parametrize("classes, per_class, prompt, message", [
    ([], 1, "a {}", "at least one class"),
    (["dog", "dog"], 1, "a {}", "duplicate class words"),
    (["a b", "a_b"], 1, "a {}", "clashing file names"),
    (["dog"], 0, "a {}", "per_class must be >= 1"),
    (["dog"], 1, "a photo", "exactly once"),
])
def test_plan_synthesize_rejects_bad_arguments(classes, per_class, prompt, message):
    with pytest.raises(ValueError, match=message):
        plan_synthesize(classes, per_class, prompt, seed=0)


def test_plan_annotate_sorted_relative_paths_and_stable_ids(tmp_path):
    for rel in ["b.png", "a/x.jpg", "a/y z.PNG", "notes.txt", ".hidden.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    items = plan_annotate(tmp_path, seed=1)
    assert [i.data["file_name"] for i in items] == ["a/x.jpg", "a/y z.PNG", "b.png"]
    assert items[1].id.startswith("a_y_z-") and len(items[1].id) == len("a_y_z-") + 8
    assert plan_annotate(tmp_path, seed=1) == items
    with pytest.raises(ValueError, match="no images"):
        plan_annotate(_empty(tmp_path), seed=1)


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_item_ids_must_be_file_safe():
    assert check_item_id("dog-00001") == "dog-00001"
    for bad in ["../x", ".hidden", "a/b", "", "x" * 201]:
        with pytest.raises(ValueError, match="item id"):
            Item(bad, 0)
    assert slug(" traffic light/ red ") == "traffic_light_red"


# --------------------------------------------------------------------------------------------------- store

def test_atomic_write_leaves_no_temporary_and_claim_names_differences(tmp_path):
    write_output(tmp_path / "a" / "f.bin", b"123")
    assert sorted(os.listdir(tmp_path / "a")) == ["f.bin"]
    store = JobStore(tmp_path / "job")
    assert store.claim({"kind": "k", "params": {"steps": 4, "seed": 0}}) is False
    assert store.claim({"kind": "k", "params": {"steps": 4, "seed": 0}}) is True
    with pytest.raises(JobMismatchError, match=r"differs in: params\.steps"):
        store.claim({"kind": "k", "params": {"steps": 5, "seed": 0}})
    (tmp_path / "job" / "items").mkdir()
    (tmp_path / "job" / "items" / ".x.json.0123456789ab.tmp").write_text("partial")
    assert store.clean_temporaries() == 1


def test_record_counts_only_when_its_files_exist(tmp_path):
    store = JobStore(tmp_path)
    store.write_file("images/a.png", b"png")
    store.write_record("a", {"files": ["images/a.png"]})
    assert store.record("a") == {"id": "a", "files": ["images/a.png"]}
    (tmp_path / "images" / "a.png").unlink()
    assert store.record("a") is None  # a lost file makes the item pending again
    with pytest.raises(RuntimeError, match="not written"):
        store.write_record("b", {"files": ["images/b.png"]})
    with pytest.raises(ValueError, match="outside the job folder"):
        store.write_file("../escape.png", b"")


# ------------------------------------------------------------------------------------------ probe job runs

def test_probe_job_resumes_without_redoing_and_merges_byte_identically(tmp_path):
    items = plan_probe(6, seed=5)
    spec = probe_spec(tmp_path / "a")
    first = run_job(spec, items[:4], progress=False)  # an "interrupted" run: only part of the items
    assert first.done == [i.id for i in items[:4]] and first.complete
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "images").iterdir()}
    second = run_job(spec, items, progress=False)
    assert second.skipped == 4 and second.done == [i.id for i in items[4:]]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # nothing rewritten
    finish(spec, items, tmp_path / "a.json")

    clean = probe_spec(tmp_path / "b")
    run_job(clean, list(reversed(items)), progress=False)  # other order, one go
    finish(clean, items, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()

    coco = read_coco(tmp_path / "a.json")
    assert [im["file_name"] for im in coco["images"]] == sorted(f"images/{i.id}.png" for i in items)
    assert [c["name"] for c in coco["categories"]] == ["bright", "dark"]
    # The merged masks are the probe's exact pixels.
    img = coco["images"][2]
    pixels = np.asarray(Image.open(tmp_path / "a" / img["file_name"])).mean(-1)
    bright = [a for a in coco["annotations"] if a["image_id"] == img["id"] and a["category_id"] == 1]
    np.testing.assert_array_equal(segmentation_to_mask(bright[0]["segmentation"], 16, 16), pixels >= 128)


def test_merge_does_not_depend_on_record_order(tmp_path):
    items = plan_probe(5, seed=1)
    spec = probe_spec(tmp_path)
    run_job(spec, items, progress=False)
    recs = records(spec, [i.id for i in items])
    shuffled = recs[:]
    random.Random(0).shuffle(shuffled)
    assert json.dumps(merge(recs, ["bright", "dark"])) == json.dumps(merge(shuffled, ["bright", "dark"]))
    assert merge([], ["x", "y"])["categories"] == [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]


def test_failed_item_is_reported_by_id_and_retried(tmp_path, capsys):
    items = plan_probe(4, seed=2)
    bad = items[1].id
    spec = probe_spec(tmp_path / "job", fail=[bad])
    report = run_job(spec, items, LocalExecutor(), progress=True)
    assert report.failed == {bad: f"RuntimeError: probe failure requested for {bad}"}
    assert sorted(report.done) == sorted(i.id for i in items if i.id != bad)
    assert f"item {bad} failed: RuntimeError" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert manifest["failed"] == report.failed and manifest["complete"] is False and len(manifest["done"]) == 3
    assert json.loads((tmp_path / "job" / "errors" / f"{bad}.json").read_text())["traceback"].startswith("Traceback")

    retry = run_job(probe_spec(tmp_path / "job"), items, progress=False)  # the cause is gone: rerun fixes it
    assert retry.skipped == 3 and retry.done == [bad] and retry.complete
    assert not (tmp_path / "job" / "errors" / f"{bad}.json").exists()
    assert json.loads((tmp_path / "job" / "manifest.json").read_text())["complete"] is True


# ------------------------------------------------------------------------------- synthesize on the tiny model

SYNTH = ["--classes", "dog", "cat", "--prompt", "a photo of a {}", "--steps", "4", "--seed", "11", "--no-progress"]


def _synth_argv(model: Path, out: Path, per_class: int) -> list[str]:
    return [sys.executable, "-m", "seediff.cli", "synthesize", *SYNTH, "--per-class", str(per_class),
            "--model", str(model), "--device", "cpu", "--out", str(out)]


def _env() -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}


@pytest.mark.slow
def test_killed_synthesize_resumes_to_the_same_coco(tmp_path, tiny_pipe_path):
    pytest.importorskip("seediff.segment", reason="seediff.segment (masks helper) has not landed")
    per_class = 4
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_synth_argv(tiny_pipe_path, killed, per_class), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(killed.glob("items/*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    written = len(list(killed.glob("items/*.json")))
    assert 2 <= written < 2 * per_class, written
    assert not (killed / "coco.json").exists()

    resumed = subprocess.run(_synth_argv(tiny_pipe_path, killed, per_class), env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{written} already done" in resumed.stderr

    clean = tmp_path / "clean"  # the uninterrupted run, in this process (saves a start-up)
    from typer.testing import CliRunner

    from seediff.cli import app

    once = CliRunner().invoke(app, _synth_argv(tiny_pipe_path, clean, per_class)[3:])
    assert once.exit_code == 0, once.output[-3000:]
    assert (killed / "coco.json").read_bytes() == (clean / "coco.json").read_bytes()
    # Nothing duplicated, nothing lost, no temporaries left.
    for sub in ("images", "items", "overlays"):
        assert sorted(os.listdir(killed / sub)) == sorted(os.listdir(clean / sub))
        assert len(os.listdir(killed / sub)) == 2 * per_class
    assert not [p for p in killed.rglob("*.tmp")]
    coco = read_coco(killed / "coco.json")
    assert len(coco["images"]) == 2 * per_class
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
