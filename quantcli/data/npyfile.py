"""Arrays of ``.npy`` / ``.npz`` files read a block of rows at a time, never whole.

``np.load`` of an .npz member reads the whole array: a 128-sample calibration set of 800x608 images is
747 MB, held for the whole data pass (half of PicoDet's calibrate peak), though a pass needs one batch at a
time.  Nor are files memory-mapped: the pages of a mapped file count in the process's resident memory once
read, until it unmaps them.  Here the header says shape and dtype, and rows are read where they lie: in place
for a ``.npy`` file and an uncompressed ``.npz`` member (``np.savez``), by streaming the decompression for a
compressed one (``np.savez_compressed``: reading backwards starts it again).  Fortran-ordered arrays, whose rows
are not contiguous, are read whole on first use.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

BLOCK_BYTES = 1 << 25  # rows read at a time (32 MB)
PIECE_BYTES = 1 << 18  # a compressed member is decompressed this much at a time (zipfile holds a few copies)
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip member's local file header (zipfile.structFileHeader)


class NpyArray:
    """One array of a ``.npy`` file or an ``.npz`` member: ``shape``, ``dtype``, rows on demand."""

    def __init__(self, path: str | Path, member: str | None = None) -> None:
        self.path, self.member = Path(path), member
        self._start = 0          # where the .npy bytes begin in the file (uncompressed)
        self._stream: BinaryIO | None = None  # a compressed member's open stream, and its position
        self._zip: zipfile.ZipFile | None = None
        self._pos = 0
        self._whole: np.ndarray | None = None
        if member is not None:
            with zipfile.ZipFile(self.path) as zf:
                info = zf.getinfo(member)
                self._compressed = info.compress_type != zipfile.ZIP_STORED or bool(info.flag_bits & 0x1)
                if not self._compressed:
                    with open(self.path, "rb") as fh:
                        fh.seek(info.header_offset)
                        head = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
                        if head[0] != b"PK\x03\x04":
                            raise ValueError(f"bad zip member header for {member}")
                        self._start = info.header_offset + _LOCAL_HEADER.size + head[10] + head[11]
        else:
            self._compressed = False
        f = self._open_at(0)
        try:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = _read_header(f, version)
            self._data = f.tell() - self._start  # the rows' first byte, in the .npy data
        finally:
            if self._compressed:
                self._pos = self._data
            else:
                f.close()
        if dtype.hasobject:
            raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
        self.shape: tuple[int, ...] = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.fortran = bool(fortran) and len(self.shape) > 1
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize if self.shape else 0

    # -- file access -------------------------------------------------------------------------------------
    def _open_at(self, offset: int) -> BinaryIO:
        """A file object at ``offset`` bytes into the .npy data (its header is at 0)."""
        if not self._compressed:
            fh = open(self.path, "rb")
            fh.seek(self._start + offset)
            return fh
        if self._stream is None or offset < self._pos:
            self.close()
            self._zip = zipfile.ZipFile(self.path)
            self._stream = self._zip.open(self.member)
            self._pos = 0
        while offset > self._pos:  # forward: decompressed and dropped (zipfile's seek reads 16 MB at a time)
            skipped = len(self._stream.read(min(offset - self._pos, PIECE_BYTES)))
            if not skipped:
                break
            self._pos += skipped
        return self._stream

    def _read(self, offset: int, nbytes: int) -> np.ndarray:
        """``nbytes`` bytes from ``offset`` into a new buffer (in place, or PIECE_BYTES of decompressed data at a time:
        zipfile's read(n) of a compressed member holds a few copies of n)."""
        out = np.empty(nbytes, np.uint8)
        f = self._open_at(offset)
        got = 0
        try:
            if not self._compressed:
                got = f.readinto(memoryview(out))
            else:
                while got < nbytes:
                    piece = f.read(min(nbytes - got, PIECE_BYTES))
                    if not piece:
                        break
                    out[got:got + len(piece)] = np.frombuffer(piece, np.uint8)
                    got += len(piece)
                self._pos = offset + got
        finally:
            if not self._compressed:
                f.close()
        if got != nbytes:
            raise ValueError(f"{self.member or self.path.name}: the file is truncated (expected {nbytes} bytes "
                             f"at offset {offset}, got {got})")
        return out

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._zip is not None:
            self._zip.close()
        self._stream = self._zip = None
        self._pos = 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def read(self) -> np.ndarray:
        """The whole array."""
        if not self.shape:
            return self._read(self._data, self.dtype.itemsize).view(self.dtype).reshape(())
        return self.rows(0, self.shape[0])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (a new array, in C order)."""
        stop = min(stop, self.shape[0])
        start = min(start, stop)
        if self.fortran:
            if self._whole is None:
                f = self._open_at(0)
                try:
                    self._whole = np.lib.format.read_array(f, allow_pickle=False)
                finally:
                    if not self._compressed:
                        f.close()
                    self.close()
            return np.ascontiguousarray(self._whole[start:stop])
        raw = self._read(self._data + start * self.row_bytes, (stop - start) * self.row_bytes)
        return raw.view(self.dtype).reshape((stop - start,) + self.shape[1:])

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The rows at ``indices`` (in that order), read a run of consecutive rows at a time."""
        idx = np.asarray(indices, dtype=np.int64)
        if not len(idx):
            return np.empty((0,) + self.shape[1:], self.dtype)
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1
        parts = [self.rows(int(run[0]), int(run[-1]) + 1) for run in np.split(idx, cuts)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def block_rows(self) -> int:
        """Rows per block of :data:`BLOCK_BYTES` (at least one)."""
        return max(1, BLOCK_BYTES // max(1, self.row_bytes))

    def blocks(self) -> Iterator[np.ndarray]:
        """The whole array, a block of rows at a time."""
        if not self.shape:
            yield self.read()
            return
        step = self.block_rows()
        for start in range(0, self.shape[0], step):
            yield self.rows(start, start + step)
        self.close()


def _read_header(f, version) -> tuple:
    read = getattr(np.lib.format, "_read_array_header", None)
    if read is not None:
        return read(f, version)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def open_npz(path: str | Path) -> dict[str, NpyArray]:
    """The arrays of an .npz file by key, none read yet."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".npy")]
    return {n[:-4]: NpyArray(path, n) for n in names}


def open_npy(path: str | Path) -> NpyArray:
    return NpyArray(path)
