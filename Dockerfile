# The deployment: NVIDIA's Triton Inference Server with this project installed, built once.
#
#   docker build -t tbps-triton .
#   docker run --gpus all --rm --shm-size=1g -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002 \
#       -v $PWD/runs/repo-gpu:/models:ro tbps-triton \
#       tritonserver --model-repository /models --model-control-mode explicit --load-model '*'
#
# The release is export/engines.py's CONTAINER: its TensorRT (CONTAINER_TRT, exactly) loads the engines that
# export/to_trt.py builds under the `trt` extra's TensorRT, and its CUDA 12.8 is the torch
# build's below. The python backend (tokenizer, gallery_search) runs in the image's Python 3.12.
FROM nvcr.io/nvidia/tritonserver:25.01-py3

# the python backend's interpreter is the system one (Ubuntu 24.04 marks it externally managed)
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1

# torch first, from the index of the container's CUDA: a bare `torch` requirement would pull
# PyPI's build for another CUDA, which the container's driver floor may not run
ARG TORCH_VERSION=2.9.1
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cu128

WORKDIR /opt/tbps
COPY pyproject.toml README.md ./
COPY trainer trainer
COPY export export
COPY kernels kernels
COPY serving serving
# The Triton kernels of gallery_search run under the Triton that CI's compile gate checks and that
# kernels/search_configs.json was chosen under (pyproject's [gpu] pin): it replaces the one this torch
# pins (used only by torch.compile, which serving never calls), --no-deps so that pip keeps this torch.
# The encoders run in Triton's own tensorrt_plan / onnxruntime_onnx backends, so neither ONNX Runtime
# nor TensorRT's Python package is needed here. Last, the launcher check: Triton builds a C launcher at
# a GPU's first kernel launch, so a missing compiler or Python.h fails this build, not the server's start.
ARG TRITON_VERSION=3.9.0
RUN pip install . && pip install --no-deps "triton==${TRITON_VERSION}" \
    && python3 -c "import torch, triton, kernels.search_triton, export.gallery, trainer.data.tokenizer; assert torch.version.cuda.startswith('12.8'), torch.version.cuda; assert triton.__version__ == '${TRITON_VERSION}', triton.__version__" \
    && python3 -m kernels.toolchain
