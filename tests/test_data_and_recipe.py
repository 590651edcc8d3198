import numpy as np
import pytest

from models import small_cnn, small_mlp
from quantcli.data.config import SampleBy
from quantcli.data.sources import Dataset, input_specs
from quantcli.errors import QuantcliError
from quantcli.recipe import Method, Weights, load_recipe, merge


def _specs(model=None):
    return input_specs(model or small_cnn())


def test_npz_batches_and_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(70, 3, 16, 16)).astype(np.float64)  # same kind: cast to float32
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(70) % 10)
    ds = Dataset(tmp_path / "d.npz", _specs())
    assert ds.num_samples == 70 and ds.labels is not None
    sizes = [len(b["x"]) for b in ds.batches(32)]
    assert sizes == [32, 32, 6]
    assert next(ds.batches(32))["x"].dtype == np.float32
    assert sum(len(b["x"]) for b in ds.batches(32, limit=40)) == 40


def test_folder_of_chunks_streams_across_files(tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"part{i}.npz", x=np.full((5, 3, 16, 16), i, np.float32))
    ds = Dataset(tmp_path, _specs())
    batches = list(ds.batches(4))
    assert [len(b["x"]) for b in batches] == [4, 4, 4, 3]
    assert batches[1]["x"][:, 0, 0, 0].tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_data_is_read_a_block_at_a_time_never_whole(tmp_path, monkeypatch, save):
    """A pass holds a block of rows and a batch, not the file's arrays: 128 samples of 800x608 images are 747 MB
    (PicoDet's calibration set), which np.load held for the whole of calibrate."""
    import tracemalloc

    from quantcli.data import npyfile, sources

    monkeypatch.setattr(npyfile, "BLOCK_BYTES", 1 << 18)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 1 << 18)
    x = np.random.default_rng(0).normal(size=(4096, 3, 16, 16)).astype(np.float32)  # 12.6 MB
    save(tmp_path / "d.npz", x=x, labels=np.arange(4096) % 10)
    tracemalloc.start()
    try:
        ds = Dataset(tmp_path / "d.npz", _specs())
        same, seen = True, 0
        for b in ds.batches(16):
            same &= np.array_equal(b["x"], x[seen:seen + len(b["x"])])  # the same samples, in order
            seen += len(b["x"])
        ds.select(40, SampleBy.RANDOM, seed=3)
        chosen = np.concatenate([b["x"] for b in ds.batches(16)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert same and seen == len(x)
    assert np.array_equal(chosen, x[ds.selection]) and len(ds.labels) == 40
    assert peak < x.nbytes / 4, f"peak {peak / 1e6:.1f} MB for {x.nbytes / 1e6:.1f} MB of data"


def test_npy_folder_and_a_truncated_file(tmp_path):
    x = np.arange(6 * 3 * 16 * 16, dtype=np.float32).reshape(6, 3, 16, 16)
    np.save(tmp_path / "x.npy", np.asfortranarray(x))  # Fortran order: read whole, still right
    assert np.array_equal(np.concatenate(list(b["x"] for b in Dataset(tmp_path, _specs()).batches(4))), x)
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-100])
    with pytest.raises(QuantcliError, match="cannot read data.*truncated|cannot read data"):
        Dataset(tmp_path, _specs())


def test_fixed_batch_model_gets_exact_batches(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3, 16, 16), np.float32))
    ds = Dataset(tmp_path / "d.npz", _specs(small_cnn(batch=1)))
    assert ds.default_batch_size(32) == 1
    assert [len(b["x"]) for b in ds.batches(1)] == [1] * 5


@pytest.mark.parametrize("arrays,message", [
    ({"y": np.zeros((2, 3, 16, 16), np.float32)}, "missing input(s) x"),
    ({"x": np.zeros((2, 3, 16, 16), np.float32), "extra": np.zeros(2)}, "unexpected array(s) extra"),
    ({"x": np.zeros((2, 3, 8, 8), np.float32)}, "axis 2: 8 != 16"),
    ({"x": np.zeros((2, 16, 16), np.float32)}, "the model expects [N, 3, 16, 16]"),
    ({"x": np.zeros((2, 3, 16, 16), np.int64)}, "has dtype int64, the model expects float32"),
    ({"x": np.full((2, 3, 16, 16), np.nan, np.float32)}, "NaN/Inf"),
    ({"x": np.zeros((0, 3, 16, 16), np.float32)}, "empty"),
    ({"x": np.zeros((3, 3, 16, 16), np.float32), "labels": np.zeros(2, np.int64)}, "2 labels for 3 samples"),
])
def test_bad_data_is_one_clear_error(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(QuantcliError) as e:
        Dataset(tmp_path / "d.npz", _specs())
    assert message in str(e.value) and str(tmp_path / "d.npz") in str(e.value)


def test_missing_and_unreadable_data(tmp_path):
    with pytest.raises(QuantcliError, match="no such file"):
        Dataset(tmp_path / "nope.npz", _specs())
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(QuantcliError, match="cannot read data"):
        Dataset(tmp_path / "bad.npz", _specs())
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantcliError, match="no .npz, .npy, image or .wav files"):
        Dataset(tmp_path / "empty", _specs())


def test_symbolic_dims_accept_any_size(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 7, 32), np.float32))
    ds = Dataset(tmp_path / "d.npz", _specs(small_mlp()))
    assert next(ds.batches(32))["x"].shape == (4, 7, 32)


def test_recipe_loads_and_flags_override(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[calibrate]\nmethod = "entropy"\nsamples = 10\n[convert]\nweights = "per-tensor"\n'
                 'exclude = ["fc"]\n[compare]\nmax_drop = 0.5\n')
    r = load_recipe(p)
    assert r.calibrate.method is Method.ENTROPY and r.calibrate.samples == 10
    assert r.convert.weights is Weights.PER_TENSOR and r.convert.exclude == ["fc"]
    merged = merge(r.convert, weights="per-channel", exclude=None)
    assert merged.weights is Weights.PER_CHANNEL and merged.exclude == ["fc"]


@pytest.mark.parametrize("text,message", [
    ('[convert]\nweigths = "per-tensor"\n', "[convert] unknown key 'weigths'"),
    ('[convert]\nweights = "per-chanel"\n', "[convert] weights: 'per-chanel' is not one of auto, per-channel, per-tensor"),
    ('[calibrate]\nsamples = "ten"\n', "[calibrate] samples: expected a non-negative integer"),
    ('[compare]\nmax_drop = true\n', "[compare] max_drop: expected a finite number"),
    ('[quantize]\n', "unknown key 'quantize'"),
    ('convert = 3\n', "'convert' must be a table"),
    ('[convert\n', "not a valid TOML recipe"),
])
def test_bad_recipe_names_file_and_key(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(QuantcliError) as e:
        load_recipe(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
    assert len(recipes) >= 3
    for p in recipes:
        assert load_recipe(p).description
