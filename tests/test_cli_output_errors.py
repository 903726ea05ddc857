"""Outputs that cannot be written, with real failures (no monkeypatching): a path through a regular file
(ENOTDIR), a full disk (a small tmpfs in a private mount namespace: ENOSPC), a file-size limit (RLIMIT_FSIZE:
EFBIG), stdout on /dev/full, and an unprivileged user writing into root's folder (EACCES).

Each gives one ``error: …`` line naming the file meant (never a temporary), no traceback, leaves only whole
files, and a rerun once the cause is gone completes to the same COCO as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from seediff.cli import app
from seediff.coco import read_coco, to_coco, write_coco

NOBODY = 65534  # uid/gid of 'nobody': owns the folder we may not write
SYNTH = ["synthesize", "--classes", "dog", "cat", "--per-class", "2", "--steps", "2", "--seed", "3", "--no-progress",
         "--device", "cpu"]


def _env(**extra) -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                         **extra}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "seediff.cli", *map(str, args)]


def _one_error_line(stderr: str, *phrases: str) -> str:
    """The single 'error:' line of ``stderr`` (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert ".tmp" not in lines[0]  # the file meant, not its temporary
    return lines[0]


def _whole(root: Path) -> None:
    """No temporaries; every item record's files exist and decode (PNG) — nothing half-written."""
    assert not [p for p in root.rglob("*.tmp")], sorted(root.rglob("*.tmp"))
    for rec_path in root.glob("items/*.json"):
        rec = json.loads(rec_path.read_text())
        for rel in rec["files"]:
            with Image.open(root / rel) as im:
                im.load()
    for png in root.rglob("*.png"):
        with Image.open(png) as im:
            im.load()  # a truncated PNG raises here


def _coco_pair(tmp: Path) -> tuple[Path, Path]:
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    gt, pred = tmp / "gt.json", tmp / "pred.json"
    write_coco(gt, to_coco([("a.png", [("dog", mask)])], categories=["dog"]))
    write_coco(pred, to_coco([("a.png", [("dog", np.roll(mask, 1, 0), 0.9)])], categories=["dog"]))
    return pred, gt


# ---- ENOTDIR: an output path through a regular file ------------------------------------------------------
def test_output_path_through_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    pred, gt = _coco_pair(tmp_path)
    config = tmp_path / "config.xml"
    config.write_text('<View><Image name="image" value="$image"/><PolygonLabels name="p" toName="image">'
                      '<Label value="dog"/></PolygonLabels></View>')
    for argv, target in [
        (["synthesize", "--classes", "dog", "--out", blocker / "data"], blocker / "data"),
        (["annotate", photos, "--classes", "dog", "--out", blocker / "x.json"], blocker / "x.json.work"),
        (["convert", "coco2ls", gt, "--config", config, "--out", blocker / "tasks.json"], blocker / "tasks.json"),
        (["convert", "ls2coco", tmp_path / "export.json", "--out", blocker / "c.json"], blocker / "c.json"),
    ]:
        (tmp_path / "export.json").write_text(
            (Path(__file__).parent / "data" / "ls_export" / "polygon_task.json").read_text())  # something to write
        r = CliRunner().invoke(app, [str(a) for a in argv])
        assert r.exit_code == 1, (argv, r.output)
        _one_error_line(r.output, f"cannot write {target}: Not a directory", "rerun the same command")
    assert blocker.read_text() == "I am a file"


# ---- ENOSPC: stdout on a full device ---------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_evaluate_to_a_full_stdout_is_one_line(tmp_path):
    pred, gt = _coco_pair(tmp_path)
    with open("/dev/full", "w") as full:  # opened for writing only: the device node itself is never replaced
        r = subprocess.run(_cli("evaluate", pred, gt, "--json"), stdout=full, stderr=subprocess.PIPE, text=True,
                           env=_env(), timeout=120)
    assert r.returncode == 1, r.stderr
    _one_error_line(r.stderr, "cannot write <stdout>: No space left on device")
    ok = subprocess.run(_cli("evaluate", pred, gt, "--json"), capture_output=True, text=True, env=_env(), timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["miou"] == 0.6, ok.stderr  # 12 px shared of 20


# ---- ENOSPC / EFBIG in the middle of a job, then a rerun ---------------------------------------------------
class _Tmpfs:
    """A small tmpfs mounted on ``where`` inside a private mount namespace (invisible to every other process);
    commands run in that namespace with :meth:`run`, files are seen through ``/proc/<holder>/root``."""

    def __init__(self, where: Path, size: str) -> None:
        self.where = where
        script = f'mount -t tmpfs -o size={size} seediff-test "{where}" && echo mounted && exec sleep 600'
        try:
            self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except FileNotFoundError:
            pytest.skip("no unshare(1)")
        if self.holder.stdout.readline().strip() != "mounted":
            err = self.holder.stderr.read()
            self.holder.wait()
            pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {err.strip()[:200]}")
        self.view = Path(f"/proc/{self.holder.pid}/root{where}")

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv], **kw)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def _clean_coco(tmp_path: Path, model: Path) -> bytes:
    """The COCO of an uninterrupted run (in this process)."""
    r = CliRunner().invoke(app, SYNTH + ["--model", str(model), "--out", str(tmp_path / "clean")])
    assert r.exit_code == 0, r.output[-3000:]
    return (tmp_path / "clean" / "coco.json").read_bytes()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nsenter"), reason="needs root and nsenter to mount")
def test_disk_full_mid_job_is_one_line_whole_files_and_a_rerun_completes(tmp_path, tiny_pipe_path):
    out = tmp_path / "out"
    out.mkdir()
    disk = _Tmpfs(out, "40k")  # job.json and about one item fit (tmpfs counts whole 4 KiB pages)
    try:
        argv = _cli(*SYNTH, "--model", tiny_pipe_path, "--out", out)
        full = disk.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
        assert full.returncode == 1, full.stderr[-3000:]
        _one_error_line(full.stderr, f"cannot write {out}/", "No space left on device",
                        "nothing was left half-written")
        _whole(disk.view)
        done = len(list(disk.view.glob("items/*.json")))
        assert done < 4 and not (disk.view / "coco.json").exists()
        assert not list(disk.view.glob("errors/*.json"))  # a full disk is not an item's fault: no item marked failed

        grow = disk.run(["mount", "-o", "remount,size=16m", str(out)], capture_output=True, text=True)
        assert grow.returncode == 0, grow.stderr
        again = disk.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"4 items, {done} already done, {4 - done} done now, 0 failed" in again.stderr
        _whole(disk.view)
        resumed = (disk.view / "coco.json").read_bytes()
    finally:
        disk.close()
    assert resumed == _clean_coco(tmp_path, tiny_pipe_path)


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_mid_job_is_one_line_and_a_rerun_completes(tmp_path, tiny_pipe_path):
    out = tmp_path / "out"
    argv = _cli(*SYNTH, "--model", tiny_pipe_path, "--out", out)
    # 2500 bytes: job.json fits, the first generated image (~3.2 KB PNG) does not
    big = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300,
                         preexec_fn=_limit_file_size(2500))
    assert big.returncode == 1, big.stderr[-3000:]
    _one_error_line(big.stderr, f"cannot write {out}/images/", "File too large")
    _whole(out)
    assert (out / "job.json").exists() and not list(out.glob("items/*.json")) and not (out / "coco.json").exists()
    again = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 items, 0 already done, 4 done now, 0 failed" in again.stderr
    assert len(read_coco(out / "coco.json")["images"]) == 4
    _whole(out)


# ---- EACCES: a folder the user may not write ------------------------------------------------------------------
NO_DAC = "-dac_override,-dac_read_search,-fowner"  # root without these obeys file permissions like anyone


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv(1) to drop the capabilities that bypass file permissions")
def test_permission_denied_is_one_line_and_nothing_written(tmp_path):
    pred, gt = _coco_pair(tmp_path)
    config = tmp_path / "config.xml"
    config.write_text('<View><Image name="image" value="$image"/><PolygonLabels name="p" toName="image">'
                      '<Label value="dog"/></PolygonLabels></View>')
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chown(locked, NOBODY, NOBODY)  # someone else's folder, 0755: readable, not writable for us
    locked.chmod(0o755)
    drop = ["setpriv", f"--bounding-set={NO_DAC}", f"--inh-caps={NO_DAC}", "--"]
    for argv, target in [
        (["convert", "coco2ls", gt, "--config", config, "--out", locked / "tasks.json"], locked / "tasks.json"),
        (["synthesize", "--classes", "dog", "--out", locked / "data", "--no-progress"], locked / "data"),
        (["annotate", tmp_path / "photos", "--classes", "dog", "--out", locked / "x.json", "--no-progress"],
         locked / "x.json.work"),
    ]:
        r = subprocess.run(drop + _cli(*argv), capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 1, r.stderr[-3000:]
        _one_error_line(r.stderr, f"cannot write {target}: Permission denied")
    assert list(locked.iterdir()) == []  # nothing written, not even a temporary
    ok = subprocess.run(_cli("convert", "coco2ls", gt, "--config", config, "--out", locked / "tasks.json"),
                        capture_output=True, text=True, env=_env(), timeout=120)  # with the capabilities: fine
    assert ok.returncode == 0 and len(json.loads((locked / "tasks.json").read_text())) == 1, ok.stderr
