"""A TensorRT engine's files, read without TensorRT: the sidecar, the optimisation profile, compatibility, versions.

Plain functions (numpy and the standard library only), so that they are tested without a GPU and
used by the exporter (``export/trt_build.py`` writes what ``read_sidecar`` reads), by
``runtime/inspect_model.py`` and by the TensorRT runner (``lfm.runtime.backends.trt_engine``):

- the sidecar, PLAN.json: read, validate, written atomically; ``check_compatible`` names the
  rebuild command when the TensorRT release or the GPU differ, ``check_plan_bytes`` the SHA-256;
- the plan itself: ``recognise_plan`` (the sidecar's SHA-256, else what is known of an engine's
  header, ``plan_header``), used by inspect and, through ``check_plan_bytes``, by the runner;
- the optimisation profile: ``check_shape`` with the range in its error, ``batch_parts``
  splitting or padding a batch to fit it;
- the supported versions, declared once in ``TENSORRT_SUPPORT`` below (the README's TensorRT
  support table says the same in words), and ``version_tuple`` / ``at_least`` to compare them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex

from .base import BackendError

SIDECAR_FORMAT = "lfm-trt-engine/1"
SIDECAR_SUFFIX = ".json"  # lfm.plan -> lfm.plan.json
REQUIRED_KEYS = ("format", "spec", "input", "profiles", "precision", "tensorrt", "device", "plan_sha256", "command")

# The supported-version matrix, declared here only: "MAJOR.MINOR" floors (>=) and ceilings (<).
# What each one guards:
TENSORRT_SUPPORT = {
    # every TensorRT name the engine code uses exists from 10.8 on (tests/test_trt_conformance.py
    # reads the real bindings); 12 is not out yet: a newer major gets a warning, not a refusal
    "tensorrt": ("10.8", "12"),
    # the plugin graph: tensorrt.plugin.aot_impl, KernelLaunchParams, SymInt32 and
    # NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS appear in 10.9
    "plugin_graph": "10.9",
    # pip's tensorrt-cu12 / -cu13 wheels ship the tensorrt.plugin package from 10.14 on (the wheels
    # in NGC containers and TensorRT tarballs have it): the [tensorrt-cu12] / [tensorrt-cu13] floor
    "pip_plugin_module": "10.14",
    # TensorRT < 11.2's plugin creator reads an int attribute (LfmTopKPool's k) as int(1-element
    # array), which NumPy 2.4 refuses (TypeError): there the plugin graph needs numpy < 2.4
    "plugin_graph_numpy_below": "2.4",
    "plugin_graph_numpy_fixed_in": "11.2",
    # cuda-python's major follows the CUDA major of TensorRT's wheel and of the driver
    "cuda_python": {"cu12": ("12.6", "13"), "cu13": ("13.0", "14")},
    # SimpleCompareFunc, and compare_accuracy returning a list of results, arrive in Polygraphy 0.53
    "polygraphy": "0.53",
}


class EngineError(BackendError):
    """A plan that cannot be used here: missing, corrupt, or built for another TensorRT or GPU."""


class ShapeError(ValueError):
    """An input shape outside the engine's optimisation profile."""


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.14.1.48.post1' -> (10, 14, 1, 48); '2.4.0rc1' -> (2, 4, 0): the leading digits of each
    dotted part, stopping at the first part that is not all digits."""
    out = []
    for part in str(version).split("."):
        digits = len(part) - len(part.lstrip("0123456789"))
        if not digits:
            break
        out.append(int(part[:digits]))
        if digits < len(part):  # '0rc1': a pre-release tag ends the number
            break
    return tuple(out)


def at_least(version: str, floor: str) -> bool:
    return version_tuple(version) >= version_tuple(floor)


def tensorrt_problem(trt_version: str) -> str | None:
    """One line when this TensorRT is older than LFM's engine code supports, else None."""
    floor, _ = TENSORRT_SUPPORT["tensorrt"]
    if at_least(trt_version, floor):
        return None
    return (f"TensorRT {trt_version} is older than {floor}, the oldest release LFM's engine code supports; "
            "install a newer one: pip install -e '.[tensorrt]' (CUDA 13 driver) or '.[tensorrt-cu12]' (CUDA 12 driver)")


def tensorrt_untested(trt_version: str) -> str | None:
    """A warning (one line) for a TensorRT major newer than any this code was checked against."""
    floor, ceiling = TENSORRT_SUPPORT["tensorrt"]
    if not at_least(trt_version, ceiling):
        return None
    return (f"TensorRT {trt_version} is newer than the releases LFM's engine code is checked against "
            f"({floor} up to, not including, {ceiling}); if a TensorRT call fails, that is why")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sidecar_path(plan: str | os.PathLike) -> str:
    return os.fspath(plan) + SIDECAR_SUFFIX


def trt_release(version: str) -> str:
    """'10.8.0.43' -> '10.8.0': engines are tied to the TensorRT release that built them."""
    return ".".join(str(version).split(".")[:3])


def profile_axes(layout: str) -> tuple[int, int, int]:
    """Axes of (batch, height, width) in a 4-D input of this layout."""
    if layout == "NHWC":
        return 0, 1, 2
    if layout == "NCHW":
        return 0, 2, 3
    raise ValueError(f"unknown input layout {layout!r}; expected NHWC or NCHW")


def profile_ranges(profile: dict) -> dict[str, tuple[int, int]]:
    """{"batch": (lo, hi), "height": (lo, hi), "width": (lo, hi)} of a profile dict."""
    axes = profile_axes(profile["layout"])
    return {k: (int(profile["min"][a]), int(profile["max"][a])) for k, a in zip(("batch", "height", "width"), axes)}


def describe_profile(profile: dict) -> str:
    r = profile_ranges(profile)
    return ", ".join(f"{k} {lo}..{hi}" if lo != hi else f"{k} {lo}" for k, (lo, hi) in r.items())


def check_shape(shape, profile: dict, plan: str = "the engine", batch_ok: bool = True) -> None:
    """Raise ShapeError, one line naming the profile's range, if an input shape cannot run.

    ``batch_ok``: the runner splits batches above the profile's maximum and pads those below its
    minimum (``batch_parts``), so only height, width and the fixed axes are checked by default."""
    shape = tuple(int(s) for s in shape)
    lo, hi = tuple(profile["min"]), tuple(profile["max"])
    if len(shape) != len(lo):
        raise ShapeError(f"input of shape {list(shape)} has {len(shape)} axes; {plan} takes {len(lo)} "
                         f"({profile['layout']})")
    b, h, w = profile_axes(profile["layout"])
    fixed = [i for i in range(len(shape)) if i not in (b, h, w)]
    bad_fixed = [i for i in fixed if not lo[i] <= shape[i] <= hi[i]]
    if bad_fixed:
        raise ShapeError(f"input of shape {list(shape)} does not fit {plan}: axis {bad_fixed[0]} must be "
                         f"{lo[bad_fixed[0]]} ({profile['layout']} layout)")
    outside = [(name, shape[a], lo[a], hi[a]) for name, a in (("height", h), ("width", w))
               if not lo[a] <= shape[a] <= hi[a]]
    if not batch_ok and not lo[b] <= shape[b] <= hi[b]:
        outside.insert(0, ("batch", shape[b], lo[b], hi[b]))
    if outside:
        what = ", ".join(f"{n} {v} not in {a}..{z}" for n, v, a, z in outside)
        raise ShapeError(f"input {shape[h]}x{shape[w]} (batch {shape[b]}) is outside {plan}'s optimisation "
                         f"profile ({describe_profile(profile)}): {what}; use --size/--policy to fit it, or "
                         f"rebuild the engine with a wider export/to_trt.py --size/--batch")


def batch_parts(n: int, min_batch: int, max_batch: int) -> list[tuple[int, int, int]]:
    """Split a batch of n into runs the profile accepts: [(start, stop, run_batch)], run_batch >=
    stop - start (the rest is padding, for batches below the profile's minimum)."""
    if n < 1:
        raise ValueError(f"empty batch ({n})")
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"bad batch range {min_batch}..{max_batch}")
    parts = []
    for start in range(0, n, max_batch):
        stop = min(n, start + max_batch)
        parts.append((start, stop, max(stop - start, min_batch)))
    return parts


def read_sidecar(plan: str | os.PathLike) -> dict:
    """The engine's sidecar (PLAN.json) as a dict; EngineError, one line, when missing or unusable."""
    plan, path = os.fspath(plan), sidecar_path(plan)
    if not os.path.exists(path):
        raise EngineError(f"{plan}: its sidecar {os.path.basename(path)} is missing (it holds the engine's "
                          "preprocessing spec and build record); rebuild the engine with export/to_trt.py, which "
                          "writes both")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise EngineError(f"{path}: not a readable engine sidecar ({type(e).__name__}: {e})") from None
    validate_sidecar(data, path)
    return data


def validate_sidecar(data, path: str = "sidecar") -> None:
    if not isinstance(data, dict):
        raise EngineError(f"{path}: not an engine sidecar (expected a JSON object)")
    if data.get("format") != SIDECAR_FORMAT:
        raise EngineError(f"{path}: unknown sidecar format {data.get('format')!r} (expected {SIDECAR_FORMAT!r}); "
                          "rebuild the engine with this version's export/to_trt.py")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise EngineError(f"{path}: sidecar lacks {', '.join(missing)}; rebuild the engine with export/to_trt.py")
    if not data["profiles"]:
        raise EngineError(f"{path}: sidecar lists no optimisation profile")


def write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rebuild_command(sidecar: dict) -> str:
    command = sidecar.get("command")
    return shlex.join(command) if isinstance(command, list) else str(command)


def check_compatible(sidecar: dict, trt_version: str, device_name: str, compute_capability: str,
                     plan: str = "the engine") -> str | None:
    """Can this machine run the engine? Raise EngineError naming both sides and the exact rebuild
    command when the TensorRT release or the GPU's compute capability differ (an engine is built for
    one TensorRT release and one GPU architecture). Return a warning (or None) when only the GPU
    model differs within one compute capability: TensorRT loads such engines, tuned for the other
    model."""
    built_trt, built_dev = str(sidecar["tensorrt"]), sidecar["device"]
    built_cc, built_name = str(built_dev.get("compute_capability")), str(built_dev.get("name"))
    problems = []
    if trt_release(built_trt) != trt_release(trt_version):
        problems.append(f"TensorRT {trt_release(built_trt)} built it, this machine has TensorRT {trt_release(trt_version)}")
    if built_cc != str(compute_capability):
        problems.append(f"it was built for {built_name} (compute capability {built_cc}), this GPU is {device_name} "
                        f"(compute capability {compute_capability})")
    if problems:
        raise EngineError(f"{plan} cannot run here: {'; '.join(problems)}. A TensorRT engine runs only on the "
                          f"TensorRT release and GPU architecture it was built for; rebuild it on this machine: "
                          f"{rebuild_command(sidecar)}")
    if built_name != device_name:
        return (f"{plan} was built on {built_name} and runs here on {device_name} (same compute capability "
                f"{built_cc}): it works, tuned for the other GPU; for best speed rebuild it here: {rebuild_command(sidecar)}")
    return None


# A serialized engine's first bytes, as far as they are known without TensorRT. NVIDIA documents
# no plan format; what follows is observed, not specified, and may change with a release:
# - bytes 0-3, a magic tag: TensorRT's deserializer checks one first ("Magic tag does not match",
#   "plan->header.magicTag == rt::kPLAN_MAGIC_TAG" in its errors on non-engines); b"ptrt" is what
#   third-party tools that sniff engine files look for there; b"ftrt" is reported for other
#   releases, by word of mouth only (we found no source that reads it);
# - bytes 24-26, the TensorRT major, minor and patch that built it: an NVIDIA engineer's answer in
#   NVIDIA/TensorRT issue 3073, which Autoware's tensorrt_common reads to rebuild stale engines.
# So a header can say "plausibly an engine", never "loadable": the sidecar's SHA-256 (computed by
# export/to_trt.py from the bytes TensorRT serialized) is the strong evidence, and the runner
# needs it anyway.
PLAN_MAGICS = (b"ptrt", b"ftrt")
PLAN_HEADER_BYTES = 32
PLAN_VERSION_OFFSET = 24


def plan_header(head: bytes) -> dict | None:
    """What a plan's first bytes say (``{"magic": "ptrt", "tensorrt": "10.14.1" or None}``), or None
    where they do not start as a serialized engine is observed to (see PLAN_MAGICS)."""
    if len(head) < PLAN_HEADER_BYTES or head[:4] not in PLAN_MAGICS:
        return None
    major, minor, patch = head[PLAN_VERSION_OFFSET:PLAN_VERSION_OFFSET + 3]
    plausible = 8 <= major <= 20  # TensorRT 8 introduced this layout; a larger byte is not a version
    return {"magic": head[:4].decode("ascii"), "tensorrt": f"{major}.{minor}.{patch}" if plausible else None}


def recognise_plan(plan: str, head: bytes, sha256: str, sidecar: dict | None) -> str:
    """How a file is known to be a TensorRT engine without TensorRT: "sidecar" (its SHA-256 is the
    one export/to_trt.py recorded), else "header" (``plan_header``). EngineError, one line, when it
    is empty or neither holds: nothing else is handed to TensorRT or reported as an engine."""
    remedy = f"rebuild it: {rebuild_command(sidecar)}" if sidecar is not None else "build one with export/to_trt.py"
    if not head:
        raise EngineError(f"{plan}: empty file (0 bytes), not a TensorRT engine; {remedy}")
    if sidecar is not None and sha256 == sidecar["plan_sha256"]:
        return "sidecar"
    if plan_header(head) is not None:
        return "header"
    sidecar_name = os.path.basename(sidecar_path(plan))
    against = (f"does not match its sidecar {sidecar_name} (SHA-256 differs)" if sidecar is not None
               else f"has no sidecar {sidecar_name}")
    raise EngineError(f"{plan}: not a TensorRT engine: it does not start as a serialized engine does (magic "
                      f"{' or '.join(repr(m.decode()) for m in PLAN_MAGICS)}) and {against}; {remedy}")


def check_plan_bytes(plan: str, data: bytes, sidecar: dict) -> None:
    """The runner's check before TensorRT sees the bytes: they are the engine its sidecar records."""
    if recognise_plan(plan, data[:PLAN_HEADER_BYTES], sha256_bytes(data), sidecar) != "sidecar":
        raise EngineError(f"{plan}: does not match its sidecar {os.path.basename(sidecar_path(plan))} (SHA-256 "
                          f"differs: the plan was modified, truncated or replaced); rebuild it: {rebuild_command(sidecar)}")


def engine_summary(sidecar: dict) -> str:
    """One line about an engine, for logs: precision, input, profile, built with/for."""
    prof = sidecar["profiles"][0]
    dev = sidecar["device"]
    return (f"{sidecar['precision']} engine, input {sidecar['input']['name']} {sidecar['input']['dtype']} "
            f"{sidecar['input']['layout']}, {describe_profile(prof)}; TensorRT {sidecar['tensorrt']} on {dev['name']} "
            f"(compute capability {dev['compute_capability']})")
