"""Graph passes as objects, and preparation as a list of them.

A :class:`Pass` has a ``name``, declares what it needs (:class:`Need`: data, statistics) and whether
calibrate and convert must both apply it (``agree``: it changes the activations whose ranges are measured,
so an artifact made without it does not fit a model made with it).  ``run(model)`` returns a
:class:`~quantcli.transforms.graph.PassResult`: the new model, typed per-node :class:`Event` s (folded,
equalized, bias shifted, skipped with a reason) and pass-specific data.

:func:`prepare` runs the preparation passes every calibrate and convert applies -- exporter clean-up, the
opset upgrade, BatchNorm folding and (if asked) cross-layer equalization -- and returns a :class:`Prepared`.
Which ``agree`` passes ran is recorded in the calibration artifact (:func:`agreed_passes`), and convert checks
its own list against it.  A new transform (e.g. SmoothQuant) is one more :class:`Pass` in that list.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Iterable

import onnx

from .graph import Event, EventKind, PassResult


class Need(str, enum.Enum):
    DATA = "data"                # calibration batches
    STATISTICS = "statistics"    # collected activation statistics (histograms, per-channel abs-max, ...)


@dataclasses.dataclass(frozen=True)
class Pass:
    """A named graph pass: ``fn(model) -> PassResult``; ``summary(result)`` is its one-line note (or None)."""

    name: str
    fn: Callable[[onnx.ModelProto], PassResult]
    summary: Callable[[PassResult], str | None] = lambda r: None
    agree: bool = False
    needs: frozenset[Need] = frozenset()

    def run(self, model: onnx.ModelProto) -> PassResult:
        return self.fn(model)


@dataclasses.dataclass
class Prepared:
    """The model as calibrate and convert both see it, and what each preparation pass did."""

    model: onnx.ModelProto
    results: dict[str, PassResult]   # pass name -> its result, in the order run
    notes: list[str]

    def data(self, name: str) -> dict:
        """The pass-specific data of pass ``name`` (empty if it did not run)."""
        r = self.results.get(name)
        return r.data if r is not None else {}

    def events(self, *kinds: EventKind) -> list[Event]:
        return [e for r in self.results.values() for e in r.events if not kinds or e.kind in kinds]

    @property
    def agreed(self) -> list[str]:
        return [name for name in self.results if name in _AGREE]


def _count(what: str, kind: EventKind = EventKind.CHANGED) -> Callable[[PassResult], str | None]:
    def summary(r: PassResult) -> str | None:
        n = len([e for e in r.events if e.kind == kind])
        return what.format(n=n) if n else None
    return summary


def _preparation_passes() -> list[Pass]:
    from . import prepare as p
    from .equalize import equalize
    from .fold_batchnorm import fold_batchnorm
    from .opset import upgrade_opset

    return [
        Pass("name-nodes", p.name_nodes, _count("{n} unnamed node(s) given names"), agree=True),
        Pass("constants-to-initializers", p.constants_to_initializers, p.constants_summary, agree=True),
        Pass("matmul-add-to-gemm", p.matmul_add_to_gemm, _count("{n} MatMul + bias Add pair(s) turned into Gemm"),
             agree=True),
        Pass("fold-bias-add", p.fold_bias_add, _count("{n} bias Add(s) folded into the preceding Conv/Gemm"),
             agree=True),
        Pass("gemm-bias-to-1d", p.gemm_bias_to_1d, _count("{n} Gemm bias(es) reshaped to 1-D"), agree=True),
        Pass("opset-13", upgrade_opset, lambda r: r.events[0].detail if r.events else None, agree=True),
        Pass("fold-batchnorm", fold_batchnorm,
             _count("{n} BatchNormalization node(s) folded into the preceding Conv/Gemm", EventKind.FOLDED),
             agree=True),
        Pass("cross-layer-equalization", equalize,
             lambda r: (f"cross-layer equalization: {len(r.changed)} pair(s) equalized, "
                        f"{len(r.skipped)} skipped"), agree=True),
    ]


PREPARE_NAMES = tuple(p.name for p in _preparation_passes())
_AGREE = {p.name for p in _preparation_passes() if p.agree}
CLE = "cross-layer-equalization"


def preparation(*, cle: bool) -> list[Pass]:
    """The preparation passes for these settings, in order."""
    return [p for p in _preparation_passes() if cle or p.name != CLE]


def run_passes(model: onnx.ModelProto, passes: Iterable[Pass]) -> Prepared:
    results: dict[str, PassResult] = {}
    notes: list[str] = []
    for p in passes:
        r = p.run(model)
        model, results[p.name] = r.model, r
        line = p.summary(r)
        if line:
            notes.append(line)
    return Prepared(model, results, notes)


def prepare(model: onnx.ModelProto, *, cle: bool = False) -> Prepared:
    """Deterministic clean-up before ranges are measured: names, Constant weights, MatMul+Add -> Gemm, bias
    folding, opset 13, BN folding, and cross-layer equalization if asked (calibrate and convert must agree)."""
    return run_passes(model, preparation(cle=cle))


def agreed_passes(*, cle: bool) -> list[str]:
    """Names of the ``agree`` passes that calibrate and convert apply with these settings (recorded in the
    calibration artifact)."""
    return [p.name for p in preparation(cle=cle) if p.agree]
