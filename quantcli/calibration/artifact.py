"""The calibration artifact: a JSON file that makes calibration reusable.

Format (``format: "quantcli-calibration"``, ``version: 2``)::

    {
      "format": "quantcli-calibration", "version": 2,
      "model": {"path": "...", "sha256": "<hash of the model file>"},
      "passes": ["name-nodes", ..., "fold-batchnorm", "cross-layer-equalization"],
      "samples": 128,
      "settings": {"method": "percentile", "percentile": 99.99, "bins": 2048, "momentum": 0.9, "batch_size": 32},
      "tensors": {
        "<tensor name>": {"range": [lo, hi],
                          "stats": {<TensorObserver.to_dict(): min, max, moving averages, histogram>}}
      }
    }

``range`` holds the ranges of the method in ``settings``; the statistics allow any other method to be
applied later without running data again (:meth:`CalibrationArtifact.ranges`).  ``passes`` lists the
preparation passes that calibrate and convert must agree on (:mod:`quantcli.transforms.passes`, ``agree``),
in the order run: convert refuses an artifact whose list differs from its own.

Version 1 (no ``passes``) is still read: its passes are the fixed preparation of that version plus
cross-layer equalization where its ``settings.cle`` is true.
"""

from __future__ import annotations

import dataclasses
import json
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

    def ranges(self, method: str | None = None, percentile: float | None = None,
               symmetric: bool = False) -> dict[str, tuple[float, float]]:
        """Ranges of every tensor for ``method`` (default: the artifact's own method)."""
        method = method or self.settings["method"]
        pct = percentile if percentile is not None else self.settings.get("percentile", 99.99)
        levels = 255 if symmetric else 256
        out = {}
        for name in sorted(self.observers):
            obs = self.observers[name]
            try:
                lo, hi = estimate_range(obs, method, percentile=pct, num_levels=levels, symmetric=symmetric)
            except ValueError:  # no finite values (never reached) -> a zero range
                lo, hi = 0.0, 0.0
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
            "samples": self.samples,
            "settings": self.settings,
            "manifest": self.manifest,
            "tensors": {name: {"range": list(ranges[name]), "stats": self.observers[name].to_dict()}
                        for name in sorted(self.observers)},
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"


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
        return CalibrationArtifact(doc["model"]["sha256"], doc["model"].get("path", ""), int(doc["samples"]),
                                   settings, observers, dict(doc.get("manifest", {})), passes)
    except (KeyError, TypeError, ValueError) as exc:
        raise QuantcliError(f"{p}: calibration file is damaged ({type(exc).__name__}: {exc})") from None
