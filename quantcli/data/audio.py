"""WAV audio -> fixed-length windows, as ``[data.audio]`` declares (stdlib :mod:`wave` and numpy: no extra).

A ``.wav`` file, or a folder of them (flat, or one sub-folder per class = labels).  PCM 8/16/24/32-bit is read
as float in [-1, 1), channels are averaged to mono, a file at another rate is resampled to ``sample_rate``
(band-limited: its spectrum cut or zero-extended, :func:`resample`), then cut into windows of ``window`` samples
every ``hop`` samples (0: no overlap); the last partial window is zero-padded (``pad_last``) or dropped.  Each
window is a sample, fed as ``[N, window]`` or ``[N, 1, window]`` by the model input's rank; a file's windows are
decoded together, once.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import QuantcliError
from .config import AudioSettings
from .decoded import Decoded, class_layout, find_spec
from .specs import InputSpec, fmt_shape


def is_wav(p: Path) -> bool:
    return p.suffix.lower() == ".wav"


class AudioFiles(Decoded):
    kind = "audio"

    def __init__(self, path: Path, specs: Sequence[InputSpec], settings: AudioSettings) -> None:
        super().__init__(path, specs, settings)
        if settings.sample_rate < 1 or settings.window < 1:
            raise QuantcliError("[data.audio] sample_rate and window must be at least 1")
        self.spec = find_spec(specs, path, "WAV files", kinds="f")
        if len(self.spec.shape) not in (2, 3) or (len(self.spec.shape) == 3 and self.spec.shape[1] not in (1, None)) \
                or not _fits(self.spec.shape[-1], settings.window):
            raise QuantcliError(f"{path}: audio windows of {settings.window} samples are fed as [N, window] or "
                                f"[N, 1, window]; the model's input '{self.spec.name}' is {fmt_shape(self.spec.shape)}")
        files, labels, self.class_names = (([path], None, []) if path.is_file()
                                           else class_layout(path, is_wav))
        self.files = files
        counts = [_window_count(_frames_at(f, settings.sample_rate), settings) for f in files]
        self.items = [(fi, w) for fi, n in enumerate(counts) for w in range(n)]
        if labels is not None:
            self.labels = np.repeat(labels, counts).astype(np.int64)

    def groups(self, indices: Sequence[int]) -> list[list[int]]:
        """One chunk per file: its windows are cut from one decode."""
        out: list[list[int]] = []
        for i in indices:
            if out and self.items[out[-1][-1]][0] == self.items[i][0]:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def load(self, items: list) -> dict[str, np.ndarray]:
        s = self.settings
        signal = read_wav(self.files[items[0][0]], s.sample_rate)
        hop = s.hop or s.window
        need = (max(w for _, w in items) * hop) + s.window
        signal = np.pad(signal, (0, max(0, need - len(signal))))
        x = np.stack([signal[w * hop:w * hop + s.window] for _, w in items]).astype(self.spec.dtype)
        return {self.spec.name: x[:, None, :] if len(self.spec.shape) == 3 else x}


def _fits(dim, window: int) -> bool:
    return not isinstance(dim, int) or dim == window


def _window_count(frames: int, s: AudioSettings) -> int:
    hop = s.hop or s.window
    if frames < s.window:
        return 1 if s.pad_last and frames > 0 else 0
    full = (frames - s.window) // hop + 1
    return full + (1 if s.pad_last and (frames - s.window) % hop else 0)


def _open(path: Path):
    try:
        return wave.open(str(path), "rb")
    except (wave.Error, EOFError, OSError) as exc:
        raise QuantcliError(f"{path}: not a PCM WAV file ({exc})") from None


def _frames_at(path: Path, rate: int) -> int:
    """Samples the file has at ``rate`` (from the header only)."""
    with _open(path) as w:
        n, sr = w.getnframes(), w.getframerate()
    return n if sr == rate else int(round(n * rate / sr))


def read_wav(path: Path, rate: int) -> np.ndarray:
    """Mono float32 samples in [-1, 1) at ``rate``."""
    with _open(path) as w:
        width, channels, sr = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width not in (1, 2, 3, 4):
        raise QuantcliError(f"{path}: {8 * width}-bit samples are not supported (PCM 8, 16, 24 or 32-bit)")
    b = np.frombuffer(raw, np.uint8)
    if width == 1:
        x = (b.astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        t = b.reshape(-1, 3).astype(np.int32)
        x = (((t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)) << 8) >> 8).astype(np.float32) / 2.0 ** 23
    else:
        x = np.frombuffer(raw, f"<i{width}").astype(np.float64 if width == 4 else np.float32) / 2.0 ** (8 * width - 1)
    x = x.reshape(-1, channels).mean(axis=1)
    return resample(x, sr, rate).astype(np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a whole signal: the real FFT truncated (downsampling: what the new rate cannot
    carry is dropped) or zero-extended (upsampling), scaled to keep amplitudes."""
    if rate_in == rate_out or len(x) == 0:
        return x
    n_out = int(round(len(x) * rate_out / rate_in))
    spec = np.fft.rfft(x.astype(np.float64))
    keep = n_out // 2 + 1
    spec = spec[:keep] if len(spec) >= keep else np.pad(spec, (0, keep - len(spec)))
    return np.fft.irfft(spec, n_out) * (n_out / len(x))
