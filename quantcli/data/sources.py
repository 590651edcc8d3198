"""Calibration and evaluation data behind one interface, :class:`Dataset`, whatever the source.

The kind comes from the path (:func:`open_decoded`): ``.npz``/``.npy`` files or folders of them (below); image
folders (:mod:`.images`), ``.txt``/``.jsonl`` text with a tokenizer (:mod:`.text`), ``.wav`` files or folders
(:mod:`.audio`), decoded as the recipe's ``[data]`` section (:mod:`.config`) declares.  Decoded sources list
their samples up front, decode them chunk by chunk once per pass (each chunk checked like an .npz file), and
decode and check the first sample when opened, before any work.

Layout rules (the first axis of every array is the sample axis):

* a ``.npz`` file holds one array per model input, keyed by the input's name, plus optionally
  ``labels`` (integer class ids, one per sample);
* a folder of ``.npz`` files: each file is a chunk with the same keys, read one at a time;
* a folder of ``.npy`` files: each file is named ``<input name>.npy`` (``labels.npy`` for labels);
  a single-input model also accepts any file names, each file being a chunk of samples.

Everything is checked against the model's inputs before any inference runs: names, dtypes (an array
of the same kind, e.g. float64 for a float32 input, is cast), per-sample shapes against fixed dims,
sample counts, NaN/Inf *after* the cast to the input's dtype (float64 beyond float32's range is Inf there),
integer ids against the vocabulary of the embedding (Gather) they index, sequence lengths against the rows of a
position table sliced to the input's length (Slice(table, 0, Shape(input)[k])), emptiness, labels (1-D integers,
one per sample, in [0, classes) when the model's class count is known).  Iteration streams one chunk at a time.

``--samples N`` with ``--sample-by random|class`` picks a seeded subset (:mod:`.sampling`, :meth:`Dataset.select`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import QuantcliError
from . import sampling
from .config import DataSettings, SampleBy
from .decoded import Decoded, class_layout, sha256_of
from .npyfile import BLOCK_BYTES, NpyArray, open_npy, open_npz
from .specs import InputSpec, class_count, fmt_shape, input_specs, max_lengths, vocab_sizes  # noqa: F401

LABELS_KEY = "labels"
DEFAULT_BATCH = 16  # samples per run: peak memory is proportional to it, and flat in the number of samples
# ...and fewer where 16 samples would exceed 1M input values: a tapped run holds every activation of the batch
# (PP-OCRv4's text detector at 480x480: calibrate --samples 32 peaked at 2.3 GB with batch 16, 0.39 GB with 1)
BATCH_VALUES = 1 << 20


def source_kind(path: Path) -> str:
    """npz (.npz/.npy files and folders of them, and anything else: its own errors), images, text or audio."""
    suffix = path.suffix.lower()
    if path.is_file():
        return {".txt": "text", ".jsonl": "text", ".wav": "audio"}.get(suffix, "npz")
    if not path.is_dir() or any(path.glob("*.npz")) or any(path.glob("*.npy")):
        return "npz"
    from .audio import is_wav
    from .images import is_image

    files = [p for p in path.rglob("*") if p.is_file()]
    return "images" if any(map(is_image, files)) else "audio" if any(map(is_wav, files)) else "npz"


def open_decoded(path: Path, specs: Sequence[InputSpec], config: DataSettings | None) -> Decoded | None:
    """The decoded source a path is (image folder, text, WAV), or None for .npz/.npy data."""
    config = config or DataSettings()
    kind = source_kind(path)
    if kind == "images":
        from .images import ImageFolder

        return ImageFolder(path, specs, config.image)
    if kind == "text":
        from .text import TextFile

        return TextFile(path, specs, config.text)
    if kind == "audio":
        from .audio import AudioFiles

        return AudioFiles(path, specs, config.audio)
    return None


def data_sha256(path: str | Path, config: DataSettings | None = None) -> str:
    """sha256 of a data file, or of a folder's .npz/.npy files (names and contents, in name order); for a decoded
    source, of its sample files, the files its settings name (a tokenizer) and those settings."""
    p = Path(path)
    kind = source_kind(p)
    if kind != "npz":
        from .audio import is_wav
        from .images import is_image

        config = config or DataSettings()
        # the tokenizer by its contents (hashed below), not by how its path was spelled
        settings = {"images": config.image, "text": dataclasses.replace(config.text, tokenizer=""),
                    "audio": config.audio}[kind]
        extra = [Path(config.text.tokenizer)] if kind == "text" and config.text.tokenizer else []
        files = [p] if p.is_file() else class_layout(p, is_image if kind == "images" else is_wav)[0]
        return sha256_of(p, files + extra, settings)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.suffix in (".npz", ".npy"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" if f is not p else b"")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class Dataset:
    """A validated data source for one model. Iterate with :meth:`batches`."""

    def __init__(self, path: str | Path, specs: Sequence[InputSpec], *, labels_path: str | Path | None = None,
                 require_labels: bool = False, classes: int | None = None,
                 config: DataSettings | None = None) -> None:
        self.path = Path(path)
        self.labels_path = Path(labels_path) if labels_path is not None else None
        self.specs = list(specs)
        self.num_samples = 0
        self.sample_values = 0  # input values in one sample (of the first chunk)
        self.selection: np.ndarray | None = None  # chosen sample indices (select), in data order
        self.sample_by = SampleBy.FIRST
        self.decoded = open_decoded(self.path, self.specs, config) if self.path.exists() else None
        self._first: tuple[tuple[int, ...], dict[str, np.ndarray]] | None = None  # the checked first chunk, decoded
        found = self._scan_decoded() if self.decoded is not None else self._scan_chunks()
        if self.num_samples == 0:
            raise QuantcliError(f"{self.path}: the data set is empty (0 samples)")
        self.labels: np.ndarray | None = None
        if labels_path is not None:
            self.labels = _load_labels(Path(labels_path))
        else:
            self.labels = found
        if self.labels is not None:
            src = labels_path or self.path
            if self.labels.ndim != 1 or not np.issubdtype(self.labels.dtype, np.integer):
                raise QuantcliError(f"{src}: labels must be a 1-D integer array, got {self.labels.dtype} "
                                    f"with shape {self.labels.shape}")
            if len(self.labels) != self.num_samples:
                raise QuantcliError(f"{src}: {len(self.labels)} labels for {self.num_samples} samples")
            self.check_labels(classes)
        elif require_labels:
            raise QuantcliError(f"{self.path}: no '{LABELS_KEY}' array and no --labels file given")

    def _scan_chunks(self) -> np.ndarray | None:
        """.npz/.npy: every chunk read and checked; returns the labels found in the files (all or none)."""
        self._chunks = _discover_chunks(self.path, self.specs)
        self._counts: list[int] = []
        labels: list[np.ndarray] = []
        has_labels: list[bool] = []
        for chunk in self._chunks:
            arrays: dict = chunk.open()
            if LABELS_KEY in arrays:  # small: read now
                arrays[LABELS_KEY] = chunk.read(arrays[LABELS_KEY].read)
            n = chunk.read(lambda: self._check_chunk(chunk, arrays))
            self._counts.append(n)
            if n and not self.sample_values:
                self.sample_values = sum(_size(arrays[sp.name]) // n for sp in self.specs)
            self.num_samples += n
            has_labels.append(LABELS_KEY in arrays)
            if LABELS_KEY in arrays:
                labels.append(np.atleast_1d(arrays[LABELS_KEY]))
        if any(has_labels) and not all(has_labels):
            raise QuantcliError(f"{self.path}: some files have a '{LABELS_KEY}' array and others do not")
        return np.concatenate(labels) if labels and all(has_labels) else None

    def _scan_decoded(self) -> np.ndarray | None:
        """Decoded sources: the items listed; the first sample decoded, checked against the model and kept (every
        pass reuses it, so opening the data again costs one decode, not a chunk)."""
        src = self.decoded
        self.num_samples = len(src.items)
        if self.num_samples:
            first = [0]
            arrays = self._decode(first)
            self._first = (tuple(first), arrays)
            self.sample_values = sum(int(np.size(arrays[sp.name])) // len(first) for sp in self.specs)
        return src.labels

    def _decode(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Decode items (checked like a file chunk); items of the first chunk come from its kept decode."""
        kept_idx, kept = self._first if self._first is not None else ((), {})
        row = {i: r for r, i in enumerate(kept_idx)}
        missing = [i for i in indices if i not in row]
        fresh: dict[str, np.ndarray] = {}
        if missing:
            items = [self.decoded.items[i] for i in missing]
            fresh = self.decoded.load(items)
            where = items[0] if isinstance(items[0], Path) else self.path
            self._check_chunk(_Chunk(Path(str(where)), self.decoded.kind, ()), fresh)
        if len(missing) == len(indices):
            return fresh
        if not missing and list(indices) == list(kept_idx):
            return kept
        at = {i: r for r, i in enumerate(missing)}
        return {k: np.stack([kept[k][row[i]] if i in row else fresh[k][at[i]] for i in indices]) for k in
                (kept or fresh)}

    def verify_files(self) -> None:
        """Check that every file of a decoded source opens as its kind says (image headers; text and WAV headers
        are read when the data is opened), without decoding: ``run`` does this before it writes anything."""
        if self.decoded is not None:
            self.decoded.verify()

    @property
    def class_names(self) -> list[str]:
        return self.decoded.class_names if self.decoded is not None else []

    def select(self, n: int | None, by: SampleBy = SampleBy.AUTO, seed: int = 0) -> None:
        """Use only ``n`` samples, chosen as ``by`` says (:mod:`.sampling`); first-N needs nothing here (the
        ``limit`` of :meth:`batches`).  ``auto``: first for .npz/.npy, class for class folders, else random."""
        if by == SampleBy.AUTO:
            by = SampleBy.FIRST if self.decoded is None else (
                SampleBy.CLASS if self.decoded.labels is not None and self.class_names else SampleBy.RANDOM)
        chosen = sampling.choose(self.num_samples, n, by, self.labels, seed, str(self.path))
        self.sample_by = by if chosen is not None else SampleBy.FIRST
        if chosen is None:
            return
        self.selection = chosen
        self.num_samples = len(chosen)
        self.labels = self.labels[chosen] if self.labels is not None else None

    def class_histogram(self, limit: int | None = None) -> dict[str, int] | None:
        """Samples per class among those a pass with ``limit`` uses (None without labels)."""
        labels = None if self.labels is None else self.labels[:limit]
        return sampling.histogram(labels, self.class_names)

    # -- validation ---------------------------------------------------------------------------------
    def check_labels(self, classes: int | None) -> None:
        """Labels are class ids: never negative, and below the model's class count when it is known."""
        if self.labels is None or not len(self.labels):
            return
        src = self.labels_path or self.path
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0:
            raise QuantcliError(f"{src}: labels must be class ids >= 0, found {lo}")
        if classes is not None and hi >= classes:
            raise QuantcliError(f"{src}: label {hi} is out of range for a model with {classes} classes "
                                f"(expected 0..{classes - 1})")

    def _check_chunk(self, chunk: "_Chunk", arrays: dict[str, np.ndarray]) -> int:
        names = [s.name for s in self.specs]
        missing = [n for n in names if n not in arrays]
        if missing:
            raise QuantcliError(f"{chunk.path}: missing input(s) {', '.join(missing)}; "
                                f"the model's inputs are: {', '.join(names)}")
        extra = sorted(set(arrays) - set(names) - {LABELS_KEY})
        if extra:
            raise QuantcliError(f"{chunk.path}: unexpected array(s) {', '.join(extra)}; "
                                f"the model's inputs are: {', '.join(names)}")
        counts = set()
        for spec in self.specs:
            arr = arrays[spec.name]
            where = f"{chunk.path}: input '{spec.name}'"
            if arr.ndim == 0:
                raise QuantcliError(f"{where} is a scalar; the first axis must be the sample axis")
            if arr.dtype.kind != spec.dtype.kind and not (arr.dtype.kind in "iu" and spec.dtype.kind in "iu"):
                raise QuantcliError(f"{where} has dtype {arr.dtype}, the model expects {spec.dtype}")
            if spec.shape and arr.ndim != len(spec.shape):
                raise QuantcliError(f"{where} has shape {arr.shape}, the model expects "
                                    f"{fmt_shape(spec.shape)} (first axis = samples)")
            for i, (got, want) in enumerate(zip(arr.shape[1:], spec.shape[1:]), start=1):
                if isinstance(want, int) and got != want:
                    raise QuantcliError(f"{where} has shape {arr.shape}, the model expects "
                                        f"{fmt_shape(spec.shape)} (axis {i}: {got} != {want})")
            if arr.dtype.kind == "f" and _size(arr):
                _check_finite(where, arr, spec.dtype)
            for axis, longest in spec.max_len:
                if 0 < axis < arr.ndim and arr.shape[axis] > longest:
                    raise QuantcliError(f"{where} has length {arr.shape[axis]} on axis {axis}, longer than the "
                                        f"{longest} positions the model supports (its position table)")
            if spec.vocab is not None and arr.dtype.kind in "iu" and _size(arr):
                lo = hi = None
                for block in _blocks(arr):
                    if np.size(block):
                        b_lo, b_hi = int(block.min()), int(block.max())
                        lo = b_lo if lo is None else min(lo, b_lo)
                        hi = b_hi if hi is None else max(hi, b_hi)
                if lo < -spec.vocab or hi >= spec.vocab:
                    bad = hi if hi >= spec.vocab else lo
                    raise QuantcliError(f"{where} has id {bad}, outside the vocabulary of the embedding it indexes "
                                        f"({spec.vocab} entries: ids 0..{spec.vocab - 1})")
            counts.add(arr.shape[0])
        if len(counts) > 1:
            raise QuantcliError(f"{chunk.path}: inputs have different sample counts {sorted(counts)}")
        n = counts.pop() if counts else 0
        if LABELS_KEY in arrays:
            lab = np.asarray(arrays[LABELS_KEY])
            if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
                raise QuantcliError(f"{chunk.path}: labels must be a 1-D integer array, got {lab.dtype} "
                                    f"with shape {lab.shape}")
            if len(lab) != n:
                raise QuantcliError(f"{chunk.path}: {len(lab)} labels for {n} samples")
        return n

    # -- iteration ----------------------------------------------------------------------------------
    def default_batch_size(self, requested: int | None = None) -> int:
        """The model's fixed batch, else ``requested``, else DEFAULT_BATCH; always >= 1."""
        if requested is not None and requested < 1:
            raise QuantcliError(f"batch size must be at least 1, got {requested}")
        fixed = {s.batch_dim for s in self.specs if s.shape} - {None}
        if len(fixed) > 1:
            raise QuantcliError(f"{self.path}: the model's inputs fix different first-axis sizes "
                                f"{sorted(fixed)}; cannot tell the batch axis")
        if fixed:
            return int(fixed.pop())
        if self.decoded is not None and not self.decoded.equal_shapes:  # samples of their own sizes: one a run
            return requested or 1
        return requested or max(1, min(DEFAULT_BATCH, BATCH_VALUES // max(1, self.sample_values)))

    def samples(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield chunks of samples ({input: array[n, ...]}) with at most ``limit`` samples in all."""
        if self.decoded is not None or self.selection is not None:
            yield from self._chosen_samples(limit)
            return
        left = self.num_samples if limit is None else min(limit, self.num_samples)
        for chunk, count in zip(self._chunks, self._counts):
            if left <= 0:
                return
            arrays = chunk.open()
            n = min(left, count)
            step = self._block_rows(arrays)
            for start in range(0, n, step):
                yield chunk.read(lambda: {spec.name: arrays[spec.name].rows(start, min(n, start + step)).astype(
                    spec.dtype, copy=False) for spec in self.specs})
            left -= n

    def _chosen_samples(self, limit: int | None) -> Iterator[dict[str, np.ndarray]]:
        """Decoded sources, and .npz/.npy with a selection: only the chosen samples are decoded / kept."""
        chosen = self.selection if self.selection is not None else np.arange(self.num_samples)
        chosen = chosen[:limit] if limit is not None else chosen
        if self.decoded is not None:
            for group in self.decoded.groups(chosen.tolist()):
                arrays = self._decode(group)
                yield {sp.name: np.asarray(arrays[sp.name]).astype(sp.dtype, copy=False) for sp in self.specs}
            return
        start = 0
        for chunk, n in zip(self._chunks, self._counts):
            rows = chosen[(chosen >= start) & (chosen < start + n)] - start
            start += n
            if len(rows):
                arrays = chunk.open()
                step = self._block_rows(arrays)
                for i in range(0, len(rows), step):
                    part = rows[i:i + step]
                    yield chunk.read(lambda: {sp.name: arrays[sp.name].take(part).astype(sp.dtype, copy=False)
                                              for sp in self.specs})

    def _block_rows(self, arrays: dict[str, NpyArray]) -> int:
        """Samples read from a file at a time: about BLOCK_BYTES of all inputs together (at least one)."""
        return max(1, BLOCK_BYTES // max(1, sum(arrays[sp.name].row_bytes for sp in self.specs)))

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield model feeds of ``batch_size`` samples (the last one may be smaller unless the model's batch is fixed)."""
        if batch_size < 1:  # a batch of 0 would never fill: endless empty runs
            raise QuantcliError(f"batch size must be at least 1, got {batch_size}")
        fixed = any(s.batch_dim is not None for s in self.specs)
        buf: dict[str, list[np.ndarray]] = {s.name: [] for s in self.specs}
        have = 0
        for chunk in self.samples(limit):
            n = len(next(iter(chunk.values())))
            start = 0
            while start < n:
                take = min(batch_size - have, n - start)
                for k, v in chunk.items():
                    buf[k].append(v[start:start + take])
                have += take
                start += take
                if have == batch_size:
                    yield self._feeds(buf)
                    buf = {s.name: [] for s in self.specs}
                    have = 0
        if have and not fixed:
            yield self._feeds(buf)

    def _feeds(self, buf: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        try:
            feeds = {k: np.ascontiguousarray(np.concatenate(v)) for k, v in buf.items()}
        except ValueError:  # samples of different shapes (images without a fixed size, unpadded text)
            shapes = sorted({tuple(a.shape[1:]) for v in buf.values() for a in v})
            raise QuantcliError(f"{self.path}: samples of different shapes {shapes[0]} and {shapes[-1]} in one batch; "
                                "use --batch-size 1, or give them one size ([data.image] resize/crop, "
                                "[data.text] padding = \"max_length\")") from None
        for s in self.specs:
            if s.scalar:  # a rank-0 input takes one value per run: the batch's samples must agree on it
                v = feeds[s.name]
                if (v != v[0]).any():
                    raise QuantcliError(f"{self.path}: scalar input '{s.name}' differs within a batch of {len(v)} "
                                        "samples; use --batch-size 1 or group equal values")
                feeds[s.name] = np.asarray(v[0])
        return feeds

    def count_used(self, batch_size: int, limit: int | None = None) -> int:
        n = self.num_samples if limit is None else min(limit, self.num_samples)
        if any(s.batch_dim is not None for s in self.specs):
            return (n // batch_size) * batch_size
        return n


@dataclasses.dataclass
class _Chunk:
    path: Path
    kind: str  # "npz" | "npy-named" | "npy-single"
    files: tuple[Path, ...]
    single_input: str | None = None

    def open(self) -> dict[str, NpyArray]:
        """The chunk's arrays by name, headers read, rows read on demand (:mod:`.npyfile`)."""
        def arrays() -> dict[str, NpyArray]:
            if self.kind == "npz":
                return open_npz(self.path)
            if self.kind == "npy-single":
                return {self.single_input: open_npy(self.path)}
            return {f.stem: open_npy(f) for f in self.files}
        return self.read(arrays)

    def read(self, fn):
        """``fn()``, with a failure to read the file as one clear error."""
        try:
            return fn()
        except QuantcliError:
            raise
        except Exception as exc:
            raise QuantcliError(f"{self.path}: cannot read data ({type(exc).__name__}: {exc})") from None


def _check_finite(where: str, arr, dtype: np.dtype) -> None:
    """No NaN/Inf in ``arr`` once cast to ``dtype``; read a block at a time (the data is never held whole)."""
    bad = beyond = 0
    for block in _blocks(arr):
        with np.errstate(over="ignore", invalid="ignore"):
            cast = np.asarray(block).astype(dtype, copy=False)
        finite = int(np.count_nonzero(np.isfinite(cast)))
        if finite != np.size(block):
            bad += int(np.size(block)) - finite
            beyond += int(np.count_nonzero(np.isfinite(block))) - finite
    if bad:
        why = f" ({beyond} beyond {dtype}'s range)" if beyond > 0 else ""
        raise QuantcliError(f"{where} contains {bad} NaN/Inf value(s) as {dtype}{why}")


def _size(arr) -> int:
    return int(np.prod(arr.shape, dtype=np.int64))


def _blocks(arr) -> Iterator[np.ndarray]:
    """An array (in memory or an :class:`NpyArray`) a block of about BLOCK_BYTES at a time."""
    if isinstance(arr, NpyArray):
        yield from arr.blocks()
        return
    arr = np.asarray(arr)
    if arr.ndim == 0:
        yield arr
        return
    step = max(1, BLOCK_BYTES // max(1, arr.itemsize * _size(arr) // max(1, len(arr))))
    for start in range(0, len(arr), step):
        yield arr[start:start + step]


def _discover_chunks(path: Path, specs: Sequence[InputSpec]) -> list[_Chunk]:
    if not path.exists():
        raise QuantcliError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".npz":
            return [_Chunk(path, "npz", (path,))]
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise QuantcliError(f"{path}: a single .npy file can only feed a single-input model; "
                                    "use a .npz keyed by input name")
            return [_Chunk(path, "npy-single", (path,), specs[0].name)]
        raise QuantcliError(f"{path}: unsupported data file; expected .npz, .npy, .txt, .jsonl, .wav, or a folder "
                            "of .npz/.npy files, images or .wav files")
    npz = sorted(path.glob("*.npz"))
    npy = sorted(path.glob("*.npy"))
    if npz and npy:
        raise QuantcliError(f"{path}: mixes .npz and .npy files; use one kind")
    if npz:
        return [_Chunk(p, "npz", (p,)) for p in npz]
    if npy:
        names = {s.name for s in specs}
        stems = {p.stem for p in npy}
        if names <= stems:
            return [_Chunk(path, "npy-named", tuple(p for p in npy if p.stem in names | {LABELS_KEY}))]
        if len(specs) == 1:
            return [_Chunk(p, "npy-single", (p,), specs[0].name) for p in npy if p.stem != LABELS_KEY]
        raise QuantcliError(f"{path}: .npy files must be named after the model inputs "
                            f"({', '.join(sorted(names))}.npy)")
    raise QuantcliError(f"{path}: the folder has no .npz, .npy, image or .wav files")


def _load_labels(path: Path) -> np.ndarray:
    if not path.exists():
        raise QuantcliError(f"{path}: no such labels file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if LABELS_KEY not in z.files:
                    raise QuantcliError(f"{path}: no '{LABELS_KEY}' array (found: {', '.join(z.files)})")
                return z[LABELS_KEY]
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except QuantcliError:
        raise
    except Exception as exc:
        raise QuantcliError(f"{path}: cannot read labels ({type(exc).__name__}: {exc})") from None
