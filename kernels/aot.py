"""Ahead-of-time compilation of the kernels to PTX, for TensorRT's AOT Python plugins.

TensorRT's ``tensorrt.plugin.aot_impl`` embeds a kernel in the engine as (kernel name, PTX,
launch parameters: grid x/y/z, block x/y/z, shared memory, extra int scalars as symbolic
expressions). Plugin attributes are NOT serialised into an AOT engine, so everything an
attribute would carry (NPR's per-channel scale, Top-K's K) is a ``tl.constexpr`` baked into the
PTX: compile once per value. The kernels' parameters follow TensorRT's AOT calling convention,
``(input pointers..., extra int32 scalars..., output pointers...)``; Triton then appends hidden
pointer parameters (``global_scratch``, and since Triton 3.5 ``profile_scratch``), unused by
these kernels (their scratch sizes are 0, checked here): a launcher passes NULL for them.

Nothing here needs a GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``
runs on the CPU, and Triton runs its bundled ``ptxas`` on the result, so every artifact has
been assembled once for its arch before it is returned.

PTX ISA pin (``PTX_VERSION``)
-----------------------------
A CUDA driver JIT-compiles only PTX ISA versions it knows (driver for CUDA 12.x: ISA 8.0 - 8.8,
13.0: 9.0). Triton's default is the newest ISA its bundled ptxas knows: Triton 3.9 assembles
sm_80/86/89 with ptxas 12.9 (-> ``.version 8.8``) and sm_90+ with ptxas 13.4 (-> ``.version
9.4``), too new for our CUDA 13.0 test driver (9.0) and for any CUDA 12 driver. Triton's CUDA
option ``ptx_version`` (an int, 80 = ISA 8.0) sets LLVM's ``+ptxNN`` feature (capped at 9.0)
and rewrites the ``.version`` line (Triton 3.6, also tested: ptxas 12.8 for sm < 100, so ISA 8.7 by
default; LLVM's feature capped at 8.6). Behaviour found here (Triton 3.9): below an arch's minimum
(sm_90a needs 8.0) LLVM aborts the whole process (so we check first); above what the bundled
ptxas takes (8.8 for ptxas 12.9, used for sm < 90) ``triton.compile`` fails in ptxas.

We pin ISA 8.0: the lowest sm_90a accepts (Triton targets ``sm_90a`` for sm_90), so every
driver from CUDA 12.0 (R525, the oldest TensorRT 10 runs on) through 13.x JIT-compiles every
artifact, and the bundled ptxas (Triton 3.9: 12.9 and 13.4; 3.6: 12.8 and 12.9) assemble it for
all four targets (tested). Both Triton versions give the same interface: ``.version 8.0``, the
same ``.target`` lines and parameters, two hidden pointers (only ``shared_mem`` differs).
Triton emits ``.target sm_90a`` for sm_90: arch-specific PTX, which loads on sm_90 devices
(H100 / H200) only, as a per-arch artifact should.

Also: no line info (the PTX would otherwise carry this checkout's paths and DWARF sections);
pointer parameters are compiled as 16-byte aligned (``tt.divisibility``), as the JIT
does for aligned tensors: buffers passed in must be 16-byte aligned (TensorRT's and PyTorch's
allocations are at least 256-byte aligned).

In a process where TRITON_INTERPRET=1 was set before triton's import (the CPU tests), Triton's
own library functions are interpreter objects and cannot be compiled; the compile functions
here then run the compilation in a child process without that variable (same results).

CLI: ``python -m lfm.kernels.aot --out DIR [--arch 80 86 89 90] [--scale s0 s1 s2] [--k 16]``
writes each artifact as ``NAME.ptx`` + ``NAME.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from . import npr as _npr
from . import top_k_pool as _topk

ARCHS = (80, 86, 89, 90)
PTX_VERSION = 80  # Triton's encoding: 80 = PTX ISA 8.0 (see the module docstring)
MIN_PTX_VERSION = {80: 70, 86: 71, 89: 78, 90: 80}  # the lowest ISA each target accepts
HIDDEN_PARAMS = ("global_scratch", "profile_scratch")


@dataclass(frozen=True)
class AotKernel:
    """One compiled kernel: what a TensorRT AOT plugin (or ``cuda_launch``) needs to launch it."""

    kind: str  # "npr" | "top_k_pool"
    name: str  # the PTX entry (kernel) name
    ptx: str
    arch: int  # 80, 86, 89, 90
    target: str  # the PTX .target: "sm_80", "sm_86", "sm_89", "sm_90a"
    ptx_version: str  # the PTX .version, e.g. "8.0"
    num_warps: int  # block = (num_warps * 32, 1, 1); the PTX has .reqntid of exactly that
    shared_mem: int  # bytes of dynamic shared memory to launch with
    params: tuple  # parameter names in kernel order, e.g. ("x_ptr", "height", "width", "out_ptr")
    param_kinds: tuple  # per parameter: "input" | "scalar" | "output"
    hidden_params: tuple  # PTX pointer parameters after the outputs (pass NULL)
    constexprs: dict = field(default_factory=dict)  # the values baked in
    signature: dict = field(default_factory=dict)  # Triton signature, e.g. {"x_ptr": "*u8", ...}
    triton_version: str = ""

    @property
    def block(self) -> tuple[int, int, int]:
        return (self.num_warps * 32, 1, 1)

    @property
    def inputs(self) -> tuple:
        return tuple(p for p, k in zip(self.params, self.param_kinds) if k == "input")

    @property
    def scalars(self) -> tuple:
        return tuple(p for p, k in zip(self.params, self.param_kinds) if k == "scalar")

    @property
    def outputs(self) -> tuple:
        return tuple(p for p, k in zip(self.params, self.param_kinds) if k == "output")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AotKernel":
        d = dict(d)
        for key in ("params", "param_kinds", "hidden_params"):
            d[key] = tuple(d[key])
        return cls(**d)

    def save(self, directory, stem: str | None = None) -> str:
        """Writes STEM.ptx and STEM.json (everything, PTX included); returns the json path."""
        stem = stem or artifact_stem(self)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, stem + ".ptx"), "w") as f:
            f.write(self.ptx)
        path = os.path.join(directory, stem + ".json")
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        return path

    @classmethod
    def load(cls, path) -> "AotKernel":
        with open(path) as f:
            return cls.from_dict(json.load(f))


# --------------------------------------------------------------------------------------------
# Launch geometry: + - * // only, so ints and TensorRT's symbolic expressions both work


def npr_launch(kernel: AotKernel, batch, height, width):
    """(grid, block, shared_mem, extra_args) of an NPR artifact for an input of H x W, batch B.

    extra_args = (height, width): the kernel's int32 scalars, in kernel order (the input's H, W).
    """
    _expect(kernel, "npr")
    grid = _npr.npr_grid(batch, height, width, kernel.constexprs["BLOCK_W"])
    return grid, kernel.block, kernel.shared_mem, (height, width)


def top_k_pool_launch(kernel: AotKernel, batch, channels, height, width):
    """(grid, block, shared_mem, extra_args) of a Top-K artifact for maps [B, C, H, W].

    extra_args = (height * width,): values per map. The caller guarantees H * W >= K (the
    kernel would return NaNs in the missing places).
    """
    _expect(kernel, "top_k_pool")
    return _topk.top_k_pool_grid(batch, channels), kernel.block, kernel.shared_mem, (height * width,)


def _expect(kernel: AotKernel, kind: str) -> None:
    if kernel.kind != kind:
        raise ValueError(f"expected a {kind} artifact, got {kernel.kind} ({kernel.name})")


# --------------------------------------------------------------------------------------------
# Compilation


def normalize_arch(arch) -> int:
    """80, "80", "sm_80", "sm_90a" -> 80 / 90; only the targets we build for."""
    text = str(arch).lower().removeprefix("sm_").rstrip("a")
    if not text.isdigit() or int(text) not in ARCHS:
        raise ValueError(f"unsupported arch {arch!r}: choose one of {', '.join(f'sm_{a}' for a in ARCHS)}")
    return int(text)


def compile_npr(arch, *, input_dtype: str = "uint8", scale=None, out_dtype: str = "float32",
                out_layout: str = "NCHW", block_w: int = _npr.BLOCK_W, num_warps: int = _npr.NUM_WARPS,
                ptx_version: int = PTX_VERSION) -> AotKernel:
    """NPR kernel for ``arch``: uint8 [B, H, W, 3] or float32 [B, 3, H, W] -> |NPR| * scale.

    Parameters (kernel order): x_ptr (input), height, width (int32), out_ptr (output).
    """
    return compile_many([("npr", arch, dict(input_dtype=input_dtype, scale=scale, out_dtype=out_dtype,
                                            out_layout=out_layout, block_w=block_w, num_warps=num_warps,
                                            ptx_version=ptx_version))])[0]


def compile_top_k_pool(arch, *, k: int = _topk.K_DEFAULT, dtype: str = "float32", block: int = _topk.BLOCK,
                       num_warps: int = _topk.NUM_WARPS, ptx_version: int = PTX_VERSION) -> AotKernel:
    """Top-K pooling kernel for ``arch``: maps [B, C, H, W] -> [B, C * k] (k largest, descending).

    Parameters (kernel order): maps_ptr (input), n = H * W (int32), out_ptr (output).
    """
    return compile_many([("top_k_pool", arch, dict(k=k, dtype=dtype, block=block, num_warps=num_warps,
                                                   ptx_version=ptx_version))])[0]


def compile_many(requests) -> list[AotKernel]:
    """Compiles [(kind, arch, kwargs), ...] in order (cached; one child process for all if needed)."""
    keys = [_request_key(kind, arch, kwargs) for kind, arch, kwargs in requests]
    missing = [k for k in dict.fromkeys(keys) if k not in _CACHE]
    if missing:
        if _interpreter_mode():
            for key, art in zip(missing, _compile_in_child(missing)):
                _CACHE[key] = art
        else:
            for key in missing:
                _CACHE[key] = _compile(key)
    return [_CACHE[k] for k in keys]


_CACHE: dict = {}


def _request_key(kind: str, arch, kwargs: dict) -> tuple:
    """Validates a request and returns it as a hashable, JSON-able key (kind, arch, sorted kwargs)."""
    arch = normalize_arch(arch)
    kw = dict(kwargs)
    ptx_version = int(kw.get("ptx_version", PTX_VERSION))
    if ptx_version < MIN_PTX_VERSION[arch]:
        raise ValueError(f"PTX ISA {ptx_version // 10}.{ptx_version % 10} is too old for sm_{arch} "
                         f"(needs {MIN_PTX_VERSION[arch] // 10}.{MIN_PTX_VERSION[arch] % 10} or newer)")
    kw["ptx_version"] = ptx_version
    if kind == "npr":
        input_dtype = kw.setdefault("input_dtype", "uint8")
        if input_dtype not in _npr.IN_LAYOUTS:
            raise ValueError(f"input_dtype must be one of {tuple(_npr.IN_LAYOUTS)}, got {input_dtype!r}")
        kw["scale"] = list(_npr._check_scale(kw.get("scale"), input_dtype))
        if kw.setdefault("out_dtype", "float32") not in _npr.OUT_DTYPES:
            raise ValueError(f"out_dtype must be one of {_npr.OUT_DTYPES}, got {kw['out_dtype']!r}")
        if kw.setdefault("out_layout", "NCHW") not in _npr.OUT_LAYOUTS:
            raise ValueError(f"out_layout must be one of {_npr.OUT_LAYOUTS}, got {kw['out_layout']!r}")
        block_w = int(kw.setdefault("block_w", _npr.BLOCK_W))
        if block_w < 1 or block_w & (block_w - 1):
            raise ValueError(f"block_w must be a power of two, got {block_w}")
        kw.setdefault("num_warps", _npr.NUM_WARPS)
    elif kind == "top_k_pool":
        if kw.setdefault("dtype", "float32") not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {kw['dtype']!r}")
        _topk.kernel_constexprs(int(kw.setdefault("k", _topk.K_DEFAULT)), int(kw.setdefault("block", _topk.BLOCK)))
        kw.setdefault("num_warps", _topk.NUM_WARPS)
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")
    n = int(kw["num_warps"])
    if n < 1 or n & (n - 1):
        raise ValueError(f"num_warps must be a power of two, got {n}")
    return (kind, arch, json.dumps(kw, sort_keys=True))


_TRITON_TYPES = {"uint8": "*u8", "float32": "*fp32", "float16": "*fp16"}


def _compile(key: tuple) -> AotKernel:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kind, arch, kw = key[0], key[1], json.loads(key[2])
    if kind == "npr":
        fn = _npr.npr_kernel
        signature = {"x_ptr": _TRITON_TYPES[kw["input_dtype"]], "height": "i32", "width": "i32",
                     "out_ptr": _TRITON_TYPES[kw["out_dtype"]]}
        s0, s1, s2 = kw["scale"]
        constexprs = {"SCALE0": s0, "SCALE1": s1, "SCALE2": s2, "IN_NHWC": kw["input_dtype"] == "uint8",
                      "OUT_NHWC": kw["out_layout"] == "NHWC", "BLOCK_W": kw["block_w"]}
        kinds = ("input", "scalar", "scalar", "output")
    else:
        fn = _topk.top_k_pool_kernel
        signature = {"maps_ptr": _TRITON_TYPES[kw["dtype"]], "n": "i32", "out_ptr": _TRITON_TYPES[kw["dtype"]]}
        constexprs = _topk.kernel_constexprs(kw["k"], kw["block"])
        kinds = ("input", "scalar", "output")
    params = tuple(signature)
    jit_fn = _jit_function(fn)
    if list(jit_fn.arg_names) != [*params, *constexprs]:
        raise RuntimeError(f"{fn.__name__}: parameters {jit_fn.arg_names} do not match {[*params, *constexprs]}")
    full_signature = {**signature, **{name: "constexpr" for name in constexprs}}
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if signature[p].startswith("*")}
    src = ASTSource(jit_fn, full_signature, constexprs=constexprs, attrs=attrs)
    # num_stages: Triton's default, as the wrappers' JIT launches (so both run the same code)
    options = {"num_warps": kw["num_warps"], "ptx_version": kw["ptx_version"], "enable_fp_fusion": False}
    # no line info: the PTX would carry this checkout's absolute paths and DWARF sections
    saved = os.environ.get("TRITON_DISABLE_LINE_INFO")
    os.environ["TRITON_DISABLE_LINE_INFO"] = "1"  # an env var (not a knob): part of Triton's cache key
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    finally:
        if saved is None:
            os.environ.pop("TRITON_DISABLE_LINE_INFO", None)
        else:
            os.environ["TRITON_DISABLE_LINE_INFO"] = saved
    md = compiled.metadata
    for what in ("global_scratch_size", "profile_scratch_size"):
        if getattr(md, what, 0):
            raise RuntimeError(f"{md.name} needs {what} = {getattr(md, what)}: the AOT launch passes NULL there")
    ptx = compiled.asm["ptx"]
    ptx_params = [name for name, _ in parse_ptx_params(ptx)]
    if len(ptx_params) < len(params):
        raise RuntimeError(f"{md.name}: PTX has {len(ptx_params)} parameters, expected at least {len(params)}")
    version, target = ptx_header(ptx)
    return AotKernel(
        kind=kind, name=md.name, ptx=ptx, arch=arch, target=target, ptx_version=version,
        num_warps=md.num_warps, shared_mem=md.shared, params=params, param_kinds=kinds,
        hidden_params=HIDDEN_PARAMS[: len(ptx_params) - len(params)],
        constexprs=constexprs, signature=signature, triton_version=triton.__version__,
    )


def _jit_function(kernel):
    """A compilable JITFunction of the kernel, even if the module was imported under TRITON_INTERPRET=1."""
    from triton.runtime.jit import JITFunction

    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)


def _interpreter_mode() -> bool:
    """True where Triton's own library was imported for the interpreter (then nothing compiles)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.max, InterpretedFunction)


_CHILD = r"""
import importlib.util, json, sys
d = sys.argv[1]
spec = importlib.util.spec_from_file_location("_lfm_kernels_aot_child", d + "/__init__.py",
                                              submodule_search_locations=[d])
pkg = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pkg
spec.loader.exec_module(pkg)
from _lfm_kernels_aot_child import aot
keys = [tuple(k) for k in json.load(sys.stdin)]
out = [aot._compile(k).to_dict() for k in keys]
sys.stdout.write("\n@@AOT@@" + json.dumps(out))
"""


def _compile_in_child(keys: list) -> list[AotKernel]:
    """Compiles in child processes without TRITON_INTERPRET (one per core, up to 4, keys dealt round-robin)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    n = max(1, min(len(keys), os.cpu_count() or 1, 4))
    order = sorted(range(len(keys)), key=lambda i: keys[i][0] != "top_k_pool")  # the slow ones first
    groups = [order[j::n] for j in range(n)]
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, here], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in groups]
    results: dict = {}
    errors = []
    for proc, group in zip(procs, groups):
        out, err = proc.communicate(json.dumps([keys[i] for i in group]), timeout=1800)
        if proc.returncode != 0 or "@@AOT@@" not in out:
            errors.append(err[-4000:])
            continue
        for i, d in zip(group, json.loads(out.rsplit("@@AOT@@", 1)[1])):
            results[i] = AotKernel.from_dict(d)
    if errors:
        raise RuntimeError("AOT compilation (child process) failed:\n" + "\n".join(errors))
    return [results[i] for i in range(len(keys))]


# --------------------------------------------------------------------------------------------
# PTX inspection and ptxas


def ptx_header(ptx: str) -> tuple[str, str]:
    """("8.0", "sm_90a"): the .version and .target of a PTX module."""
    version = re.search(r"^\s*\.version\s+(\d+\.\d+)", ptx, re.M)
    target = re.search(r"^\s*\.target\s+(\w+)", ptx, re.M)
    if not version or not target:
        raise ValueError("not a PTX module: no .version / .target line")
    return version.group(1), target.group(1)


def parse_ptx_params(ptx: str) -> list[tuple[str, str]]:
    """[(name, type), ...] of the (single) .entry, in order, e.g. ("npr_kernel_param_0", ".u64")."""
    m = re.search(r"\.entry\s+\w+\s*\((.*?)\)", ptx, re.S)
    if not m:
        raise ValueError("no .entry in this PTX")
    out = []
    for line in m.group(1).split(","):
        words = line.split()
        if words:
            out.append((words[-1], next(w for w in words if w.startswith((".u", ".s", ".b", ".f")))))
    return out


def ptx_isa_of_cuda(cuda_version: str) -> int:
    """The newest PTX ISA (Triton's encoding) a CUDA release's ptxas / driver takes: "12.9" -> 88."""
    major, minor = (int(v) for v in cuda_version.split(".")[:2])
    if major >= 13:
        return 90 + (major - 13) * 10 + minor
    if major == 12:
        return 80 + minor if minor < 6 else 80 + minor - 1
    if major == 11:
        return 70 + minor
    raise ValueError(f"CUDA {cuda_version} is older than we handle")


def find_ptxas() -> list[tuple[str, str]]:
    """[(path, CUDA release), ...] of the ptxas binaries at hand: Triton's bundled ones, $PATH, $CUDA_HOME."""
    candidates = []
    try:
        import triton

        bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        candidates += sorted(os.path.join(bindir, f) for f in os.listdir(bindir) if f.startswith("ptxas"))
    except (ImportError, OSError):
        pass
    candidates.append(shutil.which("ptxas"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "ptxas"))
    found, seen = [], set()
    for path in candidates:
        if not path or not os.access(path, os.X_OK) or os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        try:
            text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"release (\d+\.\d+)", text)
        if m:
            found.append((path, m.group(1)))
    return found


def assemble(kernel: AotKernel, ptxas: str) -> tuple[bool, str]:
    """Runs ``ptxas --gpu-name=<target>`` on the artifact's PTX; returns (accepted, log)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, kernel.name + ".ptx")
        with open(src, "w") as f:
            f.write(kernel.ptx)
        r = subprocess.run([ptxas, f"--gpu-name={kernel.target}", "-v", src, "-o", os.path.join(tmp, "out.cubin")],
                           capture_output=True, text=True, timeout=300)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def artifact_stem(kernel: AotKernel) -> str:
    c = kernel.constexprs
    if kernel.kind == "npr":
        inp = "u8nhwc" if c["IN_NHWC"] else "f32nchw"
        out = ("f16" if kernel.signature["out_ptr"] == "*fp16" else "f32") + ("nhwc" if c["OUT_NHWC"] else "nchw")
        return f"npr_{inp}_{out}_sm{kernel.arch}"
    return f"top_k_pool_k{c['K']}_{kernel.signature['maps_ptr'][1:]}_sm{kernel.arch}"


def default_scale() -> tuple[float, float, float]:
    """NPR's scale for uint8 input under the default preprocessing spec: 1 / (255 std)."""
    from lfm.runtime.spec import ModelSpec

    return tuple(1.0 / (255.0 * s) for s in ModelSpec().std)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Compile the LFM kernels to PTX artifacts (NAME.ptx + NAME.json).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--arch", nargs="+", default=[str(a) for a in ARCHS], help="targets (default: all four)")
    p.add_argument("--scale", nargs=3, type=float, default=None,
                   help="NPR per-channel scale for uint8 input (default: 1 / (255 std) of the default spec)")
    p.add_argument("--k", type=int, default=_topk.K_DEFAULT)
    p.add_argument("--ptx-version", type=int, default=PTX_VERSION, help="Triton's encoding, 80 = ISA 8.0")
    a = p.parse_args(argv)
    scale = tuple(a.scale) if a.scale else default_scale()
    requests = []
    for arch in a.arch:
        requests.append(("npr", arch, dict(input_dtype="uint8", scale=scale, ptx_version=a.ptx_version)))
        requests.append(("top_k_pool", arch, dict(k=a.k, ptx_version=a.ptx_version)))
    for art in compile_many(requests):
        path = art.save(a.out)
        print(f"{path}: {art.name} .version {art.ptx_version} .target {art.target} "
              f"block {art.block} shared {art.shared_mem} params {art.params + art.hidden_params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
