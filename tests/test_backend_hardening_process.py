"""Hardening round 2 (issue 16) against the real `seediff-labelstudio` process on builtin:shapes: every hostile
input of bench/hostile.py (extreme aspect ratios, a 36 MP PNG, two large tasks at once, gzip bombs, dripped
headers, huge and many labeling configs, chunked and many-value bodies) keeps peak RSS under 1.5 GiB, /health
under 1 s throughout, and a dripping server's fetch within its timeout; camera-size photos (24 and 36 MP) are
predicted, each within the SEEDIFF_MAX_TASK_BYTES guard's estimate of its memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from seediff_labelstudio.limits import segment_bytes

ROOT = Path(__file__).resolve().parents[1]
PEAK_MIB = 1536  # the documented bound (seediff_labelstudio/README.md, threat model)


def test_hostile_inputs_keep_memory_time_and_health_bounded(tmp_path):
    out = tmp_path / "hostile.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "hostile.py"), "--json", str(out), "--fetch-timeout", "3"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["attack"]: row for row in result["rows"]}
    for name, row in rows.items():
        assert row["peak_rss_mib"] <= PEAK_MIB, (name, row)
        assert row["health_over_1s"] == 0 and row["health_worst_s"] < 1.0, (name, row)
    for name in ("PNG 20000×1", "PNG 1×100000", "PNG 100000×1",
                 "Content-Encoding: gzip, gzip (1 GiB inflated)", "Content-Encoding: gzip (1 GiB inflated)"):
        assert rows[name]["outcome"] == "refused ([])" and rows[name]["wall_s"] < 5, rows[name]
    assert rows["PNG 6000×6000, 2 classes"]["outcome"] == "predicted"  # 36 MP: segmented in bands, not refused
    assert rows["2 × PNG 4000×4000 at once, 2 classes"]["outcome"] == "predicted predicted"
    calibrations = [row for row in result["rows"] if "calibration" in row["attack"]]
    assert {(r["width"], r["height"], r["classes"]) for r in calibrations} >= {(6000, 4000, 3), (6000, 6000, 2)}
    for row in calibrations:  # each photo predicted by a fresh backend, within the guard's estimate
        assert row["outcome"].startswith("predicted"), row
        grown = (row["peak_rss_mib"] - row["rss_before_mib"]) * 2**20
        assert grown <= segment_bytes((row["width"], row["height"]), row["classes"]), row
    assert rows["16-bit PNG 1024×768"]["outcome"] == "predicted"
    drip = rows["headers dripped 1 byte/s"]
    assert drip["drip_wall_s"] <= drip["fetch_timeout_s"] + 1.0 and drip["outcome"].endswith("predicted"), drip
    for name in ("/setup, 8.3 MB config", "/predict, 100 MiB chunked body", "/predict, 63 MiB JSON of empty lists"):
        assert "413" in rows[name]["outcome"], rows[name]
    assert result["log_tracebacks"] == 0, result["log_tail"]
