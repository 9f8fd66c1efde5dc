"""Suite-wide settings that must be in place before any test module imports its dependencies."""

import os
import sys

import torch

# the test-only support package (CPU platform for verl, test reward); installed as a package only in .venv-e2e
SUPPORT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
if SUPPORT_DIR not in sys.path:
    sys.path.insert(0, SUPPORT_DIR)

if not torch.cuda.is_available():
    # Without CUDA, Triton code can only run in Triton's interpreter. Triton fixes interpreter mode for its own
    # standard library when it is first imported (verl imports it too), so switch it on before anything does;
    # tests/test_triton_entropy.py runs the fused kernels this way on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")
