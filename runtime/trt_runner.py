"""Old home of the TensorRT runner, kept so that existing imports work: it now lives in lfm.runtime.backends.

    lfm.runtime.trt_runner.X  ->  lfm.runtime.backends.trt_engine   TrtRunner
                                  lfm.runtime.backends.trt_plan     sidecar, profile, TENSORRT_SUPPORT, versions
                                  lfm.runtime.backends.cuda_support cuda_check, buffers, device_info, SlotRing
"""
from __future__ import annotations

from .backends.base import BackendError, Runner
from .backends.cuda_support import (DRIVER_TOO_OLD_ERRORS, INSTALL_HINT, NO_GPU_ERRORS, CudaError, DeviceBuffer,
                                    PinnedBuffer, SlotRing, capability_str, cuda_check, cuda_python_version,
                                    device_info, driver_too_old_message, import_cudart)
from .backends.trt_engine import TrtRunner
from .backends.trt_plan import (REQUIRED_KEYS, SIDECAR_FORMAT, SIDECAR_SUFFIX, TENSORRT_SUPPORT, EngineError, ShapeError,
                                at_least, batch_parts, check_compatible, check_plan_bytes, check_shape, describe_profile,
                                engine_summary, profile_axes, profile_ranges, read_sidecar, rebuild_command,
                                sha256_bytes, sidecar_path, tensorrt_problem, tensorrt_untested, trt_release,
                                validate_sidecar, version_tuple, write_json_atomic)

__all__ = [
    "BackendError", "Runner", "TrtRunner",
    "DRIVER_TOO_OLD_ERRORS", "INSTALL_HINT", "NO_GPU_ERRORS", "CudaError", "DeviceBuffer", "PinnedBuffer", "SlotRing",
    "capability_str", "cuda_check", "cuda_python_version", "device_info", "driver_too_old_message", "import_cudart",
    "REQUIRED_KEYS", "SIDECAR_FORMAT", "SIDECAR_SUFFIX", "TENSORRT_SUPPORT", "EngineError", "ShapeError", "at_least",
    "batch_parts", "check_compatible", "check_plan_bytes", "check_shape", "describe_profile", "engine_summary",
    "profile_axes", "profile_ranges", "read_sidecar", "rebuild_command", "sha256_bytes", "sidecar_path",
    "tensorrt_problem", "tensorrt_untested", "trt_release", "validate_sidecar", "version_tuple", "write_json_atomic",
]
