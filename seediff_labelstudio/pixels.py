"""Decoded images of any PIL mode → 8-bit RGB with the scaling each mode means (a 16-bit PNG must not become a
white picture, which is what a plain ``convert("RGB")`` makes of it)."""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["rgb_image"]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def rgb_image(im: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB (``im`` itself if it already is), each mode scaled to what it means.

    16-bit grey (I;16*, and I: how 16-bit PNG/TIFF open) → ÷257; float (F) in [0, 1] → ×255; transparency (LA,
    RGBA, PA, P with a transparent index) composited over white, as Label Studio shows it on its white canvas;
    CMYK, YCbCr, 1, L, P by PIL's conversion. ValueError for a 32-bit integer image outside 0–65535, a float
    image outside [0, 1] (no scale to assume) and modes PIL cannot convert.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(im)
        if mode == "I" and a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ValueError("the image has 32-bit integer pixels outside 0–65535: no scale to show it with")
        grey = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError("the image has floating-point pixels outside [0, 1]: no scale to show it with")
        return Image.fromarray(np.rint(a * 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    raise ValueError(f"image mode {mode!r} is not supported")
