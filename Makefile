# assignlab: every command creates and uses .venv and installs what it needs.
# CI pins torch to the 2.13.0 CPU build here (not in pyproject: learners keep their own torch).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,notebooks,dev,book
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.assignlab-installed

.PHONY: help install demo test lint lab exercises book bench bench-peers bench-gpu clean

help:
	@echo "make demo       run the main job on the embedded scene (figures + ONNX under build/demo/)"
	@echo "make test       lint + unit, property, parity and ONNX tests (+ notebooks)"
	@echo "make lab        open JupyterLab at the repository root, on notebooks/00_tour.ipynb"
	@echo "make exercises  write learner copies of the notebooks under build/exercises/ (existing copies are kept)"
	@echo "make book       the executed notebooks as a static web site under build/book/html/"
	@echo "make bench      benchmark tables under benchmarks/results/"
	@echo "make bench-peers  the same workloads on mmdetection and ultralytics, side by side (optional)"
	@echo "make bench-gpu  torch CUDA vs onnxruntime CUDA vs CPU -> benchmarks/results/gpu.md (needs CUDA)"

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

# The lab starts at the repository root, so that its file browser reaches notebooks/ and the learner
# copies under build/exercises/ alike. Jupyter refuses to run as root (common in containers) unless told.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
lab: $(STAMP)
	@echo "learner copies: run 'make exercises' once; they appear under build/exercises/ in the file browser"
	$(BIN)/jupyter lab $(ALLOW_ROOT) --ServerApp.root_dir="$(CURDIR)" \
		--LabApp.default_url=/lab/tree/notebooks/00_tour.ipynb

exercises: $(STAMP)
	$(BIN)/python -m lessons exercises --src notebooks --out build/exercises

# Executes every notebook (a few minutes on 2 cores) and builds build/book/html/index.html.
book: $(STAMP)
	$(BIN)/python -m lessons book --src notebooks --out build/book

bench: $(STAMP)
	MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 $(BIN)/python benchmarks/run.py

bench-peers: $(STAMP)
	$(BIN)/python benchmarks/peers.py

# Needs a CUDA device and onnxruntime-gpu (EXTRAS=gpu,notebooks,dev and a CUDA torch); without CUDA it says so.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
