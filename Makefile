# assignlab: every command creates and uses .venv and installs what it needs.
# CI pins torch to the 2.13.0 CPU build here (not in pyproject: learners keep their own torch).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,notebooks,dev
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.assignlab-installed

.PHONY: help install demo test lint lab exercises bench bench-peers arena clean

help:
	@echo "make demo       run the main job on the embedded scene (figures + ONNX under build/demo/)"
	@echo "make test       lint + unit, property, parity and ONNX tests (+ notebooks)"
	@echo "make lab        open JupyterLab on notebooks/"
	@echo "make exercises  write learner copies of the notebooks under build/exercises/"
	@echo "make bench      benchmark tables under benchmarks/results/"
	@echo "make bench-peers  the same workloads on mmdetection and ultralytics, side by side (optional)"
	@echo "make arena      train one tiny detector with every assigner x 3 seeds -> benchmarks/results/arena.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lessons demo

lint: $(STAMP)
	$(BIN)/ruff check .

# pytest exits 5 when it collects nothing: that is not a failure of the code.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --nbmake --nbmake-timeout=300 tests notebooks || [ $$? -eq 5 ]

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

exercises: $(STAMP)
	$(BIN)/python -m lessons exercises --src notebooks --out build/exercises

bench: $(STAMP)
	MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 $(BIN)/python benchmarks/run.py

bench-peers: $(STAMP)
	$(BIN)/python benchmarks/peers.py

arena: $(STAMP)
	$(BIN)/python -m lessons.arena run

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
