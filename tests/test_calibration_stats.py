"""Streaming observers and range estimators on known distributions."""

import json
import time

import numpy as np
import pytest

from quantcli.calibration.estimators import (entropy_range, estimate_range, minmax_range, moving_average_range,
                                              mse_range, percentile_range)
from quantcli.calibration.observers import HIST_BUDGET, HIST_MIN, HIST_SAMPLES, TensorObserver, hist_samples_per_update
from quantcli.cpu import detect
from quantcli.runtime.session import make_session, stats_tap_session, tap_model
from quantcli.transforms.fold_batchnorm import fold_batchnorm

from models import cnn_data, small_cnn

rng = np.random.default_rng(0)


def _observe(*arrays, bins=2048):
    """Observe arrays in batches of 50k elements, as calibration does (batches below the subsampling size)."""
    o = TensorObserver(bins=bins)
    for a in arrays:
        a = np.ravel(a)
        for start in range(0, a.size, 50_000):
            o.update(a[start:start + 50_000])
    return o


def test_large_updates_are_subsampled_for_the_histogram_only():
    x = rng.normal(size=(64, 32, 32, 32)).astype(np.float32)  # 2M elements in one update
    o = TensorObserver()
    o.update(x)
    assert o.count == x.size and o.min == x.min() and o.max == x.max()
    assert 0 < o.hist.sum() <= 40_000
    lo, hi = percentile_range(o, 99.0)
    assert abs(hi - 2.326) < 0.05 and abs(lo + 2.326) < 0.05


def test_histogram_budget_per_run():
    """Short runs feed 32k values per update; long runs fewer, never under 8k, so every tensor's histogram sees
    at least the budget (or all values) and its cost stops growing with the number of batches."""
    assert hist_samples_per_update(None) == hist_samples_per_update(8) == HIST_SAMPLES
    assert hist_samples_per_update(32) == HIST_BUDGET // 32 and hist_samples_per_update(10_000) == HIST_MIN
    o = TensorObserver(hist_samples=hist_samples_per_update(32))
    local = np.random.default_rng(7)  # the module's generator feeds the other tests: leave its sequence alone
    for _ in range(32):
        o.update(local.normal(size=(16, 64, 32, 32)).astype(np.float32))  # 1M elements per update
    assert HIST_BUDGET * 0.9 < o.hist.sum() <= HIST_BUDGET * 1.1 and o.count == 32 * (1 << 20)
    lo, hi = percentile_range(o, 99.9)
    assert abs(hi - 3.09) < 0.1 and abs(lo + 3.09) < 0.1
    assert TensorObserver.from_dict(o.to_dict()).hist_samples == o.hist_samples


def test_running_stats_exact_and_histogram_complete():
    batches = [rng.normal(size=(7, 13)) * (1 + 3 * i) + i for i in range(40)]
    o = _observe(*batches)
    allx = np.concatenate([b.ravel() for b in batches])
    assert o.min == allx.min() and o.max == allx.max() and o.count == allx.size
    assert o.hist.sum() == allx.size and len(o.hist) == 2048
    assert o.hist_lo <= allx.min() and o.hist_hi > allx.max()


def test_growing_histogram_is_exact():
    """Streamed counts equal a one-shot histogram of all data on the final grid (re-binning is exact)."""
    batches = [rng.uniform(-1, 1, 500), rng.uniform(-5, 3, 500), rng.uniform(-2, 40, 500)]
    o = _observe(*batches, bins=256)
    allx = np.concatenate(batches)
    idx = np.clip(np.floor((allx - o.hist_lo) / o.width).astype(int), 0, 255)
    ref = np.bincount(idx, minlength=256)
    # values are only re-binned by merging whole bins, so counts per final bin match up to points that
    # sat exactly on an old edge (floating point); allow none to move more than one bin
    assert np.abs(np.cumsum(ref) - np.cumsum(o.hist)).max() <= 2


def test_memory_is_bounded():
    o = TensorObserver(bins=512)
    for i in range(1000):
        o.update(rng.normal(size=64) * (i + 1))
    assert o.hist.shape == (512,) and o.count == 64000


def test_moving_average_and_nonfinite():
    o = TensorObserver(momentum=0.5)
    o.update(np.array([0.0, 1.0]))
    o.update(np.array([0.0, 3.0, np.nan, np.inf]))
    assert o.ma_max == 2.0 and o.ma_min == 0.0
    assert o.nonfinite == 2 and o.count == 4 and o.max == 3.0
    assert moving_average_range(o) == (0.0, 2.0)


def test_serialization_round_trip_and_merge():
    a, b = rng.normal(size=5000), rng.normal(size=5000) * 4 + 2
    o = _observe(a, b)
    back = TensorObserver.from_dict(json.loads(json.dumps(o.to_dict())))
    assert np.array_equal(back.hist, o.hist) and back.min == o.min and back.width == o.width
    assert percentile_range(back, 99.9) == percentile_range(o, 99.9)
    m = _observe(a)
    m.merge(_observe(b))
    assert m.count == o.count and m.min == o.min and m.max == o.max and m.hist.sum() == o.hist.sum()


def test_minmax_and_constant_tensors():
    o = _observe(np.full(100, 2.5))
    for method in ("minmax", "moving-average", "percentile", "entropy", "mse"):
        assert estimate_range(o, method) == (2.5, 2.5)
    z = _observe(np.zeros(10))
    assert estimate_range(z, "entropy") == (0.0, 0.0)
    with pytest.raises(ValueError, match="no finite values"):
        minmax_range(TensorObserver())


def test_percentile_on_known_distributions():
    u = _observe(rng.uniform(0, 1, 200000))
    lo, hi = percentile_range(u, 99.0)
    assert abs(hi - 0.99) < 0.003 and abs(lo - 0.01) < 0.003
    g = _observe(rng.normal(size=400000))
    lo, hi = percentile_range(g, 99.9)
    assert abs(hi - 3.09) < 0.06 and abs(lo + 3.09) < 0.06
    a, b = percentile_range(g, 99.9, symmetric=True)
    assert a == -b and abs(b - 3.29) < 0.07


def test_entropy_on_known_distributions():
    x = rng.normal(size=1_000_000)
    x[0] = 1000.0 / 50  # one outlier far out
    lo, hi = entropy_range(_observe(x), num_levels=255, symmetric=True)
    assert 2.5 < hi < 5.5 and -hi <= lo < 0  # clips the outlier at 20, keeps the Gaussian body
    lo, hi = entropy_range(_observe(np.maximum(rng.normal(size=500_000), 0)))
    assert lo == 0.0 and 1.0 < hi < 4.5


def test_mse_clips_heavy_tails_not_uniform():
    lap = _observe(rng.laplace(size=500_000))
    lo, hi = mse_range(lap)
    assert hi < 0.9 * lap.max and lo > 0.9 * lap.min
    uni = _observe(rng.uniform(-1, 1, 500_000))
    lo, hi = mse_range(uni)
    assert hi > 0.97 and lo < -0.97


def test_attention_mask_values_do_not_break_the_statistics():
    x = rng.normal(size=1_000_000).astype(np.float32)
    x[:5] = np.finfo(np.float32).min  # -3.4e38 additive mask values, 0.0005% of the mass
    o = _observe(x)
    assert minmax_range(o)[0] < -1e38 and o.count == x.size
    # one 2048-bin linear grid cannot resolve N(0,1) next to -3.4e38 (known limitation): the robust
    # estimators move off the mask value but stay within a bin of it; they must stay finite and ordered
    for method in ("percentile", "entropy", "mse"):
        lo, hi = estimate_range(o, method)
        assert lo <= hi and np.isfinite(lo) and np.isfinite(hi)


def test_estimators_are_vectorized():
    o = _observe(rng.normal(size=200_000))
    for fn in (entropy_range, mse_range):
        t = time.perf_counter()
        fn(o)
        assert time.perf_counter() - t < 1.0


def test_unknown_method():
    with pytest.raises(ValueError, match="valid: minmax, moving-average"):
        estimate_range(_observe(np.ones(3)), "kl")


def test_stats_tap_skips_layout_copies_and_keeps_every_element():
    """The calibration session reads blocked (NCHWc) tensors where they hold exactly the tensor's elements:
    same element counts, minima and maxima, per-batch, as the plain tap model; unpaddable channels only."""
    m = fold_batchnorm(small_cnn()).model  # 16-channel convs: NCHWc without padding on AVX2 and AVX-512
    tensors = ["r1", "r2", "c3", "ra", "gap"]
    fast = stats_tap_session(m, tensors)
    plain = make_session(tap_model(m, tensors))
    x = cnn_data(8)
    got, ref = fast.run(None, {"x": x}), plain.run(None, {"x": x})
    for name, a, b in zip(tensors, got, ref):
        assert a.size == b.size and a.min() == b.min() and a.max() == b.max(), name
        assert np.array_equal(np.sort(a, axis=None), np.sort(b, axis=None)), name
    if "avx2" in detect().flags:  # MLAS uses NCHWc on x86 with AVX2 or better: some copies must be gone
        assert [o.name for o in fast.get_outputs()] != tensors


def test_grouped_updates_equal_one_update_per_batch():
    """update_many (how small tensors are observed) gives the same min, max, moving averages and counts as
    one update per batch, NaN/inf included, and a complete histogram."""
    local = np.random.default_rng(11)
    batches = [local.normal(size=(4, 50)).astype(np.float32) * (1 + i) + i for i in range(9)]
    batches[3][0, :3] = [np.nan, np.inf, -np.inf]
    batches.append(np.full((2, 2), np.nan, np.float32))  # nothing finite: counted, no batch
    one, grouped = TensorObserver(momentum=0.7), TensorObserver(momentum=0.7)
    for b in batches:
        one.update(b)
    grouped.update_many(batches[:4])
    grouped.update_many(batches[4:])
    for k in ("min", "max", "batches", "count", "nonfinite"):
        assert getattr(grouped, k) == getattr(one, k), k
    assert grouped.ma_min == pytest.approx(one.ma_min, rel=1e-12) and grouped.ma_max == pytest.approx(one.ma_max, rel=1e-12)
    assert grouped.hist.sum() == one.hist.sum() == one.count == 9 * 200 - 3
    assert grouped.hist_lo <= grouped.min and grouped.hist_hi > grouped.max


def test_lower_bound_skips_the_min_pass_only_when_exact():
    """With lower=0 (a Relu's output) the minimum is still exact: taken as 0 only when the histogram's
    subsample holds a 0, otherwise computed over every element; NaN is still caught by the max pass."""
    local = np.random.default_rng(12)
    relu = np.maximum(local.normal(size=1 << 20), 0).astype(np.float32)
    o = TensorObserver(hist_samples=1 << 13)
    o.update(relu, lower=0.0)
    assert o.min == 0.0 and o.max == relu.max() and o.count == relu.size
    positive = local.uniform(0.5, 2.0, size=1 << 20).astype(np.float32)
    positive[1] = 0.0  # not on the subsample's stride: only the full pass sees it
    o = TensorObserver(hist_samples=1 << 13)
    o.update(positive, lower=0.0)
    assert o.min == 0.0
    positive[1] = 0.25
    o = TensorObserver(hist_samples=1 << 13)
    o.update(positive, lower=0.0)
    assert o.min == np.float32(0.25) and o.ma_min == np.float32(0.25)
    relu[5] = np.nan
    o = TensorObserver(hist_samples=1 << 13)
    o.update(relu, lower=0.0)
    assert o.nonfinite == 1 and o.min == 0.0 and o.max == np.nanmax(relu) and o.count == relu.size - 1


def test_lower_bounds_from_the_graph():
    from onnx import TensorProto, helper, numpy_helper

    from quantcli.calibration.collect import lower_bounds

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("Clip", ["x", "", "hi"], ["c_nolo"]),
             helper.make_node("Neg", ["x"], ["n"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info(t, TensorProto.FLOAT, [4]) for t in ("r", "c", "c_nolo", "n")],
                          [numpy_helper.from_array(np.array(-1.5, np.float32), "lo"),
                           numpy_helper.from_array(np.array(6.0, np.float32), "hi")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert lower_bounds(m, ["x", "r", "c", "c_nolo", "n"]) == {"r": 0.0, "c": -1.5}


@pytest.mark.parametrize("held_values", [None, 1000])
def test_collected_statistics_match_the_tensors(monkeypatch, held_values):
    """The whole data pass (tap session, grouping of small tensors, min-pass skipping, threads) gives the
    exact min, max and count of every tensor as ONNX Runtime computes it, batch by batch; also when the
    bound on all held batches forces early flushes."""
    from quantcli.calibration import collect
    from quantcli.calibration.collect import collect_statistics

    if held_values is not None:
        monkeypatch.setattr(collect, "HELD_VALUES", held_values)

    m = fold_batchnorm(small_cnn()).model
    tensors = ["x", "r1", "r2", "c3", "ra", "gap", "f"]
    x = cnn_data(40, seed=5)
    batches = [{"x": x[i:i + 8]} for i in range(0, 40, 8)]
    got = collect_statistics(m, tensors, iter(batches), expected_batches=len(batches))
    obs, seen, seconds = got.histograms, got.samples, got.seconds
    ref = make_session(tap_model(m, tensors[1:]))
    values = {t: [] for t in tensors}
    for b in batches:
        values["x"].append(b["x"])
        for t, v in zip(tensors[1:], ref.run(None, b)):
            values[t].append(v)
    assert seen == 40 and seconds > 0
    for t in tensors:
        allv = np.concatenate([v.ravel() for v in values[t]])
        o = obs[t]
        assert (o.min, o.max, o.count, o.batches) == (allv.min(), allv.max(), allv.size, len(batches)), t
        ma_min, ma_max = float(values[t][0].min()), float(values[t][0].max())
        for v in values[t][1:]:
            ma_min, ma_max = 0.9 * ma_min + 0.1 * float(v.min()), 0.9 * ma_max + 0.1 * float(v.max())
        assert (o.ma_min, o.ma_max) == pytest.approx((ma_min, ma_max), rel=1e-12, abs=1e-12), t
        assert o.hist.sum() > 0, t


def test_batches_are_split_where_the_tapped_outputs_exceed_the_budget(monkeypatch):
    """A run's tapped outputs are all alive at once: batches are split so they stay under TAP_BYTES (measured on
    the first sample), with the same min / max / count; not split when they fit or when splitting is not asked."""
    from quantcli.calibration import collect
    from quantcli.calibration.collect import collect_statistics

    m = fold_batchnorm(small_cnn()).model
    tensors = ["r1", "r2", "c3", "ra"]  # 4 x 16 x 16 x 16 float32: 64 KB a sample
    x = cnn_data(40, seed=5)
    batches = [{"x": x[i:i + 16]} for i in range(0, 40, 16)]  # 16, 16, 8
    whole = collect_statistics(m, tensors, iter(batches), expected_batches=3, split=True)
    assert whole.batch_size is None and whole.histograms["r1"].batches == 3
    monkeypatch.setattr(collect, "TAP_BYTES", 5 * 4 * 16 * 16 * 16 * 4)  # 5 samples' tapped outputs
    part = collect_statistics(m, tensors, iter(batches), expected_batches=3, split=True)
    assert part.batch_size == 5 and part.samples == 40
    for t in tensors:
        a, b = whole.histograms[t], part.histograms[t]
        assert (a.min, a.max, a.count) == (b.min, b.max, b.count), t
        assert b.batches == 4 + 4 + 2  # 16 = 5 + 5 + 5 + 1, and 8 = 5 + 3
    unsplit = collect_statistics(m, tensors, iter(batches), expected_batches=3)
    assert unsplit.batch_size is None and unsplit.histograms["r1"].batches == 3


def test_per_channel_requests_in_the_same_pass_match_onnxruntime():
    """Per-channel abs-max and mean, and a Gram matrix, come from the same pass as the histograms, in the
    tensors' logical layout (16-channel conv outputs run blocked inside ONNX Runtime)."""
    from quantcli.calibration.collect import collect_statistics
    from quantcli.calibration.requests import Stat, StatRequest

    m = fold_batchnorm(small_cnn()).model
    x = cnn_data(24, seed=7)
    batches = [{"x": x[i:i + 8]} for i in range(0, 24, 8)]
    requests = ["r1", "r2", StatRequest("r1", Stat.CHANNEL_MEAN), StatRequest("r2", Stat.CHANNEL_ABSMAX),
                StatRequest("f", Stat.GRAM, axis=-1)]
    got = collect_statistics(m, requests, iter(batches))
    ref = make_session(tap_model(m, ["r1", "r2", "f"]))
    r1, r2, f = (np.concatenate(v).astype(np.float64) for v in zip(*(ref.run(None, b) for b in batches)))
    np.testing.assert_allclose(got.channels[requests[2]].result(), r1.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.channels[requests[3]].result(), np.abs(r2).max(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(got.channels[requests[4]].result(), f.T @ f, rtol=1e-5)
    assert set(got.histograms) == {"r1", "r2"} and got.histograms["r2"].max == pytest.approx(r2.max(), rel=1e-6)
    assert got.samples == 24


def test_two_bin_histogram_grows_both_ways_and_one_bin_is_refused(tmp_path):
    """The exact doubling growth needs at least two bins (one bin can never move its lower edge down)."""
    o = TensorObserver(bins=2)
    for lo, hi in ((0.0, 1.0), (-5.0, 0.5), (2.0, 40.0)):
        o.update(np.array([lo, hi], np.float32))
    assert o.hist.sum() == 6 and o.hist_lo <= -5.0 and o.hist_hi > 40.0
    from quantcli.recipe import LIMITS

    assert not LIMITS["bins"].holds(1) and LIMITS["bins"].holds(2)


def test_fidelity_of_a_large_output_is_measured_a_slice_at_a_time(monkeypatch):
    """Cosine / SQNR / max error over 4M values: about the same sums, with temporaries of a slice, not ~4x the
    output in float64 (PP-OCRv6 rec: 12M scores a batch held ~0.4 GB of temporaries per batch scored)."""
    import tracemalloc

    from quantcli.metrics import FidelityAccumulator

    rng = np.random.default_rng(0)
    ref = rng.normal(size=1 << 22).astype(np.float32)
    test = ref + rng.normal(scale=0.01, size=ref.size).astype(np.float32)
    whole = FidelityAccumulator()
    whole.update(ref, test)
    monkeypatch.setattr(FidelityAccumulator, "CHUNK", 1 << 16)
    tracemalloc.start()
    try:
        part = FidelityAccumulator()
        part.update(ref, test)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert part.sqnr_db == pytest.approx(whole.sqnr_db, abs=1e-4) and part.cosine == pytest.approx(whole.cosine)
    assert part.max_abs == pytest.approx(whole.max_abs)
    assert peak < ref.nbytes / 2, peak


def test_silu_input_range_is_narrowed_below_zero_and_lowers_the_error(tmp_path):
    """A conv output read only by a SiLU: its lower bound rises from the observed -45 or so to where the SiLU
    output's error is least; the upper one stays; the quantized model (real ONNX Runtime sessions) is closer to
    FP32 than with the same range method minus the refinement (percentile 100 ~ minmax)."""
    import onnx
    from onnx import numpy_helper
    from typer.testing import CliRunner

    from models import silu_cnn
    from quantcli.calibration.estimators import silu_range
    from quantcli.cli.app import app

    onnx.save(silu_cnn(), tmp_path / "m.onnx")
    x = rng.normal(size=(40, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    run = lambda *a: CliRunner().invoke(app, [str(v) for v in a], catch_exceptions=False)  # noqa: E731
    assert run("calibrate", tmp_path / "m.onnx", "--data", tmp_path / "calib.npz", "-o", tmp_path / "c.json",
               "-q").exit_code == 0
    errs, lows = {}, {}
    for name, extra in (("silu", []), ("plain", ["--method", "percentile", "--percentile", "100"])):
        out = tmp_path / f"{name}.onnx"
        r = run("convert", tmp_path / "m.onnx", "--calibration", tmp_path / "c.json", "-o", out,
                "--json", tmp_path / f"{name}.json", "--bias-correction", "off", "-q", *extra)
        assert r.exit_code == 0, r.output
        q = onnx.load(out)
        init = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
        (qn,) = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c1"]
        scale, zp = float(init[qn.input[1]]), int(init[qn.input[2]])
        lows[name] = (-zp * scale, (255 - zp) * scale)
        ref = make_session(silu_cnn()).run(None, {"x": x[32:]})[0]
        errs[name] = float(np.mean((make_session(q).run(None, {"x": x[32:]})[0] - ref) ** 2))
    notes = json.loads((tmp_path / "silu.json").read_text())["notes"]
    assert any("1 SiLU input(s) narrowed" in n for n in notes)
    assert lows["plain"][0] < -30 and -10 < lows["silu"][0] < -2
    assert abs(lows["silu"][1] - lows["plain"][1]) < 0.05 * lows["plain"][1]
    assert errs["silu"] < 0.5 * errs["plain"]
    # the estimator alone: no negative values, nothing to narrow
    pos = _observe(rng.uniform(0, 3, 100_000))
    assert silu_range(pos, pos.min, pos.max) == (0.0, pos.max)
