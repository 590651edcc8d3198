"""Which nodes hurt, and how to keep the fewest of them in float under an accuracy budget.

* :class:`Evaluator` runs the FP32 model once over the evaluation data and caches its outputs; each candidate
  model then costs one session and one pass: the metric drop (top-1 accuracy with labels, else top-1
  agreement with FP32: per sample for [batch, classes] outputs, per position for sequences and maps, where
  requiring every step of a sample to agree made a CTC recogniser with unchanged text score 35%), or the
  user's task metric over every output (``--metric``, :mod:`quantcli.task_metric`), and the output SQNR.
* :func:`analyze` -- (a) each quantizable node quantized alone, everything else FP32: its metric drop and
  output SQNR; (b) in the fully quantized model, each node's own output SQNR against the FP32 model's, which
  shows how error accumulates along the graph.  Ranked worst first.
* :func:`search_exclusions` -- quantize everything; if over budget, rank nodes by (a) and bisect over the ranking
  for the fewest top-ranked nodes to keep in float so that the budget holds.  Deterministic.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np
import onnx

from .data.sources import Dataset
from .errors import QuantcliError
from .metrics import (FidelityAccumulator, SliceFidelity, agreement_count, decision_agreement_count,
                      is_probability_per_sample, token_agreement_count, topk_correct)
from .runtime.session import make_session, run, tap_model
from .transforms.graph import infer_with_input_shapes, node_key, reads


@dataclasses.dataclass
class Score:
    drop: float       # points of accuracy (labels) or of agreement with FP32
    sqnr_db: float    # vs FP32: the first output's; with a task metric the lowest of every float output's
    metric: float     # the accuracy or agreement itself, in %
    slice_sqnr_db: float = float("nan")  # first output: mean over its slices along the shortest non-batch axis


def held_batches(dataset: Dataset, limit: int | None = None) -> tuple[list[dict], np.ndarray | None]:
    """The first ``limit`` samples of ``dataset`` held in memory as batches, and their labels (or None)."""
    bs = dataset.default_batch_size(None)
    batches = list(dataset.batches(bs, limit))
    if not batches:
        raise QuantcliError(f"{dataset.path}: {dataset.num_samples} sample(s), fewer than the model's fixed batch "
                            f"size {bs}")
    n = sum(len(next(iter(b.values()))) for b in batches)
    return batches, (dataset.labels[:n] if dataset.labels is not None else None)


class Evaluator:
    """Scores candidate models against cached FP32 outputs on one evaluation set (held batches, labels)."""

    def __init__(self, fp32: onnx.ModelProto | None, batches: list[dict], labels: np.ndarray | None = None, *,
                 ref: list[np.ndarray] | None = None, max_values: int | None = None, task=None,
                 ref_outputs: list[list[np.ndarray]] | None = None) -> None:
        """``ref``: FP32's outputs on ``batches`` when already known (then ``fp32`` is not run).  ``max_values``:
        keep only the leading batches whose FP32 outputs hold about this many values (at least one batch).
        ``task``: a :class:`~quantcli.task_metric.TaskMetric` (``--metric``) that scores every output; then all
        of FP32's outputs are held (``ref_outputs``), not only the first."""
        self.batches = batches
        self.task = task
        if ref is None:
            ref, ref_outputs = self._outputs(fp32, max_values)
        self.ref, self.ref_outputs = ref, ref_outputs
        self.batches = self.batches[:len(self.ref)]
        self.labels = labels[:self.samples] if labels is not None else None
        self.classes = int(np.prod(self.ref[0].shape[1:])) if self.ref[0].ndim > 1 else 1
        lab = self.labels
        if task is None and lab is not None and len(lab) and (lab.min() < 0 or lab.max() >= self.classes):
            raise QuantcliError(f"evaluation labels: class ids must be in 0..{self.classes - 1} for this model's "
                                f"{self.classes} classes, found {int(lab.min())}..{int(lab.max())}")
        self.kind = self._kind()
        self.ref_metric = (task(ref_outputs, ref_outputs, self.labels) if task is not None
                           else self._accuracy(self.ref) if self.labels is not None else 100.0)
        self.evaluations = 0

    def _kind(self) -> str:
        """What agreement with FP32 means for this model's first output (without labels)."""
        r = self.ref[0]
        if self.task is not None:
            return "task"
        if self.labels is not None:
            return "labels"
        if all(is_probability_per_sample(o) for o in self.ref):
            return "decision"   # one probability per sample: the decision at 0.5 (silero-vad's speech score)
        if r.ndim >= 3:
            return "positions"  # sequences, maps: per position (one flipped CTC step is not a wrong sample)
        if r.ndim == 2 and r.shape[-1] > 1:
            return "samples"
        return "cosine"         # one value per sample that is no probability: as compare does, from the cosine

    def subset(self, max_samples: int) -> "Evaluator":
        """An evaluator on the first batches holding at most ``max_samples`` samples (at least one batch), sharing
        this one's cached FP32 outputs (no FP32 pass again)."""
        k, n = 0, 0
        while k < len(self.batches) and (k == 0 or n + len(self.ref[k]) <= max_samples):
            n += len(self.ref[k])
            k += 1
        return Evaluator(None, self.batches[:k], self.labels[:n] if self.labels is not None else None,
                         ref=self.ref[:k], task=self.task,
                         ref_outputs=self.ref_outputs[:k] if self.ref_outputs is not None else None)

    def _outputs(self, model: onnx.ModelProto, max_values: int | None = None):
        """FP32's first output per batch, and all its outputs per batch where a task metric needs them."""
        s = make_session(model, what="candidate model")
        first: list[np.ndarray] = []
        every: list[list[np.ndarray]] | None = [] if self.task is not None else None
        held = 0
        for b in self.batches:
            if max_values is not None and first and held >= max_values:
                break
            outs = run(s, b, what="candidate model", keep=True)
            first.append(outs[0])
            if every is not None:
                every.append(outs)
            held += sum(o.size for o in outs) if every is not None else outs[0].size
        return first, every

    def _accuracy(self, outs: list[np.ndarray]) -> float:
        logits = np.concatenate([o.reshape(len(o), -1) for o in outs])
        return 100.0 * topk_correct(logits, self.labels, 1) / len(self.labels)

    @property
    def samples(self) -> int:
        return sum(len(r) for r in self.ref)

    @property
    def metric_name(self) -> str:
        if self.task is not None:
            return self.task.name
        return {"labels": "top-1 accuracy", "decision": "decision agreement (at 0.5)",
                "cosine": "100 x cosine (0.999 and above count as 100)"}.get(self.kind, "top-1 agreement")

    def score(self, model: onnx.ModelProto, *, slices: bool = False) -> Score:
        """One pass of ``model`` over the held batches, scored batch by batch (a candidate's outputs are not
        kept: PP-OCRv6 rec's 40 x 18710 scores per line held 380 MB per candidate over 128 lines); ``slices``: also
        the mean per-slice SQNR (float64 per slice: only the bias-correction guard asks for it)."""
        s = make_session(model, what="candidate model")
        return self.score_outputs((run(s, b, what="candidate model", keep=self.task is not None)
                                   for b in self.batches), slices=slices)

    def score_outputs(self, outputs: Iterable[list[np.ndarray]], *, slices: bool = False) -> Score:
        """The score of a candidate's outputs, one list per held batch (in the model's output order; without a
        task metric only the first output is read)."""
        self.evaluations += 1
        fid, parts = FidelityAccumulator(), (SliceFidelity() if slices else None)
        agree = total = correct = start = 0
        every: list[list[np.ndarray]] = []
        for r, outs in zip(self.ref, outputs):
            q = outs[0]
            fid.update(r, q)
            if parts is not None:
                parts.update(r, q)
            if self.kind == "task":
                every.append(outs)
            elif self.kind == "labels":
                correct += topk_correct(q, self.labels[start:start + len(q)], 1)
            elif self.kind == "positions":
                same, positions = token_agreement_count(r, q)
                agree, total = agree + same, total + positions
            elif self.kind in ("decision", "samples"):
                agree += decision_agreement_count(r, q) if self.kind == "decision" else agreement_count(r, q)
                total += len(r)
            start += len(q)
        sl = parts.mean_db if parts is not None else float("nan")
        sqnr = fid.sqnr_db
        if self.task is not None:
            metric = self.task(self.ref_outputs, every, self.labels)
            sqnr = worst_output_sqnr(self.ref_outputs, every)
        elif self.labels is not None:
            metric = 100.0 * correct / len(self.labels)
        elif self.kind == "cosine":
            metric = 100.0 if fid.cosine >= 0.999 else 100.0 * max(fid.cosine, 0.0)
        else:
            metric = 100.0 * agree / max(total, 1)
        return Score(self.ref_metric - metric, sqnr, metric, sl)


def worst_output_sqnr(ref: list[list[np.ndarray]], outs: list[list[np.ndarray]]) -> float:
    """The lowest SQNR vs FP32 over the float outputs (each over every batch).  What ranks nodes whose drop ties (a
    few ranking samples move a task metric in coarse steps): PicoDet's 8 outputs (scores and boxes at 4 strides) --
    by the first output's SQNR alone, nodes of the other strides' branches scored "exact" and ranked last."""
    accs = [FidelityAccumulator() for _ in ref[0]]
    for r_batch, q_batch in zip(ref, outs):
        for acc, r, q in zip(accs, r_batch, q_batch):
            if np.issubdtype(np.asarray(r).dtype, np.floating):
                acc.update(r, q)
    found = [a.sqnr_db for a in accs if a.ref2 or a.err2]
    return min(found) if found else float("inf")


@dataclasses.dataclass
class NodeSensitivity:
    node: str
    op: str
    mac_share: float          # share of the model's multiply-accumulates in this node
    alone_drop: float         # metric drop with only this node quantized
    alone_sqnr_db: float      # output SQNR with only this node quantized
    full_sqnr_db: float | None  # this node's own output SQNR inside the fully quantized model


def node_output_sqnr(fp32: onnx.ModelProto, quant: onnx.ModelProto, nodes: list[str],
                     batches: list[dict]) -> dict[str, float]:
    """Each node's output SQNR in ``quant`` against the same node's output in ``fp32`` (pre-quantization)."""
    fnames = {n.name: n.output[0] for n in fp32.graph.node if n.name in nodes}
    qnames = {n.name: n.output[0] for n in quant.graph.node if n.name in nodes}
    common = [n for n in nodes if n in fnames and n in qnames]
    sf = make_session(tap_model(fp32, [fnames[n] for n in common]), what="FP32 tap model")
    sq = make_session(tap_model(quant, [qnames[n] for n in common]), what="quantized tap model")
    acc = {n: FidelityAccumulator() for n in common}
    for b in batches:
        for n, r, q in zip(common, run(sf, b), run(sq, b)):
            acc[n].update(r, q)
    return {n: a.sqnr_db for n, a in acc.items()}


def rank(rows: list[NodeSensitivity]) -> list[NodeSensitivity]:
    """Worst first: largest drop alone, then lowest SQNR alone, then name (deterministic)."""
    return sorted(rows, key=lambda r: (-round(r.alone_drop, 6), r.alone_sqnr_db, r.node))


def search_exclusions(ranking: list[str], build: Callable[[tuple[str, ...]], onnx.ModelProto], evaluator: Evaluator,
                      max_drop: float, on_step: Callable[[str], None] | None = None,
                      known: dict[int, Score] | None = None
                      ) -> tuple[tuple[str, ...], Score, onnx.ModelProto | None, list[dict]]:
    """Fewest top-ranked nodes to keep float so that the drop is within ``max_drop`` (bisection over k).
    ``known``: scores already measured for some k (the all-INT8 model's, k = 0): not built or run again (then the
    returned model is None where the answer is such a k)."""
    steps: list[dict] = []

    def trial(k: int):
        excluded = tuple(ranking[:k])
        model = None if known and k in known else build(excluded)
        score = known[k] if model is None else evaluator.score(model)
        steps.append({"float_nodes": k, "drop": score.drop, "sqnr_db": score.sqnr_db})
        if on_step:
            on_step(f"{k} node(s) in float: drop {score.drop:.2f} pts")
        return excluded, score, model

    best = trial(0)
    if best[1].drop <= max_drop + 1e-9:
        return best[0], best[1], best[2], steps
    lo, hi = 0, len(ranking)          # lo fails; find the smallest k in (lo, hi] that holds
    best = None                       # every ranked node in float (k = hi) is measured only if no smaller k holds:
    while hi - lo > 1:                # it nearly always does (one scoring of the whole set saved)
        mid = (lo + hi) // 2
        cand = trial(mid)
        if cand[1].drop <= max_drop + 1e-9:
            hi, best = mid, cand
        else:
            lo = mid
    if best is None:                  # even all ranked nodes in float may not meet it: then say so upstream
        best = trial(hi)
    return best[0], best[1], best[2], steps




ALONE_HELD_VALUES = 1 << 25  # values of the base model's tensors AloneScorer holds at once (128 MB as float32)


class AloneScorer:
    """Scores models that equal ``base`` (the same graph with nothing quantized) except from a few nodes on: the
    ranking's models, each heavy node quantized alone.  Only the part that differs runs -- the nodes that changed
    and everything they reach -- fed with ``base``'s values of the tensors it reads from the rest; outputs it does
    not reach are FP32's own (the evaluator's cached outputs).  ``base``'s values are held for the evaluator's
    batches for a few nodes at a time, in graph order, at most about ALONE_HELD_VALUES values (one pass of the
    part of ``base`` that computes them per group).  A model this cannot split that way is scored whole.  Scores
    match whole runs (metric equal, SQNR within 0.02 dB on the zoo's models: ONNX Runtime may fuse a part
    differently, MiniLM's attention).

    Each node's model ran whole before: most of a --max-drop ranking's time (PicoDet, 99 Convs at 800x608 on 8
    pages: 104 of 250 s), half of it computing what the float model had already computed."""

    def __init__(self, base: onnx.ModelProto, evaluator: Evaluator, order: list[str]) -> None:
        g = base.graph
        where = {n.name: i for i, n in enumerate(g.node)}
        self.base, self.ev = base, evaluator
        self.order = sorted(order, key=lambda name: where.get(name, len(where)))  # groups follow the graph
        self.node_bytes = {node_key(n): n.SerializeToString() for n in g.node}
        self.inits = {t.name: t for t in g.initializer}
        self._init_bytes: dict[str, bytes] = {}
        self.inputs = {i.name for i in g.input} - set(self.inits)
        self.producer = {o: n for n in g.node for o in n.output if o}
        first = evaluator.batches[0]
        # the evaluation batch's shapes: sizes of dynamic maps become known
        shaped = infer_with_input_shapes(base, {k: np.shape(v) for k, v in first.items()})
        infos = list(shaped.graph.value_info) + list(shaped.graph.input) + list(shaped.graph.output)
        del shaped
        self.types = {vi.name: vi.type.tensor_type.elem_type for vi in infos if vi.type.tensor_type.elem_type}
        batch0 = len(next(iter(first.values()))) if first and np.ndim(next(iter(first.values()))) else 1
        scale = evaluator.samples / max(batch0, 1)  # values held over every batch per value of the first
        self.held_values = {vi.name: v * scale for vi in infos if (v := _values(vi)) is not None}
        by_name = {n.name: n for n in g.node}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for t in reads(n):
                consumers.setdefault(t, []).append(n)
        self.cuts: dict[str, set[str]] = {}
        for name in self.order:  # what each node's model reads from the rest, as the graph says
            if name not in by_name:
                continue
            inside, stack = set(), [by_name[name]]
            while stack:
                n = stack.pop()
                if node_key(n) in inside:
                    continue
                inside.add(node_key(n))
                stack.extend(c for o in n.output if o for c in consumers.get(o, ()))
            produced = {o for n in g.node if node_key(n) in inside for o in n.output}
            self.cuts[name] = {t for n in g.node if node_key(n) in inside for t in reads(n)
                               if t not in produced and t not in self.inits and t not in self.inputs}
        self.held: dict[str, list[np.ndarray]] = {}
        self.whole = self.parts = 0  # models scored whole / in part

    def score(self, model: onnx.ModelProto, node: str) -> Score:
        """``model``'s score: ``base`` with ``node`` quantized alone."""
        changed, produced = self._changed(model)
        inits = {t.name for t in model.graph.initializer}
        needed = {t for n in changed for t in reads(n) if t not in produced and t not in self.inputs and t not in inits}
        if needed - set(self.held):
            self._hold(node, needed)
        if needed - set(self.held):
            self.whole += 1
            return self.ev.score(model)
        self.parts += 1
        names = [o.name for o in model.graph.output]
        reached = [o for o in model.graph.output if o.name in produced and (self.ev.task is not None or
                                                                           o.name == names[0])]
        if not reached:
            return self.ev.score_outputs(self._fp32(i, {}, names) for i in range(len(self.ev.batches)))
        seg = self._segment(model, changed, needed, reached)
        s = make_session(seg, what="candidate model")
        feeds = [i.name for i in seg.graph.input]
        outs = [o.name for o in seg.graph.output]

        def batch(i: int) -> list:
            vals = {t: (self.held[t][i] if t in self.held else self.ev.batches[i][t]) for t in feeds}
            return self._fp32(i, dict(zip(outs, run(s, vals, what="candidate model",
                                                      keep=self.ev.task is not None))), names)

        return self.ev.score_outputs(batch(i) for i in range(len(self.ev.batches)))

    def _fp32(self, i: int, got: dict, names: list[str]) -> list:
        """Batch ``i``'s outputs: those computed (``got``), FP32's for the rest (only the first without a task)."""
        if self.ev.task is None:
            return [got.get(names[0], self.ev.ref[i])]
        return [got.get(n, ref) for n, ref in zip(names, self.ev.ref_outputs[i])]

    def _changed(self, model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], set[str]]:
        """The nodes of ``model`` that differ from ``base`` or read what differs, in graph order, and their
        outputs.  A node differs if it is new, if its proto differs, or if an initializer it reads does (a
        bias moved by bias correction, a quantized weight)."""
        inits = {t.name: t for t in model.graph.initializer}
        changed, produced = [], set()
        for n in model.graph.node:
            same = self.node_bytes.get(node_key(n)) == n.SerializeToString()
            for t in reads(n) if same else ():
                if t in produced or (t in inits and (t not in self.inits or
                                                     inits[t].SerializeToString() != self._base_bytes(t))):
                    same = False
                    break
            if not same:
                changed.append(n)
                produced.update(o for o in n.output if o)
        return changed, produced

    def _base_bytes(self, name: str) -> bytes:
        if name not in self._init_bytes:
            self._init_bytes[name] = self.inits[name].SerializeToString()
        return self._init_bytes[name]

    def _hold(self, node: str, needed: set[str]) -> None:
        """Hold ``base``'s values of ``needed`` and of what the next nodes in order read, within
        ALONE_HELD_VALUES (at least ``needed``), for every batch; what was held before is let go."""
        self.held = {}
        want = set(needed)
        size = lambda ts: sum(self.held_values.get(t, ALONE_HELD_VALUES) for t in ts)  # noqa: E731
        start = self.order.index(node) + 1 if node in self.order else len(self.order)
        for name in self.order[start:]:
            more = want | self.cuts.get(name, set())
            if size(more) > ALONE_HELD_VALUES:
                break
            want = more
        want = sorted(t for t in want if t in self.types or t in self.producer)
        if not want:
            return
        tap = self._tap_model(want)
        s = make_session(tap, what="float model (ranking)")
        got: dict[str, list[np.ndarray]] = {t: [] for t in want}
        for b in self.ev.batches:
            feeds = {i.name: b[i.name] for i in tap.graph.input}
            for t, v in zip(want, run(s, feeds, what="float model (ranking)", keep=True)):
                got[t].append(v)
        self.held = got

    def _tap_model(self, tensors: list[str]) -> onnx.ModelProto:
        """The part of ``base`` that computes ``tensors``, with them as its outputs."""
        prod, keep, seen, stack = self.producer, [], set(), list(tensors)
        while stack:
            t = stack.pop()
            n = prod.get(t)
            if n is None or node_key(n) in seen:
                continue
            seen.add(node_key(n))
            keep.append(n)
            stack.extend(reads(n))
        order = {node_key(n): i for i, n in enumerate(self.base.graph.node)}
        keep.sort(key=lambda n: order[node_key(n)])
        used = {t for n in keep for t in reads(n)} | set(tensors)
        g = self.base.graph
        outs = [onnx.helper.make_tensor_value_info(t, self.types.get(t, onnx.TensorProto.FLOAT), None)
                for t in tensors]
        graph = onnx.helper.make_graph(keep, "tap", [i for i in g.input if i.name in used and i.name not in self.inits],
                                       outs, initializer=[t for t in g.initializer if t.name in used])
        m = onnx.helper.make_model(graph, opset_imports=self.base.opset_import, ir_version=self.base.ir_version)
        m.functions.extend(self.base.functions)
        return m

    def _segment(self, model: onnx.ModelProto, changed: list[onnx.NodeProto], needed: set[str],
                 reached: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        """The changed nodes of ``model``, fed with the held tensors and the graph inputs they read."""
        used = {t for n in changed for t in reads(n)}
        first = self.ev.batches[0]
        feeds = []
        for t in sorted(used):
            if t in needed or (t in self.inputs and t in first):
                v = self.held[t][0] if t in needed else first[t]
                feeds.append(onnx.helper.make_tensor_value_info(
                    t, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None))
        graph = onnx.helper.make_graph(changed, "changed", feeds, list(reached),
                                       initializer=[t for t in model.graph.initializer if t.name in used])
        m = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        m.functions.extend(model.functions)
        return m


def _values(vi: onnx.ValueInfoProto) -> int | None:
    """Values of a tensor by its inferred shape, None where a dim is unknown."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
    return None if any(d is None for d in dims) else int(np.prod(dims)) if dims else 1
