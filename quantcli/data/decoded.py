"""The one interface every decoded source (image folders, text files, WAV audio) implements for
:class:`quantcli.data.sources.Dataset`: its samples are *items* listed up front without decoding (file names,
text lines, audio windows), with their class labels where the layout gives them; :meth:`Decoded.load` decodes
and preprocesses a group of items into model inputs ({input name: array[n, ...]}), each item once per pass;
:meth:`Decoded.groups` says which items are decoded together (a chunk).  Optional decoders are imported through
:func:`require`, which names the pip extra that installs them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import QuantcliError
from .specs import InputSpec

CHUNK = 32  # items decoded together: bounded memory; each chunk is checked against the model as it is decoded

EXTRAS = {"PIL": ("Pillow", "images"), "tokenizers": ("tokenizers", "text")}


def require(module: str, what: str):
    """Import an optional decoder, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = EXTRAS[module.split(".")[0]]
        raise QuantcliError(f"{what} needs {package}, which is not installed: pip install 'quantcli[{extra}]'"
                            ) from None


class Decoded:
    """Base of the decoded sources; subclasses set the fields in ``__init__`` and implement :meth:`load`."""

    kind = ""

    def __init__(self, path: Path, specs: Sequence[InputSpec], settings) -> None:
        self.path = path
        self.specs = list(specs)
        self.settings = settings
        self.items: list = []
        self.labels: np.ndarray | None = None
        self.class_names: list[str] = []
        self.files: list[Path] = []  # every file the samples come from
        self.equal_shapes = True     # every sample gets one shape (else decoded and batched one at a time)

    def load(self, items: list) -> dict[str, np.ndarray]:  # pragma: no cover - every subclass has one
        raise NotImplementedError

    def verify(self) -> None:
        """Open every file far enough to know it is readable (default: nothing beyond what opening read)."""

    def groups(self, indices: Sequence[int]) -> list[list[int]]:
        """Chunks of item indices decoded together (in order)."""
        idx = list(indices)
        size = CHUNK if self.equal_shapes else 1
        return [idx[i:i + size] for i in range(0, len(idx), size)]


def sha256_of(root: Path, files: list[Path], settings) -> str:
    """sha256 of the settings (as plain JSON) and of the files (names relative to ``root``, and contents)."""
    from ..recipe import to_plain

    h = hashlib.sha256(json.dumps(to_plain(settings), sort_keys=True).encode())
    base = root if root.is_dir() else root.parent
    for f in files:
        h.update(str(f.relative_to(base) if f.is_relative_to(base) else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def class_layout(folder: Path, is_sample) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """Sample files of a folder: flat (sorted names, no labels) or one sub-folder per class (class ids in sorted
    folder-name order, files sorted within each).  Mixing both is an error naming the folder."""
    flat = sorted(p for p in folder.iterdir() if p.is_file() and is_sample(p))
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and any(is_sample(p) for p in d.iterdir()))
    if flat and classes:
        raise QuantcliError(f"{folder}: has both sample files and class sub-folders ({classes[0].name}/...); "
                            "use one layout")
    if not classes:
        return flat, None, []
    files, labels = [], []
    for cid, d in enumerate(classes):
        members = sorted(p for p in d.iterdir() if p.is_file() and is_sample(p))
        files += members
        labels += [cid] * len(members)
    return files, np.asarray(labels, np.int64), [d.name for d in classes]


def find_spec(specs: Sequence[InputSpec], path: Path, what: str, kinds: str = "fu") -> InputSpec:
    """The one model input a single-tensor source (images, audio) feeds."""
    fitting = [s for s in specs if s.dtype.kind in kinds]
    if len(specs) != 1 or not fitting:
        names = ", ".join(f"{s.name} ({s.dtype})" for s in specs)
        raise QuantcliError(f"{path}: {what} feed a model with one numeric input; this model's inputs are: {names}")
    return fitting[0]
