"""Shared fixtures: a random-weight tiny SD pipeline built offline once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

# One thread: the tiny models are dominated by per-op overhead (one tiny generation: 0.5 s with 1 thread vs
# 30 s with 2 on a loaded 2-core box), and results are then independent of the machine's core count.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipe_path(tmp_path_factory):
    """Folder of a random-weight tiny pipeline saved with ``save_pretrained`` (built offline)."""
    from seediff.testing import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny") / "pipe"
    build_tiny_pipeline(path)
    return path


@pytest.fixture(scope="session")
def tiny_pipe(tiny_pipe_path):
    """The tiny pipeline loaded back through ``seediff.load_pipeline`` on the CPU."""
    from seediff import load_pipeline

    return load_pipeline(tiny_pipe_path, device="cpu")
