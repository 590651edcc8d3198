"""What a ``[data]`` recipe section declares: how raw files (images, text, audio) become model inputs.

Plain dataclasses and enums, no I/O (loading and merging presets is :mod:`quantcli.recipe`'s job).  The source
kind comes from the path: ``.npz``/``.npy`` (or a folder of them) as before; an image file folder (flat, or one
sub-folder per class); a ``.txt`` (one sample per non-blank line) or ``.jsonl`` file; a ``.wav`` file or a folder
of them.  Each decoded kind reads its own sub-table: ``[data.image]``, ``[data.text]``, ``[data.audio]``.

Image pipeline, in this order: decode (Pillow) -> color (gray / rgb / bgr) -> resize -> center crop -> float ->
pad (letterbox / height modes, ``pad_value`` in pixel units) -> ``* scale`` -> ``(x - mean) / std`` -> layout ->
dtype (the model input's unless set).  Resize modes: ``none``; ``exact`` to size [H, W]; ``shorter``: the
shorter side to size[0], the other side in proportion (torchvision's Resize(int)); ``letterbox``: the whole image
inside [H, W] keeping its aspect ratio, centered, the rest padded (YOLO); ``height``: height H keeping the aspect
ratio, width at most W, padded on the right to W (PP-OCR recognition).
"""

from __future__ import annotations

import dataclasses
import enum


class Color(str, enum.Enum):
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"


class Resize(str, enum.Enum):
    NONE = "none"
    EXACT = "exact"
    SHORTER = "shorter"
    LETTERBOX = "letterbox"
    HEIGHT = "height"


class Interpolation(str, enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"
    BOX = "box"


class Layout(str, enum.Enum):
    NCHW = "nchw"
    NHWC = "nhwc"


class DType(str, enum.Enum):
    AUTO = "auto"        # the model input's dtype
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    UINT8 = "uint8"


class SampleBy(str, enum.Enum):
    """How ``--samples N`` picks: ``first`` N (streamed; the default for .npz/.npy, as before), a seeded
    ``random`` subset, or seeded and stratified per ``class`` (class folders, or a labels array).  ``auto``:
    first for .npz/.npy, class for decoded sources with class folders, random for other decoded sources."""

    AUTO = "auto"
    FIRST = "first"
    RANDOM = "random"
    CLASS = "class"


@dataclasses.dataclass
class ImageSettings:
    color: Color = Color.RGB
    resize: Resize = Resize.NONE
    size: list[int] = dataclasses.field(default_factory=list)   # [H, W], or [S] (square; shorter: the side)
    interpolation: Interpolation = Interpolation.BILINEAR
    pad_value: float = 0.0                                        # in pixel units (0..255), before scale
    crop: list[int] = dataclasses.field(default_factory=list)   # center crop [H, W] or [S]
    scale: float = 1.0 / 255.0
    mean: list[float] = dataclasses.field(default_factory=lambda: [0.0])  # one value, or one per channel
    std: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    layout: Layout = Layout.NCHW
    dtype: DType = DType.AUTO


class Padding(str, enum.Enum):
    MAX_LENGTH = "max_length"   # every sequence padded (and truncated) to max_length: equal shapes, any batch
    NONE = "none"               # truncated only: samples of unequal length need --batch-size 1


@dataclasses.dataclass
class TextSettings:
    tokenizer: str = ""            # a tokenizer.json (Hugging Face `tokenizers` format)
    max_length: int = 128
    padding: Padding = Padding.MAX_LENGTH
    pad_id: int | None = None      # default: the tokenizer's own padding id, else 0
    add_special_tokens: bool = True
    field: str = "text"            # .jsonl: the key holding the text
    label_field: str = "label"     # .jsonl: the key holding an integer class id (optional, all lines or none)


@dataclasses.dataclass
class AudioSettings:
    sample_rate: int = 16000       # resampled to this rate (band-limited, FFT) when a file differs
    window: int = 16000            # samples per window at sample_rate
    hop: int = 0                   # samples between window starts (0: = window, no overlap)
    pad_last: bool = True          # zero-pad the last partial window (else drop it)


@dataclasses.dataclass
class DataSettings:
    preset: str = ""               # a packaged preset name or a TOML fragment path; this section's keys override it
    image: ImageSettings = dataclasses.field(default_factory=ImageSettings)
    text: TextSettings = dataclasses.field(default_factory=TextSettings)
    audio: AudioSettings = dataclasses.field(default_factory=AudioSettings)
