"""Kernel tests run Triton's interpreter where no CUDA GPU is visible: TRITON_INTERPRET must be
set before triton is first imported, so a kernel test module calls this before its imports."""
from __future__ import annotations

import os
import sys


def cuda_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def use_interpreter_without_gpu() -> None:
    if "triton" not in sys.modules and not cuda_visible():
        os.environ.setdefault("TRITON_INTERPRET", "1")
