"""The post-write check of a converted model: ONNX checker, an ONNX Runtime session, one forward pass against the
FP32 model on one sample (shape, NaN/Inf, cosine and SQNR per output), then the atomic write.  A float output
whose cosine with FP32 falls below :data:`COLLAPSED_COSINE` (where FP32's is not all zeros) fails the check: such
a model has nothing to do with the original, whatever the reason.  Data given for the check sample must be
usable: it is never silently replaced by synthetic input.

A model that fails is never written: the failure is an :class:`~quantcli.errors.InternalError` (a bug), since
convert produced it.

A model with external data (made from one, or too large for one protobuf) is written first, model and data to
temporary files beside the output (:func:`quantcli.external.stage`), and checked from there as ONNX Runtime
will load it: the checker and a session on the files, the FP32 reference run before it and released, each
session reading its weights where they lie, so the weights are in memory about once.  Then both files are
renamed into place and the model in memory points at the written data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .. import external, modelio, paths
from ..data.sources import Dataset, input_specs
from ..errors import InternalError, QuantcliError
from ..manifest import SEED
from ..metrics import FidelityAccumulator
from ..results import OutputCheck
from ..runtime.session import make_session
from ..runtime.session import run as run_session

COLLAPSED_COSINE = 0.5  # a check-sample output this far from FP32 is a broken model, not quantization noise


def validation_feeds(model: onnx.ModelProto, data_path: str | None, config=None) -> dict[str, np.ndarray]:
    """One batch-1 input for the post-write check: the first data sample, else seeded synthetic data
    (``config``: how a decoded source's files become inputs, :class:`quantcli.data.config.DataSettings`)."""
    specs = input_specs(model)
    if data_path:  # given (or recorded and still there): it must be usable
        return next(Dataset(data_path, specs, config=config).batches(1, limit=1))
    rng = np.random.default_rng(SEED)
    feeds = {}
    for s in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in s.shape]
        shape[:1] = [1] if shape else []
        if s.dtype.kind == "f":
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            feeds[s.name] = np.zeros(shape, s.dtype)
    return feeds


def reference_outputs(reference: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The FP32 model's outputs on the check sample (a model with external data: from a session that reads its
    weights in place, released before anything else is built)."""
    big = external.has_external(reference)
    return run_session(make_session(reference, what="input model", prepack=not big), feeds, what="input model",
                       keep=True)


def write_validated(new_model: onnx.ModelProto, reference: onnx.ModelProto, out: Path,
                    feeds: dict[str, np.ndarray], min_cosine: float = COLLAPSED_COSINE,
                    expected: list[np.ndarray] | None = None) -> list[OutputCheck]:
    """Checker, ONNX Runtime load and one forward pass against the FP32 model (or its ``expected`` outputs on
    ``feeds``, from :func:`reference_outputs`), then the atomic rename."""
    if external.needs_external(new_model, reference):
        return _write_external(new_model, reference, out, feeds, min_cosine, expected)
    data = modelio.serialize_model(new_model)
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:
        raise InternalError(f"the converted model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    try:
        qs = make_session(new_model, what="converted model")
    except QuantcliError as exc:
        raise InternalError(str(exc)) from None
    ref = expected if expected is not None else reference_outputs(reference, feeds)
    got = run_session(qs, feeds, what="converted model")
    checks = _compare(qs, ref, got, min_cosine)
    modelio.write_bytes_atomic(out, data)
    return checks


def _write_external(new_model: onnx.ModelProto, reference: onnx.ModelProto, out: Path,
                    feeds: dict[str, np.ndarray], min_cosine: float, expected: list | None) -> list[OutputCheck]:
    with external.stage(new_model, out) as staged:
        try:
            onnx.checker.check_model(str(staged.model_path))
        except Exception as exc:
            raise InternalError(f"the converted model fails the ONNX checker: {str(exc).splitlines()[0]}") from None
        ref = expected if expected is not None else reference_outputs(reference, feeds)
        try:
            qs = make_session(staged.model_path, what="converted model", prepack=False)
        except QuantcliError as exc:
            raise InternalError(str(exc)) from None
        checks = _compare(qs, ref, run_session(qs, feeds, what="converted model"), min_cosine)
        del qs
    external.attach(new_model, paths.destination(out))
    return checks


def _compare(qs, ref: list, got: list, min_cosine: float) -> list[OutputCheck]:
    checks = []
    for o, r, q in zip(qs.get_outputs(), ref, got):
        if np.shape(r) != np.shape(q):
            raise InternalError(f"converted model output '{o.name}' has shape {np.shape(q)}, FP32 has {np.shape(r)}")
        if np.issubdtype(np.asarray(q).dtype, np.floating) and not np.isfinite(q).all() and np.isfinite(r).all():
            raise InternalError(f"converted model output '{o.name}' has NaN/Inf where the FP32 model has none")
        acc = FidelityAccumulator()
        if np.issubdtype(np.asarray(r).dtype, np.number):
            acc.update(r, q)
        if np.issubdtype(np.asarray(r).dtype, np.floating) and acc.ref2 > 0 and acc.cosine < min_cosine:
            raise InternalError(f"converted model output '{o.name}' collapsed on the check sample (cosine "
                                f"{acc.cosine:.3f} vs FP32, SQNR {acc.sqnr_db:.1f} dB); nothing was written "
                                "(try the default settings, or keep the worst layers float: quantcli analyze, "
                                "--max-drop)")
        checks.append(OutputCheck(o.name, acc.cosine, acc.sqnr_db, acc.max_abs))
    return checks
