# Two entry points: `make demo` (the main job end to end on the built-in synthetic scene) and
# `make test` (ruff + the whole test suite, what CI runs). Both create .venv and install everything
# they need. `make test-fast`: ruff + the tests not marked slow (under 3 minutes on 2 CPU cores).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO_DIR ?= demo_output

.PHONY: demo test test-fast lint install clean bench

$(BIN)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

lint: $(BIN)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q test

# The fast tier: every test not marked slow (the trained-model acceptance runs, the multi-process
# soak, the bench-script runs and tests of more than about 10 s are; see pyproject.toml).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow" test

# The whole story on the built-in synthetic scene (about 3 minutes on 2 CPU cores): render a room,
# train a small PoseNet with the aleatoric loss, calibrate its covariance and loop-closure flag,
# write the test loop and a walk out of the mapped area as a rosbag2, replay it through the node's
# pipeline, and write the HTML report.
DEMO_SCENE := width=64 height=48 hfov_deg=90 frames_per_sequence=96 train_sequences=8 val_sequences=1 \
	test_sequences=1 outside_sequences=1 variations=[]
DEMO_TRAIN := device=cpu model.backbone=resnet_tiny model.dropout=0.2 data.resize=48 data.crop=[44,60] \
	batch_size=16 lr=1e-3 epochs=60 "data.val_split=''" loss.kind=aleatoric model.aleatoric=per_axis

demo: $(BIN)/.installed
	rm -rf $(DEMO_DIR)
	$(BIN)/posenet-ros synth --quiet $(DEMO_DIR)/scene $(DEMO_SCENE)
	$(BIN)/posenet-ros train --data $(DEMO_DIR)/scene --out $(DEMO_DIR)/run $(DEMO_TRAIN)
	$(BIN)/posenet-ros calibrate --quiet --model $(DEMO_DIR)/run --data $(DEMO_DIR)/scene --split val
	$(BIN)/posenet-ros make-bag --quiet $(DEMO_DIR)/scene $(DEMO_DIR)/bag --split test --split outside
	$(BIN)/posenet-ros replay $(DEMO_DIR)/bag --model $(DEMO_DIR)/run --out $(DEMO_DIR)/replay
	@echo "HTML report: $(DEMO_DIR)/replay/report/index.html"

clean:
	rm -rf $(VENV) $(DEMO_DIR)

# The benchmarks (bench/*.py): each prints a table and writes bench/results/*.json. The device is
# CUDA where there is one (BENCH_DEVICE=cpu to force the CPU). About 15 minutes on 2 CPU cores.
BENCH_DEVICE ?= auto
bench: $(BIN)/.installed
	$(BIN)/python bench/pipeline_stages.py --device $(BENCH_DEVICE)
	$(BIN)/python bench/mc_overhead.py --device $(BENCH_DEVICE)
	$(BIN)/python bench/node_latency.py --device $(BENCH_DEVICE) --runtime torch
	$(BIN)/python bench/node_latency.py --device cpu --runtime onnx --out bench/results/node_latency_onnx.json
	$(BIN)/python bench/dds_serialization.py
	$(BIN)/python bench/replay_throughput.py --device $(BENCH_DEVICE) --batches 1 64
	$(BIN)/python bench/train_throughput.py --device $(BENCH_DEVICE)
	$(BIN)/python bench/temporal_step.py --device $(BENCH_DEVICE)
