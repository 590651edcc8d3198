"""The calibration artifact: a JSON file that makes calibration reusable.

Format (``format: "quantcli-calibration"``, ``version: 2``)::

    {
      "format": "quantcli-calibration", "version": 2,
      "model": {"path": "...", "sha256": "<hash of the model file>"},
      "passes": ["name-nodes", ..., "fold-batchnorm", "cross-layer-equalization", "smoothquant"],
      "pass_data": {"smoothquant": {"groups": {"<layer input>": {"alpha": 0.5, "scales": [...], "event": [...]}}}},
      "samples": 128,
      "settings": {"method": "percentile", "percentile": 99.99, "bins": 2048, "batch_size": 32,
                   "data": "/absolute/path/of/the/data", "data_sha256": "<hash of the data (file, or folder's files)>",
                   ...},
      "tensors": {
        "<tensor name>": {"range": [lo, hi],
                          "stats": {<TensorObserver.to_dict(): min, max, moving averages, histogram>}}
      }
    }

``range`` holds the ranges of the method in ``settings``; the statistics allow any other method to be
applied later without running data again (:meth:`CalibrationArtifact.ranges`).  ``passes`` lists the
preparation passes that calibrate and convert must agree on (:mod:`quantcli.transforms.passes`, ``agree``),
in the order run: convert refuses an artifact whose list differs from its own.  ``pass_data`` holds what a
data-driven pass decided (SmoothQuant's per-layer scales), so convert applies the same without the data.

Version 1 (no ``passes``) is still read: its passes are the fixed preparation of that version plus
cross-layer equalization where its ``settings.cle`` is true.

The data is recorded by absolute path and hash, so convert finds it from any folder and refuses data that
changed since (:meth:`CalibrationArtifact.data_path`).  Loading validates everything it reads: settings in
their ranges, and per tensor finite statistics with min <= max, a positive histogram width, non-negative
counts and at least one bin; a damaged or hand-edited file is an error naming it (exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..errors import QuantcliError
from .estimators import estimate_range
from .observers import TensorObserver

FORMAT = "quantcli-calibration"
VERSION = 2
READS = (1, 2)


@dataclasses.dataclass
class CalibrationArtifact:
    model_sha256: str
    model_path: str
    samples: int
    settings: dict
    observers: dict[str, TensorObserver]
    manifest: dict = dataclasses.field(default_factory=dict)
    passes: list[str] = dataclasses.field(default_factory=list)  # the agreed preparation passes, in order
    pass_data: dict = dataclasses.field(default_factory=dict)    # pass name -> what it decided (SmoothQuant scales)
    source: str = ""  # the file it was loaded from (not saved)
    _data_checked: list = dataclasses.field(default_factory=list, repr=False)

    def data_path(self) -> str | None:
        """The calibration data as recorded, if it is still there (None if not); an error if it changed."""
        data = self.settings.get("data")
        if not data or data == "None" or not Path(data).exists():
            return None
        want = self.settings.get("data_sha256")
        if want and not self._data_checked:
            from ..data.sources import data_sha256

            got = data_sha256(data, self.data_settings())
            if got != want:
                raise QuantcliError(f"{self.source or 'calibration'}: its calibration data {data} changed since "
                                    f"calibrate (sha256 {got[:12]}..., recorded {want[:12]}...); re-run quantcli "
                                    "calibrate, or pass --data")
            self._data_checked.append(True)
        return data

    def data_settings(self):
        """How the recorded calibration data was decoded (DataSettings; the defaults for .npz/.npy data)."""
        from ..recipe import data_from_plain

        return data_from_plain(self.settings.get("data_config"))

    def ranges(self, method: str | None = None, percentile: float | None = None,
               symmetric: bool = False) -> dict[str, tuple[float, float]]:
        """Ranges of every tensor for ``method`` (default: the artifact's own method)."""
        method = method or self.settings["method"]
        pct = percentile if percentile is not None else self.settings.get("percentile", 99.99)
        levels = 255 if symmetric else 256
        out = {}
        for name in sorted(self.observers):
            obs = self.observers[name]
            if obs.count == 0:  # the tensor never held a finite value: a zero range (it carries no signal)
                out[name] = (0.0, 0.0)
                continue
            lo, hi = estimate_range(obs, method, percentile=pct, num_levels=levels, symmetric=symmetric)
            out[name] = (float(lo), float(hi))
        return out

    def range_of(self, name: str, method: str, percentile: float, symmetric: bool = False) -> tuple[float, float]:
        """One tensor's range with another method (per-node overrides)."""
        lo, hi = estimate_range(self.observers[name], method, percentile=percentile,
                                num_levels=255 if symmetric else 256, symmetric=symmetric)
        return float(lo), float(hi)

    def to_json(self) -> str:
        ranges = self.ranges()
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "model": {"path": self.model_path, "sha256": self.model_sha256},
            "passes": list(self.passes),
            **({"pass_data": self.pass_data} if self.pass_data else {}),
            "samples": self.samples,
            "settings": self.settings,
            "manifest": self.manifest,
            "tensors": {name: {"range": list(ranges[name]), "stats": self.observers[name].to_dict()}
                        for name in sorted(self.observers)},
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def recorded_data(path: str | Path | None) -> str | None:
    """The calibration data an artifact recorded, if it is still there (an input of convert / analyze)."""
    if path is None:
        return None
    data = load_artifact(path).settings.get("data")
    return data if data and data != "None" and Path(data).exists() else None


def load_artifact(path: str | Path) -> CalibrationArtifact:
    p = Path(path)
    if not p.exists():
        raise QuantcliError(f"{p}: no such calibration file")
    try:
        doc = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantcliError(f"{p}: not a calibration file (invalid JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise QuantcliError(f"{p}: not a quantcli calibration file (missing \"format\": \"{FORMAT}\")")
    if doc.get("version") not in READS:
        raise QuantcliError(f"{p}: calibration format version {doc.get('version')} is not supported "
                            f"(this quantcli reads versions {', '.join(map(str, READS))}); re-run quantcli calibrate")
    try:
        observers = {name: TensorObserver.from_dict(t["stats"]) for name, t in doc["tensors"].items()}
        settings = dict(doc["settings"])
        if doc["version"] == 1:
            from ..transforms.passes import agreed_passes

            passes = agreed_passes(cle=bool(settings.get("cle", False)))
        else:
            passes = [str(name) for name in doc["passes"]]
        artifact = CalibrationArtifact(doc["model"]["sha256"], doc["model"].get("path", ""), int(doc["samples"]),
                                       settings, observers, dict(doc.get("manifest", {})), passes,
                                       dict(doc.get("pass_data", {})))
        artifact.source = str(p)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise QuantcliError(f"{p}: calibration file is damaged ({type(exc).__name__}: {exc})") from None
    problem = _problem(artifact)
    if problem:
        raise QuantcliError(f"{p}: calibration file is damaged or was edited: {problem}; re-run quantcli calibrate")
    return artifact


def _problem(a: CalibrationArtifact) -> str | None:
    """What is wrong with a loaded artifact's numbers, or None."""
    from ..recipe import LIMITS, Method

    if a.samples < 1:
        return f"samples is {a.samples}"
    method = a.settings.get("method")
    if method not in {m.value for m in Method}:
        return f"unknown method {method!r}"
    for key in ("percentile", "bins"):
        v = a.settings.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not LIMITS[key].holds(v):
            return f"settings {key} = {v!r} is not in {LIMITS[key]}"
    for name, o in a.observers.items():
        where = f"tensor '{name}'"
        if o.bins < 1:
            return f"{where}: {o.bins} histogram bins"
        if min(o.count, o.batches, o.nonfinite, int(o.hist.min(initial=0))) < 0:
            return f"{where}: negative counts"
        if o.count == 0:
            continue
        stats = {"min": o.min, "max": o.max, "ma_min": o.ma_min, "ma_max": o.ma_max, "hist_lo": o.hist_lo,
                 "width": o.width}
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            return f"{where}: {', '.join(bad)} not finite (NaN, Inf or missing)"
        if o.min > o.max:
            return f"{where}: min {o.min:g} > max {o.max:g}"
        if o.width <= 0:
            return f"{where}: histogram width {o.width:g} <= 0"
        if int(o.hist.sum()) == 0:
            return f"{where}: an empty histogram for {o.count} values"
    return None
