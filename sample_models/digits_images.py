"""Write the digits samples' images as PNG files, the layout ``quantcli --data`` reads as an image folder.

    python sample_models/digits_images.py OUT      # OUT/calib/*.png (128, flat), OUT/eval/<digit>/*.png (360)

The images are scikit-learn's 8x8 digits (grey levels 0..16) that ``digits_cnn-*.npz`` hold upsampled to 32x32
and normalized; they are recovered exactly from those files (the upsampling is linear and has full column rank:
least squares, then rounding to the 17 grey levels) and written as 8x8 8-bit greyscale PNGs with pixel = 15 *
level (0..240).  ``recipes/digits-cnn-images.toml`` declares the preprocessing that gives the model's input back:
grey, bilinear resize to 32x32, x / 240, (x - 0.3054) / 0.3237.  Needs numpy and Pillow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MEAN, STD = 0.3054, 0.3237  # digits_cnn's normalization (its doc string)


def _upsample_matrix(n: int = 8, size: int = 32) -> np.ndarray:
    """Bilinear upsampling n -> size with half-pixel centers (align_corners=False) as a matrix."""
    u = np.zeros((size, n))
    for i in range(size):
        c = min(max((i + 0.5) * n / size - 0.5, 0.0), n - 1.0)
        lo = int(np.floor(c))
        hi = min(lo + 1, n - 1)
        u[i, lo] += 1 - (c - lo)
        u[i, hi] += c - lo
    return u


def levels(x: np.ndarray) -> np.ndarray:
    """[N, 1, 32, 32] normalized inputs -> [N, 8, 8] grey levels 0..16."""
    pinv = np.linalg.pinv(_upsample_matrix())
    images = (x[:, 0].astype(np.float64) * STD + MEAN) * 16.0
    return np.clip(np.rint(pinv @ images @ pinv.T), 0, 16).astype(np.uint8)


def write(out: Path) -> tuple[int, int]:
    from PIL import Image

    calib = np.load(HERE / "digits_cnn-calib.npz")["input"]
    ev = np.load(HERE / "digits_cnn-eval.npz")
    (out / "calib").mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(levels(calib)):
        Image.fromarray(img * 15).save(out / "calib" / f"{i:03d}.png")
    for i, (img, label) in enumerate(zip(levels(ev["input"]), ev["labels"])):
        folder = out / "eval" / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img * 15).save(folder / f"{i:03d}.png")
    return len(calib), len(ev["labels"])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    n_cal, n_eval = write(Path(sys.argv[1]))
    print(f"wrote {n_cal} calibration and {n_eval} evaluation images under {sys.argv[1]}")
