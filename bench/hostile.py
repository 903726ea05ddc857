"""Hostile inputs against the real backend process (issue 16): peak RSS per attack, /health latency during it,
and how long a dripping image server can hold a fetch — the numbers seediff_labelstudio/README.md's threat model
quotes.

The `seediff-labelstudio` command runs on builtin:shapes (CPU, defaults but for SEEDIFF_FETCH_TIMEOUT, which is
lowered to keep the run short) with a hostile image server on 127.0.0.1 (tests/hostile_server.py). Before each
attack the process's peak RSS is reset (/proc/<pid>/clear_refs); a thread asks /health every 50 ms throughout.

    python bench/hostile.py --out bench/results/hostile.md [--json hostile.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from hostile_server import HostileHost, gzip_of_zeros  # noqa: E402

CONFIG = """<View><Image name="image" value="$image"/>
<PolygonLabels name="poly" toName="image"><Label value="Circle" predicted_values="circle"/>
<Label value="Square" predicted_values="square"/></PolygonLabels></View>"""


def grey_png(path: Path, w: int, h: int, value: int = 128, bits: int = 8, disc: int | None = None) -> Path:
    """A valid w×h grey PNG written row by row (the pixels never exist in memory; a few KB to MB on disk); with
    ``disc``, a disc of that grey value (radius a quarter of the short side) in the middle, an object to find."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    def px(v: int) -> bytes:
        return bytes([v]) if bits == 8 else struct.pack(">H", v * 257)

    def row(y: int) -> bytes:
        if disc is None:
            return b"\x00" + px(value) * w
        r, cx, cy = min(w, h) / 4, w / 2, h / 2
        half = max(0.0, r * r - (y + 0.5 - cy) ** 2) ** 0.5
        x0, x1 = max(0, round(cx - half)), min(w, round(cx + half))
        return b"\x00" + px(value) * x0 + px(disc) * (x1 - x0) + px(value) * (w - x1)

    z = zlib.compressobj(6)
    raw = b"".join(z.compress(row(y)) for y in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def shapes_png(path: Path, w: int, h: int) -> Path:
    """A w×h RGB PNG written row by row: a red disc (left) and a blue square (right) on grey, each about a fifth
    of the photo, so the masks, their polygons and every full-size step are as large as real photos make them."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    r = min(w, h) // 4
    cx, cy, side = w // 4, h // 2, int(1.6 * r)
    x0, y0 = 3 * w // 4 - side // 2, h // 2 - side // 2
    z, rows = zlib.compressobj(6), []
    for y in range(h):
        row = bytearray(b"\x80" * (3 * w))
        dy = y - cy
        if abs(dy) < r:
            half = int((r * r - dy * dy) ** 0.5)
            row[3 * (cx - half):3 * (cx + half)] = b"\xdc\x1e\x1e" * (2 * half)
        if y0 <= y < y0 + side:
            row[3 * x0:3 * (x0 + side)] = b"\x1e\x3c\xe6" * side
        rows.append(z.compress(b"\x00" + bytes(row)))
    raw = b"".join(rows) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


# (width, height, classes): each read and segmented by a fresh backend, so its peak RSS growth over the RSS
# after start is what one task costs (in a process that ran tasks before, freed memory is reused and hides it)
CALIBRATIONS = ((3000, 3000, 1), (3000, 3000, 2), (3000, 3000, 5), (6000, 4000, 3), (6000, 6000, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} for {pid}")


class HealthProbe:
    """Ask /health every 50 ms (1 s timeout, like Label Studio) until stopped; keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self.misses, self.count = url, 0.0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = c.get(f"{self.url}/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - t0
                self.worst, self.count = max(self.worst, took), self.count + 1
                self.misses += (not ok) or took > 1.0
                self._stop.wait(0.05)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


WORDS = ["circle", "square", "triangle", "star", "ring"]


def _config(classes: int) -> str:
    labels = "".join(f'<Label value="{w.title()}" predicted_values="{w}"/>' for w in WORDS[:classes])
    return f'<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image">{labels}' \
           "</PolygonLabels></View>"


def _predict(url: str, refs: list[str], timeout: float = 120, config: str = CONFIG) -> list:
    tasks = [{"id": i, "data": {"image": r}} for i, r in enumerate(refs)]
    r = httpx.post(f"{url}/predict", json={"tasks": tasks, "label_config": config}, timeout=timeout)
    r.raise_for_status()
    return r.json()["results"]


def _outcome(results: list) -> str:
    return " ".join("predicted" if isinstance(x, dict) and x.get("result") else "refused ([])" for x in results)


def attacks(url: str, root: Path, host: HostileHost, fetch_timeout: float) -> list[tuple[str, object]]:
    """(name, callable → outcome text) for every hostile input."""
    for name, (w, h) in {"wide": (20000, 1), "tall": (1, 100000), "long": (100000, 1), "huge": (6000, 6000),
                         "big0": (4000, 4000)}.items():
        grey_png(root / f"{name}.png", w, h)
    grey_png(root / "big1.png", 4000, 4000, value=60)
    grey_png(root / "deep.png", 1024, 768, value=120, bits=16, disc=240)  # a light disc: something to find
    host.encoded("/gzip2.png", gzip_of_zeros(2**30, layers=2), "gzip, gzip")
    host.encoded("/gzip1.png", gzip_of_zeros(2**30), "gzip")
    host.drip_headers("/drip.png", every=1.0, limit_s=4 * fetch_timeout)
    labels = "".join(f'<Label value="L{i}"/>' for i in range(11000))
    heavy = CONFIG.replace('<Label value="Circle" predicted_values="circle"/>', labels)

    def drip():
        with cf.ThreadPoolExecutor(3) as pool:
            t0 = time.monotonic()
            slow = [pool.submit(_predict, url, [f"{host.url}/drip.png"]) for _ in range(2)]
            time.sleep(0.2)
            normal = pool.submit(_predict, url, [str(root / "deep.png")])
            walls = []
            for f in slow:
                f.result()
                walls.append(time.monotonic() - t0)
            return (f"2 dripped fetches: {_outcome([x for f in slow for x in f.result()])} after "
                    f"{max(walls):.1f} s (SEEDIFF_FETCH_TIMEOUT={fetch_timeout:g} s); a normal task meanwhile: "
                    f"{_outcome(normal.result())}"), {"drip_wall_s": max(walls), "fetch_timeout_s": fetch_timeout}

    def configs(n, text):
        def one(i):
            return httpx.post(f"{url}/setup", json={"project": i, "schema": text}, timeout=60).status_code
        with cf.ThreadPoolExecutor(min(n, 8)) as pool:
            codes = list(pool.map(one, range(n)))
        return f"HTTP {sorted(set(codes))} × {n}"

    def many_projects():
        for i in range(300):
            text = CONFIG.replace("</View>", "<!--" + "p" * (250_000 - len(CONFIG)) + f"{i}--></View>")
            httpx.post(f"{url}/setup", json={"project": 1000 + i, "schema": text}, timeout=60)
        return "all 200; the least recent dropped beyond SEEDIFF_PROJECT_STATE_BYTES (64 MiB)"

    def chunked():
        def body():
            yield b'{"tasks": [], "label_config": "'
            for _ in range(100):
                yield b"x" * 2**20
            yield b'"}'
        try:
            r = httpx.post(f"{url}/predict", content=body(), headers={"content-type": "application/json"}, timeout=60)
            return f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            return f"connection closed by the server ({type(exc).__name__})"

    def many_values(n=21 * 2**20):
        body = b'{"tasks": [], "label_config": ' + json.dumps(CONFIG).encode() + b', "x": [' + b"[]," * n + b"[]]}"
        r = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=60)
        return f"HTTP {r.status_code}"

    return [
        ("PNG 20000×1", lambda: _outcome(_predict(url, [str(root / "wide.png")]))),
        ("PNG 1×100000", lambda: _outcome(_predict(url, [str(root / "tall.png")]))),
        ("PNG 100000×1", lambda: _outcome(_predict(url, [str(root / "long.png")]))),
        ("PNG 6000×6000, 2 classes", lambda: _outcome(_predict(url, [str(root / "huge.png")]))),
        ("2 × PNG 4000×4000 at once, 2 classes", lambda: _outcome(
            [x for f in [cf.ThreadPoolExecutor(2).submit(_predict, url, [str(root / f"big{i}.png")]) for i in (0, 1)]
             for x in f.result()])),
        ("16-bit PNG 1024×768", lambda: _outcome(_predict(url, [str(root / "deep.png")]))),
        ("Content-Encoding: gzip, gzip (1 GiB inflated)", lambda: _outcome(_predict(url, [f"{host.url}/gzip2.png"]))),
        ("Content-Encoding: gzip (1 GiB inflated)", lambda: _outcome(_predict(url, [f"{host.url}/gzip1.png"]))),
        ("headers dripped 1 byte/s", drip),
        ("/setup, 250 KiB config of 11000 labels × 3 at once", lambda: configs(3, heavy)),
        ("/setup, 8.3 MB config",
         lambda: configs(1, CONFIG.replace("</View>", "<!--" + "z" * 8_300_000 + "--></View>"))),
        ("/predict, 100 MiB chunked body", chunked),
        ("/predict, 63 MiB JSON of empty lists", many_values),
        ("/predict, JSON of 1.9 M values (under SEEDIFF_MAX_JSON_VALUES)", lambda: many_values(950_000)),
        ("/setup × 300 projects, 250 KB configs (75 MB)", many_projects),
    ]


def _start(cmd: list[str], env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    """A backend process on a free port, once /health answers 200; (process, base URL)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cmd + ["--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise SystemExit(f"backend did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def calibrate(cmd: list[str], env: dict, root: Path, w: int, h: int, classes: int) -> dict:
    """One photo of shapes read and segmented by a fresh backend: its peak RSS and growth per pixel over the RSS
    after start, next to the guard's estimate (``limits.segment_bytes``)."""
    from seediff_labelstudio.limits import segment_bytes

    photo = shapes_png(root / f"shapes{w}x{h}.png", w, h)
    proc, url = _start(cmd, env, root / f"calibration{w}x{h}x{classes}.log")
    try:
        base = _status(proc.pid, "VmRSS")
        t0 = time.monotonic()
        out = _outcome(_predict(url, [str(photo)], config=_config(classes)))
        wall = time.monotonic() - t0
        peak = _status(proc.pid, "VmHWM")
    finally:
        _stop(proc)
    per_pixel = round((peak - base) * 2**20 / (w * h), 1)
    estimate = segment_bytes((w, h), classes) / (w * h)
    return {"attack": f"PNG {w}×{h} of shapes, {classes} class{'es' if classes > 1 else ''}, fresh process "
                      "(calibration)",
            "outcome": f"{out}, {per_pixel} bytes/pixel (guard's estimate {estimate:.1f})", "wall_s": round(wall, 2),
            "peak_rss_mib": peak, "rss_before_mib": base, "health_worst_s": 0.0, "health_probes": 0,
            "health_over_1s": 0, "bytes_per_pixel": per_pixel, "estimate_bytes_per_pixel": estimate,
            "width": w, "height": h, "classes": classes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="markdown section to write")
    ap.add_argument("--json", type=Path, help="raw numbers as JSON")
    ap.add_argument("--fetch-timeout", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="seediff-hostile-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEEDIFF_", "LABEL_STUDIO_", "BASIC_AUTH_"))}
    env.update(HF_HUB_OFFLINE="1", SEEDIFF_MODEL="builtin:shapes", SEEDIFF_DEVICE="cpu",
               SEEDIFF_ALLOWED_ROOTS=str(tmp), SEEDIFF_ALLOWED_PRIVATE_HOSTS="127.0.0.1",
               SEEDIFF_FETCH_TIMEOUT=str(args.fetch_timeout), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    script = Path(sys.executable).with_name("seediff-labelstudio")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "seediff_labelstudio.server"]
    rows = []
    for w, h, classes in CALIBRATIONS:
        rows.append(calibrate(cmd, env, tmp, w, h, classes))
        print(json.dumps(rows[-1]), file=sys.stderr)
    host = HostileHost()
    proc, url = _start(cmd, env, tmp / "backend.log")
    try:
        base = _status(proc.pid, "VmRSS")
        for name, attack in attacks(url, tmp, host, args.fetch_timeout):
            before = _status(proc.pid, "VmRSS")
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
            with HealthProbe(url) as probe:
                t0 = time.monotonic()
                out = attack()
                wall = time.monotonic() - t0
            extra = {}
            if isinstance(out, tuple):
                out, extra = out
            peak = _status(proc.pid, "VmHWM")
            row = {"attack": name, "outcome": out, "wall_s": round(wall, 2), "peak_rss_mib": peak,
                   "rss_before_mib": before,
                   "rss_after_mib": _status(proc.pid, "VmRSS"), "health_worst_s": round(probe.worst, 3),
                   "health_probes": probe.count, "health_over_1s": probe.misses, **extra}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    finally:
        _stop(proc)
        host.close()
    result = {"base_rss_mib": base, "rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "log_tracebacks": sum(log.read_text().count("Traceback") for log in tmp.glob("*.log")),
              "log_tail": (tmp / "backend.log").read_text()[-4000:]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    lines = [f"`python bench/hostile.py --out bench/results/hostile.md` — {result['machine']}, "
             "builtin:shapes on CPU, "
             f"SEEDIFF_FETCH_TIMEOUT={args.fetch_timeout:g} s, other settings at their defaults. Backend RSS after "
             f"start: {base} MiB. Peak RSS is the process's VmHWM, reset before each attack; /health is asked every "
             "50 ms throughout (Label Studio waits 1 s). Calibration rows: a fresh backend per photo, its growth "
             "over the RSS after start per pixel, next to the SEEDIFF_MAX_TASK_BYTES guard's estimate.", "",
             "| attack | outcome | wall s | peak RSS MiB | /health worst ms (probes, > 1 s) |", "|---|---|---|---|---|"]
    for r in rows:
        health = f"{1000 * r['health_worst_s']:.0f} ({r['health_probes']}, {r['health_over_1s']})" \
            if "calibration" not in r["attack"] else "—"
        lines.append(f"| {r['attack']} | {r['outcome']} | {r['wall_s']:.1f} | {r['peak_rss_mib']} | {health} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
