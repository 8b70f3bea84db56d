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


class KernelPlaces:
    """Where a kernel module's tests run (call after the module's imports): ``interpret`` (the
    kernel runs in Triton's interpreter), ``device`` ("cpu" under the interpreter, "cuda" on a GPU,
    None where triton was imported compiled and there is no GPU), and the two skip marks."""

    def __init__(self, kernel):
        import pytest
        import torch

        from lfm.kernels import interpreted

        self.cuda = torch.cuda.is_available()
        self.interpret = interpreted(kernel)
        self.device = "cpu" if self.interpret else ("cuda" if self.cuda else None)
        self.needs_kernel_device = pytest.mark.skipif(
            self.device is None, reason="triton was imported in compiled mode before this module and there is no "
                                        "GPU: these run in a child process (test_interpreter_tests_in_a_child_process)")
        self.needs_cuda = pytest.mark.skipif(
            not self.cuda or self.interpret, reason="no CUDA device visible to torch" if not self.cuda
            else "TRITON_INTERPRET=1 is set: kernels run in the interpreter")


def run_under_interpreter(test_file, select: str, cwd) -> None:
    """Run ``pytest -k select`` on a kernel test module in a child process with TRITON_INTERPRET=1
    (for when this process imported triton compiled); fails with the child's output."""
    import subprocess

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file), "-k", select],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
