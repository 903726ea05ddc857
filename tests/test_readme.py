"""README's Python API example runs as written on the bundled model (guards against examples that lie)."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from seediff.masks import ClassMasks
from seediff.testing.shapes import make_scene

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    """The first ```python block after the '## Python API' heading."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python API section has no python block"
    return match.group(1)


def test_python_api_example_runs(tmp_path, monkeypatch):
    # Guards the bug where the example chained set_image(...).predict(...) though set_image returns None.
    Image.fromarray(make_scene(0, n_objects=2).image).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_api_example(), str(README), "exec"), namespace)
    masks = namespace["masks"]
    assert isinstance(masks, ClassMasks) and masks.labels == ["circle", "square"]
    assert masks.masks.shape[1:] == (32, 32)
