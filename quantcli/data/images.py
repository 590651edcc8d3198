"""Image files -> model inputs, with the preprocessing a ``[data.image]`` recipe section declares (the order and
the resize modes are documented in :mod:`quantcli.data.config`).  Pillow decodes (``pip install
'quantcli[images]'``); the arithmetic after the resize is float32 numpy, so the result is deterministic.

Conventions followed where a family defines them: ``shorter`` + ``crop`` are torchvision's ``Resize(int)`` (the
long side ``int(size * long / short)``) and ``CenterCrop`` (offsets ``round((H - h) / 2)``); ``letterbox`` is
Ultralytics' (scale ``min(H/h, W/w)``, new size rounded, padding split ``round(d - 0.1)`` / ``round(d + 0.1)``);
``height`` is PaddleOCR's recognition resize (width ``min(W, ceil(H * w / h))``, padded on the right).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import QuantcliError
from .config import Color, DType, ImageSettings, Layout, Resize
from .decoded import Decoded, class_layout, find_spec, require
from .specs import InputSpec, fmt_shape

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def is_image(p: Path) -> bool:
    return p.suffix.lower() in EXTENSIONS


class ImageFolder(Decoded):
    kind = "images"

    def __init__(self, path: Path, specs: Sequence[InputSpec], settings: ImageSettings) -> None:
        super().__init__(path, specs, settings)
        self.pil = require("PIL.Image", "reading images")
        check_settings(settings)
        self.spec = find_spec(specs, path, "image folders", kinds="fiu")
        self.files, self.labels, self.class_names = class_layout(path, is_image)
        self.items = list(self.files)
        self.equal_shapes = output_hw(settings) is not None
        self._check_shape()
        dtype = self.spec.dtype if settings.dtype == DType.AUTO else np.dtype(settings.dtype.value)
        if dtype.kind in "iu" and (settings.scale != 1.0 or set(settings.mean) != {0.0} or set(settings.std) != {1.0}):
            raise QuantcliError(f"{path}: the model's input '{self.spec.name}' is {dtype}: it takes raw pixels; set "
                                "[data.image] scale = 1.0, mean = [0.0], std = [1.0]")

    def _check_shape(self) -> None:
        """The per-sample shape the settings produce, against the model input's fixed dims (before decoding)."""
        s, spec = self.settings, self.spec
        hw = output_hw(s)
        if hw is None or len(spec.shape) != 4:
            if len(spec.shape) != 4:
                raise QuantcliError(f"{self.path}: images give [N, C, H, W] or [N, H, W, C], the model's input "
                                    f"'{spec.name}' is {fmt_shape(spec.shape)}")
            return
        c = 1 if s.color == Color.GRAY else 3
        shape = (c, *hw) if s.layout == Layout.NCHW else (*hw, c)
        for axis, (got, want) in enumerate(zip(shape, spec.shape[1:]), start=1):
            if isinstance(want, int) and got != want:
                raise QuantcliError(f"{self.path}: [data.image] gives samples of shape {list(shape)} "
                                    f"({s.layout.value}), the model's input '{spec.name}' expects "
                                    f"{fmt_shape(spec.shape)} (axis {axis}: {got} != {want})")

    def verify(self) -> None:
        """Every image's header (Pillow reads the header on open, the pixels only on load)."""
        for path in self.files:
            try:
                with self.pil.open(path):
                    pass
            except Exception as exc:  # PIL raises many kinds (UnidentifiedImageError, OSError, DecompressionBomb...)
                raise _unreadable(path, exc) from None

    def load(self, items: list) -> dict[str, np.ndarray]:
        arrays = [self._one(p) for p in items]
        first = arrays[0].shape
        for p, a in zip(items, arrays):
            if a.shape != first:
                raise QuantcliError(f"{p}: preprocesses to shape {list(a.shape)}, other images to {list(first)}; "
                                    "set [data.image] resize (and crop) so every image gets one size")
        return {self.spec.name: np.stack(arrays)}

    def _one(self, path: Path) -> np.ndarray:
        try:
            with self.pil.open(path) as im:
                im = im.convert("L" if self.settings.color == Color.GRAY else "RGB")
                return preprocess(im, self.settings, self.spec.dtype)
        except QuantcliError:
            raise
        except Exception as exc:  # PIL raises many kinds (UnidentifiedImageError, OSError, DecompressionBomb...)
            raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> QuantcliError:
    return QuantcliError(f"{path}: cannot decode the image ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})")


def _hw(v: list[int], what: str) -> tuple[int, int]:
    if len(v) not in (1, 2) or any(x < 1 for x in v):
        raise QuantcliError(f"[data.image] {what}: expected [S] or [H, W] with positive sizes, got {v}")
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def check_settings(s: ImageSettings) -> None:
    if s.resize != Resize.NONE:
        _hw(s.size, "size")
    elif s.size:
        raise QuantcliError("[data.image] size is set but resize = 'none'; set resize (exact, shorter, letterbox, "
                            "height)")
    if s.resize == Resize.SHORTER and len(s.size) != 1:
        raise QuantcliError(f"[data.image] resize = 'shorter' takes one size (the shorter side), got {s.size}")
    if s.crop:
        _hw(s.crop, "crop")
    channels = 1 if s.color == Color.GRAY else 3
    for name in ("mean", "std"):
        v = getattr(s, name)
        if len(v) not in (1, channels):
            raise QuantcliError(f"[data.image] {name}: {len(v)} values for {channels} channel(s) ({s.color.value})")
    if any(x == 0 for x in s.std):
        raise QuantcliError("[data.image] std: must not be 0")


def output_hw(s: ImageSettings) -> tuple[int, int] | None:
    """Height and width every image gets, or None where it depends on the image (no resize, no crop)."""
    if s.crop:
        return _hw(s.crop, "crop")
    if s.resize in (Resize.EXACT, Resize.LETTERBOX, Resize.HEIGHT):
        return _hw(s.size, "size")
    return None


def preprocess(im, s: ImageSettings, model_dtype: np.dtype) -> np.ndarray:
    """One decoded Pillow image (mode L or RGB) -> one sample array."""
    im, pad = _resize(im, s)
    if s.crop:
        im = _center_crop(im, *_hw(s.crop, "crop"))
    x = np.asarray(im, dtype=np.float32)
    x = x[:, :, None] if x.ndim == 2 else x
    if pad is not None:
        x = _pad(x, pad, s.pad_value)
    if s.color == Color.BGR:
        x = x[:, :, ::-1]
    x = x * np.float32(s.scale)
    x = (x - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)
    if s.layout == Layout.NCHW:
        x = x.transpose(2, 0, 1)
    dtype = model_dtype if s.dtype == DType.AUTO else np.dtype(s.dtype.value)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    return np.ascontiguousarray(x.astype(dtype))


def _resize(im, s: ImageSettings):
    """Resize per the mode; returns (image, padding (top, bottom, left, right) or None)."""
    if s.resize == Resize.NONE:
        return im, None
    from PIL import Image  # the image is Pillow's: Pillow is installed

    method = Image.Resampling[s.interpolation.value.upper()]
    w, h = im.size
    if s.resize == Resize.EXACT:
        H, W = _hw(s.size, "size")
        return im.resize((W, H), method), None
    if s.resize == Resize.SHORTER:
        side = s.size[0]
        nw, nh = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
        return im.resize((nw, nh), method), None
    H, W = _hw(s.size, "size")
    if s.resize == Resize.HEIGHT:
        nw = min(W, int(math.ceil(H * w / h)))
        return im.resize((nw, H), method), (0, 0, 0, W - nw)
    r = min(H / h, W / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    dw, dh = (W - nw) / 2, (H - nh) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    return im.resize((nw, nh), method), (top, H - nh - top, left, W - nw - left)


def _center_crop(im, H: int, W: int):
    w, h = im.size
    if H > h or W > w:
        raise QuantcliError(f"[data.image] crop {[H, W]} is larger than the resized image {[h, w]}")
    top, left = int(round((h - H) / 2.0)), int(round((w - W) / 2.0))
    return im.crop((left, top, left + W, top + H))


def _pad(x: np.ndarray, pad: tuple[int, int, int, int], value: float) -> np.ndarray:
    top, bottom, left, right = pad
    return np.pad(x, ((top, bottom), (left, right), (0, 0)), constant_values=np.float32(value))
