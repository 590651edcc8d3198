"""The only place that talks to ONNX Runtime: sessions, tap models, optimized graphs.

* :func:`make_session` builds a CPU session from a ModelProto (in memory, nothing written to the cwd)
  and turns load failures into clear errors.  A model with external data (:mod:`quantcli.external`) is
  serialized without its weights, which ONNX Runtime memory-maps from their files.
* :func:`tap_model` adds extra graph outputs on intermediate tensors (for calibration statistics);
  :func:`stats_tap_session` runs it without the layout copies that order-free statistics do not need.
* :func:`optimized_model` returns the graph as ONNX Runtime's CPU optimizer rewrites it (QDQ fusion into
  integer kernels happens there), to see which nodes really run in INT8.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .. import external
from ..errors import InternalError, QuantcliError

PROVIDERS = ["CPUExecutionProvider"]
QUIET = 4  # ONNX Runtime's own log: fatal only (its error lines are ANSI red; quantcli's errors say what is wrong)
ort.set_default_logger_severity(QUIET)

_active_runs: set = set()  # RunOptions of the runs in progress
_terminating = False


def terminate_runs() -> None:
    """Ask the runs in progress to stop (called from the signal watcher thread; ORT checks between nodes)."""
    global _terminating
    _terminating = True
    for ro in list(_active_runs):
        ro.terminate = True
# ONNX Runtime hands out its optimized graph only as a file: write that scratch file to memory where the
# system has a tmpfs, so its disk writeback does not take a core from the runs that follow
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def session_options(threads: int = 0, *, level: str = "all", optimized_path: str | None = None,
                    spinning: bool = True, arena: bool = True, spin_between_runs: bool = True,
                    model: onnx.ModelProto | None = None, prepack: bool = True) -> ort.SessionOptions:
    """``spinning``: worker threads spin waiting for work (lowest latency); ``spin_between_runs=False``
    stops them as soon as a run returns, so they leave the cores to other work until the next run.
    ``model``: the model the session is for, when it is given serialized (where its external data is).
    ``prepack=False``: kernels use the weights where they are instead of a repacked copy (for a large model,
    which then is in memory once; a little slower)."""
    so = ort.SessionOptions()
    folder = external.session_folder(model) if model is not None else None
    if folder:
        so.add_session_config_entry(external.FOLDER_OPTION, folder)
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.enable_cpu_mem_arena = arena
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = QUIET
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif not spin_between_runs:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def make_session(model: onnx.ModelProto | str | os.PathLike, *, threads: int = 0, level: str = "all",
                 what: str = "model", spinning: bool = True, arena: bool = True,
                 spin_between_runs: bool = True, prepack: bool = True) -> ort.InferenceSession:
    """Create a CPU InferenceSession; a load failure becomes a one-line error naming ``what``."""
    proto = model if isinstance(model, onnx.ModelProto) else None
    src = model.SerializeToString() if proto is not None else str(model)
    try:
        return ort.InferenceSession(src, sess_options=session_options(threads, level=level, spinning=spinning, arena=arena,
                                                                      spin_between_runs=spin_between_runs,
                                                                      model=proto, prepack=prepack),
                                    providers=PROVIDERS)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        raise QuantcliError(f"{what}: ONNX Runtime cannot load it: {msg}") from None


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], *, what: str = "model",
        outputs: list[str] | None = None, keep: bool = False) -> list[np.ndarray]:
    """``session``'s outputs on ``feeds``.  ``keep``: they are kept after the session is gone, so they are
    returned as copies: an output of ONNX Runtime lives in its session's memory arena and holds all of it,
    however small the output (a 4-byte output held a 100 MB arena after its session was deleted)."""
    ro = ort.RunOptions()
    ro.log_severity_level = QUIET
    _active_runs.add(ro)
    try:
        if _terminating:
            raise KeyboardInterrupt
        got = session.run(outputs, feeds, ro)
        return [np.array(v) for v in got] if keep else got
    except Exception as exc:
        if _terminating:
            raise KeyboardInterrupt from None
        msg = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        raise QuantcliError(f"{what}: ONNX Runtime failed to run it: {msg}") from None
    finally:
        _active_runs.discard(ro)


def tap_model(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``tensors`` (float intermediate tensors)."""
    tapped = copy.deepcopy(model)
    del tapped.graph.output[:]
    for name in tensors:
        tapped.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return tapped


NCHWC_SAFE_CHANNELS = 16  # MLAS blocks channels by 8 (AVX2) or 16 (AVX-512): a multiple of 16 is never padded


def stats_tap_session(model: onnx.ModelProto, tensors: list[str], *, threads: int = 0,
                      what: str = "calibration (tap) model", keep_order: set[str] | frozenset[str] = frozenset()
                      ) -> ort.InferenceSession:
    """A session whose outputs are ``tensors``, each holding its elements in ONNX Runtime's internal order,
    except those in ``keep_order`` (read in their logical layout, for per-channel statistics).

    The internal order is only for statistics that do not depend on element order (min, max, histograms).  ONNX Runtime runs
    convolutions in a blocked layout (NCHWc) and puts a ReorderOutput copy in front of every graph output;
    here the graph is optimized once as ONNX Runtime would, and the reorders in front of tapped outputs are
    dropped where the blocked tensor holds exactly the same elements (channel count a multiple of 16, so
    no padding).  That saves a full copy of each tapped activation per batch.  Any surprise falls back to
    the plain tap model.  Its threads spin during a run, as a plain session's do (without spinning, waking
    them per operator made runs up to 1.6x slower on 2 cores), and stop when it returns, leaving the cores
    to the statistics.
    """
    tap = tap_model(model, tensors)
    big = external.has_external(tap)  # its weights are read where they lie, once (no optimized copy)
    if set(tensors) <= set(keep_order) or big:
        return make_session(tap, threads=threads, what=what, spin_between_runs=False, prepack=not big)
    try:
        opt = optimized_model(tap, level="all")
        outputs = {o.name for o in opt.graph.output}
        read = {i for n in opt.graph.node for i in n.input}
        swap: dict[str, str] = {}
        for node in list(opt.graph.node):
            if (node.op_type == "ReorderOutput" and node.domain == "com.microsoft.nchwc"
                    and node.output[0] in outputs and node.output[0] not in read and node.output[0] not in keep_order
                    and any(a.name == "channels" and a.i % NCHWC_SAFE_CHANNELS == 0 for a in node.attribute)):
                swap[node.output[0]] = node.input[0]
                opt.graph.node.remove(node)
        if not swap:
            return make_session(tap, threads=threads, what=what, spin_between_runs=False)
        for out in opt.graph.output:
            if out.name in swap:
                out.name = swap[out.name]
        return ort.InferenceSession(opt.SerializeToString(),
                                    sess_options=session_options(threads, level="disable", spin_between_runs=False),
                                    providers=PROVIDERS)
    except Exception:  # the optimized graph is ONNX Runtime's internal format: never fail calibration over it
        return make_session(tap, threads=threads, what=what, spin_between_runs=False)


def tensor_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tensors: list[str]) -> dict[str, tuple[int, ...]]:
    """The shapes ``tensors`` really have when ``model`` runs on ``feeds`` (one unoptimized run; any dtype).

    Shape inference loses dims that data flows through (Shape -> Slice -> broadcast); running does not.
    Raises QuantcliError if the model cannot run on these feeds."""
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    for name in tensors:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))  # untyped: ONNX Runtime fills it in
    session = make_session(probe, threads=1, level="disable", what="shape probe")
    names = [o.name for o in session.get_outputs()]
    return {n: tuple(v.shape) for n, v in zip(names, run(session, feeds, what="shape probe"))}


def optimized_model(model: onnx.ModelProto, *, level: str = "all") -> onnx.ModelProto:
    """The model as ONNX Runtime's CPU provider optimizes it at session creation.  For a model with external
    data, only its graph: the optimized weights go to a scratch file on disk, and are not read back."""
    big = external.has_external(model)
    with tempfile.TemporaryDirectory(prefix="quantcli-opt-", dir=None if big else _SCRATCH) as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = session_options(1, level=level, optimized_path=str(out), model=model, prepack=not big)
        if big:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                        str(external.SIZE_THRESHOLD))
        try:
            ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=PROVIDERS)
        except Exception as exc:
            raise InternalError(f"ONNX Runtime could not optimize the model: {exc}") from None
        return onnx.load(str(out), load_external_data=not big)

