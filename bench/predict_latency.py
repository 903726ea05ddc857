"""Backend latency: one /predict per task broken down into fetch / read (VAE + UNet) / masks / results, as a
ratio to the model pass it needs, and throughput under 1, 4 and 16 concurrent clients — all in one run.

The app is the real one (``create_app``) served in-process by uvicorn on a loopback port and called over HTTP
(one keep-alive ``httpx.Client``), as Label Studio calls a deployed backend; images are PNG files under an
allowed root. Every measured task is a new image (the warm-up image is not reused: a repeated image is served
from the attention cache without a UNet pass). Starlette's ``TestClient`` (in-memory ASGI, an event-loop thread
per request), the harness of earlier runs, is still measured, alternating request by request on other images.

    python bench/predict_latency.py --model builtin:shapes --tasks 8 --out bench/results/predict_latency.md
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

CONFIG = """<View><Image name="image" value="$image"/>
<PolygonLabels name="poly" toName="image"><Label value="Circle" predicted_values="circle"/>
<Label value="Square" predicted_values="square"/></PolygonLabels></View>"""


def _images(root: Path, n: int, size: int) -> list[str]:
    """Shape scenes if the shapes world is there, else noise; written as PNG under ``root``."""
    from seediff.testing.shapes import SceneConfig, make_scene

    names = []
    for i in range(n):
        scene = make_scene(10_000 + i, SceneConfig(size=size))
        Image.fromarray(scene.image).save(root / f"t{i}.png")
        names.append(f"t{i}.png")
    return names


def _plain_read_s(model, root: Path, names: list[str]) -> float:
    """Mean seconds of the bare model pass on the measured photos: VAE encode + one UNet row, the backend's prompt."""
    import seediff
    from seediff_labelstudio.labels import label_plan

    prompt = model.options.prompt(label_plan(CONFIG).classes)
    seediff.read_photo(model.pipe, Image.open(root / names[0]), prompt, t=model.options.t)  # warm
    t0 = time.perf_counter()
    for name in names:
        seediff.read_photo(model.pipe, Image.open(root / name), prompt, t=model.options.t)
    return (time.perf_counter() - t0) / len(names)


def _serve(app) -> tuple[uvicorn.Server, int]:
    """The app served by uvicorn on a free loopback port, in a daemon thread; returns (server, port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            sys.exit("uvicorn did not start within 30 s")
        time.sleep(0.02)
    return server, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:shapes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from seediff_labelstudio.model import SeeDiffModel
    from seediff_labelstudio.server import create_app
    from seediff_labelstudio.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="seediff-bench-"))
    all_names = _images(root, 2 * args.tasks + 2, args.size)  # all distinct: no task hits the attention cache
    warm, names, test_names = all_names[:2], all_names[2 : args.tasks + 2], all_names[args.tasks + 2 :]
    settings = Settings.from_env({"SEEDIFF_MODEL": args.model, "SEEDIFF_DEVICE": args.device,
                                  "SEEDIFF_ALLOWED_ROOTS": str(root)})
    model = SeeDiffModel(settings)
    model.load()
    if not model.ready:
        sys.exit(f"model failed to load: {model.error}")
    app = create_app(settings, model)
    server, port = _serve(app)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)  # thread-safe, keep-alive
    test_client = TestClient(app)

    def predict(name: str, via=client) -> float:
        t0 = time.perf_counter()
        r = via.post("/predict", json={"tasks": [{"id": 1, "data": {"image": f"/data/local-files/?d={name}"}}],
                                       "label_config": CONFIG})
        assert r.status_code == 200 and len(r.json()["results"]) == 1, r.text[:300]
        return time.perf_counter() - t0

    predict(warm[0])  # warm-up, on images not measured
    predict(warm[1], test_client)
    walls, test_walls, test_unet = [], [], []
    d: dict[str, float] = {}
    for name, test_name in zip(names, test_names):  # alternate: load changes hit both harnesses alike
        before = dict(model.metrics)
        walls.append(predict(name))
        after = dict(model.metrics)
        for k in after:
            d[k] = d.get(k, 0.0) + (after[k] - before.get(k, 0.0)) / len(names)
        u0 = model.metrics["unet_s"]
        test_walls.append(predict(test_name, test_client))
        test_unet.append(model.metrics["unet_s"] - u0)
    wall = float(np.mean(walls))
    plain = _plain_read_s(model, root, names)
    rows = [("fetch", d.get("fetch_s", 0)),
            ("read photo (VAE encode + 1 UNet call; with presence its K+1 leave-one-out rows ride along)",
             d.get("unet_s", 0)),
            ("masks (SeeDiff)", d.get("masks_s", 0)), ("encode results", d.get("results_s", 0)),
            ("whole /predict (client wall)", wall)]
    unet = max(d.get("unet_s", 0), 1e-9)
    lines = [f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}. "
             f"Model `{args.model}`, {args.size}px images, {len(names)} tasks. "
             f"Command: `python bench/predict_latency.py {' '.join(sys.argv[1:])}`", "",
             "| stage | ms per task | × model pass |", "|---|---|---|"]
    lines += [f"| {name} | {1000 * v:.1f} | {v / unet:.2f} |" for name, v in rows]
    test_ratio = float(np.mean(test_walls)) / max(float(np.mean(test_unet)), 1e-9)
    lines += ["", f"**/predict ÷ model pass: {wall / unet:.2f}×** (target ≤ 1.3×; HTTP over loopback to uvicorn)", "",
              f"The plain model pass (the same photos read with one prompt row, no presence rows): "
              f"{1000 * plain:.1f} ms; **/predict with presence (SEEDIFF_PRESENCE, default on) ÷ plain model pass: "
              f"{wall / plain:.2f}×** (target ≤ 2×).",
              "",
              f"Same run, alternating request by request on {len(test_names)} other images, through Starlette's "
              f"TestClient (the harness of earlier runs): {1000 * float(np.mean(test_walls)):.1f} ms per task, "
              f"{test_ratio:.2f}× its model pass.", "",
              "| concurrent clients | requests | tasks/s | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for clients in (1, 4, 16):
        reqs = [names[i % len(names)] for i in range(max(8, 2 * clients))]
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            lat = sorted(pool.map(predict, reqs))
        total = time.perf_counter() - t0
        lines.append(f"| {clients} | {len(reqs)} | {len(reqs) / total:.1f} | {1000 * lat[len(lat) // 2]:.0f} | "
                     f"{1000 * lat[int(0.95 * (len(lat) - 1))]:.0f} |")
    server.should_exit = True
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
