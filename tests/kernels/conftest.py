"""Without a GPU the Triton kernels run through triton's interpreter on CPU tensors; it reads
TRITON_INTERPRET when triton is first imported, so it is set before any test module loads."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
