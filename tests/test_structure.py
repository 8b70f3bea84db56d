"""The project's shape: no import cycle, imports that run downward, no function over 100 lines
(outside kernels/), one registry behind which each backend is one module, a stated job per module.

The import graph is read with ast, never by importing: the project's modules are the .py files
under train/, runtime/, export/, kernels/ and benchmarks/, named as the package names them
(runtime/backends/base.py is lfm.runtime.backends.base). An import names a project module when it
is absolute (``lfm.runtime.spec``), relative (``from .base import Runner``), or a bare name of a
module beside the importing file (``from common import log``: a script's folder is first on
sys.path). Importing a module runs its parent packages' __init__ first, so an edge to
lfm.runtime.backends.base is an edge to lfm.runtime.backends too.

The rule: **no cycle among the project's imports, wherever they stand** (at module level or
inside functions; only ``if TYPE_CHECKING:`` blocks, which never run, are left out). A module
depends on every module it imports, so the modules form layers with no way back:

- a cycle among module-level imports (top-level statements, class bodies, top-level ``if`` /
  ``try`` blocks: what runs when a module is first imported) breaks at import time, or not,
  depending on which module a caller happens to import first ("cannot import name X" from a
  half-initialised module);
- a cycle closed by an import inside a function does not break today, as the function runs after
  every module-level import has finished, but it is the same knot in the layering (the one this
  layout removed: runners.py imported trt_runner.py and custom_ops.py in functions, both imported
  runners.py back), and it breaks the day someone hoists that import. Functions keep importing
  heavy libraries lazily (torch, tensorrt): those are not project modules.
"""
from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_DIRS = ("train", "runtime", "export", "kernels", "benchmarks")  # lfm.<dir>, pyproject's package-dir


# ----------------------------------------------------------------------------------------------
# The import graph


def project_modules(root: Path, dirs=PROJECT_DIRS) -> dict[str, Path]:
    """{"lfm.runtime.backends.base": path, "lfm.runtime.backends": .../__init__.py, ...}."""
    modules = {}
    for d in dirs:
        for path in sorted((root / d).rglob("*.py")):
            parts = ("lfm", *path.relative_to(root).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(tree: ast.Module, module_level: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The module's import statements, except those under ``if TYPE_CHECKING:``; with
    ``module_level``, only those that run when the module is imported (none inside functions)."""
    found = []

    def visit(nodes):
        for node in nodes:
            if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)  # the else branch runs
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return found


def _with_parents(name: str, modules) -> set[str]:
    """name and the project packages above it (importing a module runs its parents first)."""
    parts = name.split(".")
    return {p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in modules}


def imported_modules(node, name: str, path: Path, modules) -> set[str]:
    """The project modules one import statement of module ``name`` (at ``path``) runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    siblings = {m.rpartition(".")[2]: m for m in modules if m.rpartition(".")[0] == package}
    targets = []
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        if node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        for alias in node.names:  # from X import Y: Y may be a module of package X
            targets.append(f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem)
    out = set()
    for target in targets:
        head, _, rest = target.partition(".")
        if not target.startswith("lfm.") and head in siblings:  # a script's bare import of a module beside it
            target = siblings[head] + (f".{rest}" if rest else "")
        while target and target not in modules:  # `import lfm.runtime.spec.X`-style attribute paths
            target = target.rpartition(".")[0]
        if target:
            out |= _with_parents(target, modules)
    return out


def import_graph(root: Path = ROOT, dirs=PROJECT_DIRS, module_level: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports (with ``module_level``: on being imported)."""
    modules = project_modules(root, dirs)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in import_statements(tree, module_level):
            edges |= imported_modules(node, name, path, modules)
        graph[name] = edges - {name} - _with_parents(name, modules)  # a package's own __init__ is not a cycle
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per strongly connected group
    of modules (Tarjan's algorithm), sorted; [] when the graph is acyclic."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(set(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(_a_cycle_in(group, graph) for group in groups)


def _a_cycle_in(group: set[str], graph) -> list[str]:
    """A shortest cycle through the group's first module (breadth-first within the group)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def describe(cycles) -> str:
    return "; ".join(" -> ".join(c) for c in cycles)


def module_level_edges(cycle: list[str], root: Path = ROOT) -> list[str]:
    """Which steps of a cycle are module-level imports (those break at import time)."""
    eager = import_graph(root, module_level=True)
    return [f"{a} -> {b}" for a, b in zip(cycle, cycle[1:]) if b in eager.get(a, ())]


# ----------------------------------------------------------------------------------------------
# No cycle, and the check can fail


def test_no_import_cycle_in_the_project():
    graph = import_graph()
    assert "lfm.runtime.backends.base" in graph and "lfm.benchmarks.bench" in graph  # the walk saw the project
    assert "lfm.runtime.backends.base" in graph["lfm.runtime.backends.onnxrt"]  # and its imports
    assert "lfm.benchmarks.common" in graph["lfm.benchmarks.bench"]  # a script's bare sibling import
    assert "lfm.train.checkpoint" in graph["lfm.runtime.backends.pyt"]  # an import inside a function
    cycles = find_cycles(graph)
    eager = [e for c in cycles for e in module_level_edges(c)]
    assert not cycles, f"import cycles: {describe(cycles)} (module-level steps, which break at import: {eager or 'none'})"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


def test_a_pair_of_modules_importing_each_other_is_a_cycle(tmp_path):
    _write(tmp_path, {
        "runtime/__init__.py": "",
        "runtime/a.py": "from .b import helper\n",
        "runtime/b.py": "from lfm.runtime import a\n\ndef helper(): ...\n",
        "runtime/c.py": "import lfm.runtime.a\n",  # depends on the cycle, is not in it
    })
    cycles = find_cycles(import_graph(tmp_path, ("runtime",)))
    assert cycles == [["lfm.runtime.a", "lfm.runtime.b", "lfm.runtime.a"]]
    assert describe(cycles) == "lfm.runtime.a -> lfm.runtime.b -> lfm.runtime.a"


OLD_RUNTIME = {  # runtime/ before this layout, reduced to its imports
    "runtime/__init__.py": "from . import spec\n",
    "runtime/spec.py": "class ModelSpec: ...\n",
    "runtime/runners.py": """\
        from .spec import ModelSpec

        class BackendError(RuntimeError): ...

        class OnnxRunner:
            def activate_impl(self):
                from .custom_ops import session_options_for

        def make_runner(engine):
            from .trt_runner import TrtRunner
            return TrtRunner(engine)
        """,
    "runtime/custom_ops.py": "from .runners import BackendError\n",
    "runtime/trt_runner.py": """\
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from .detector import Detector
        from .runners import BackendError, Runner
        """,
    "runtime/detector.py": "from .runners import make_runner\nfrom .trt_runner import TrtRunner\n",
}


def test_the_old_runners_cycle_is_found(tmp_path):
    """runners.py imported trt_runner.py and custom_ops.py inside functions, and both imported
    runners.py back at module level: a cycle, though no import breaks today (module-level steps
    only: none). TYPE_CHECKING imports and a package's own __init__ are no edges."""
    _write(tmp_path, OLD_RUNTIME)
    graph = import_graph(tmp_path, ("runtime",))
    assert graph["lfm.runtime.runners"] == {"lfm.runtime.spec", "lfm.runtime.custom_ops", "lfm.runtime.trt_runner"}
    assert graph["lfm.runtime.trt_runner"] == {"lfm.runtime.runners"}  # not detector: TYPE_CHECKING
    assert find_cycles(graph) == [["lfm.runtime.custom_ops", "lfm.runtime.runners", "lfm.runtime.custom_ops"]]
    assert find_cycles(import_graph(tmp_path, ("runtime",), module_level=True)) == []
    assert module_level_edges(find_cycles(graph)[0], tmp_path) == ["lfm.runtime.custom_ops -> lfm.runtime.runners"]


def test_an_import_in_a_class_body_runs_at_import(tmp_path):
    _write(tmp_path, {"runtime/a.py": "class A:\n    from .b import x\n", "runtime/b.py": "from .a import A\nx = 1\n"})
    cycle = ["lfm.runtime.a", "lfm.runtime.b", "lfm.runtime.a"]
    assert find_cycles(import_graph(tmp_path, ("runtime",), module_level=True)) == [cycle]
    assert module_level_edges(cycle, tmp_path) == ["lfm.runtime.a -> lfm.runtime.b", "lfm.runtime.b -> lfm.runtime.a"]


# ----------------------------------------------------------------------------------------------
# Imports run downward: commands -> Detector -> backends -> spec/preprocess/records/files

# runtime/'s modules by layer, lowest first (names under lfm.runtime). A module imports modules of
# its own layer and of those below it, never above (at module level or inside functions); a new
# module fails the test until it is placed here.
RUNTIME_LAYERS = (
    ("foundation", "__init__ spec preprocess evidence records files inputs cli custom_ops serve_defaults serve_contract "
                   "stderr_filter gpu_input perturb flags onnx_wire cpu_features"),
    ("backends", "backends backends.base backends.cuda_support backends.onnxrt backends.openvino_rt backends.pyt "
                 "backends.trt_engine backends.trt_plan backends.auto"),
    ("pipeline", "options decode_pool gpu_decode decoders detector"),  # the Detector, its options and decoders
    ("commands", "infer inspect_model serve serve_health serve_triton client batch batch_inputs batch_shards "
                 "batch_stages app"),
)
# The stages: each may import those before it (train/, kernels/ and export/ only runtime's layers below
# its commands); benchmarks/ drives them all.
STAGES = ("runtime", "train", "kernels", "export", "benchmarks")
# The runtime's only imports of a later stage, each inside a function (the lean runtime never
# loads torch, the model or the kernels unless asked to), and why.
RUNTIME_IMPORTS_UP = {
    ("lfm.runtime.backends.pyt", "lfm.train.checkpoint"): "the torch backend (--checkpoint) loads the checkpoint",
    ("lfm.runtime.backends.pyt", "lfm.train.model"): "the torch backend sets the model's exact fp32 mode",
    ("lfm.runtime.backends.pyt", "lfm.kernels.triton_lfm"): "the torch backend's --kernels: the Triton forward pass",
    ("lfm.runtime.gpu_decode", "lfm.kernels.resize"): "--decode gpu resizes with the Pillow-exact Triton kernel",
    ("lfm.runtime.inspect_model", "lfm.train.checkpoint"): "`lfm inspect ckpt.pt` reads a checkpoint",
    ("lfm.runtime.app", "lfm.train.checkpoint"): "`lfm app --checkpoint` loads the model for its Grad-CAM",
    ("lfm.runtime.app", "lfm.train.visualize"): "`lfm app --checkpoint`: Top-K positions and Grad-CAM as visualize draws them",
}


def runtime_layer(name: str, layers=RUNTIME_LAYERS) -> int | None:
    """The index of a runtime module's layer; None when the table does not place it."""
    rel = "__init__" if name == "lfm.runtime" else name.removeprefix("lfm.runtime.")
    return next((i for i, (_, names) in enumerate(layers) if rel in names.split()), None)


def _stage(name: str) -> str:
    return name.split(".")[1]


def upward_imports(graph: dict[str, set[str]], layers=RUNTIME_LAYERS, allowed=RUNTIME_IMPORTS_UP) -> list[str]:
    """Every import that runs upward, and every runtime module the table does not place."""
    commands = len(layers) - 1
    found = []
    for name in sorted(graph):
        edges = graph[name]
        # a package's __init__ runs with each of its modules: an edge of its own only when nothing under it is imported
        targets = sorted(t for t in edges if not any(o.startswith(t + ".") for o in edges))
        stage, own = _stage(name), runtime_layer(name, layers)
        if stage == "runtime" and own is None:
            found.append(f"{name} is in no layer of RUNTIME_LAYERS (place it)")
            continue
        for t in targets:
            if _stage(t) == "runtime":
                up = runtime_layer(t, layers)
                up = commands if up is None else up
                if stage == "runtime" and up > own or stage in ("train", "kernels", "export") and up == commands:
                    where = f"{layers[own][0]} layer" if stage == "runtime" else f"{stage}/"
                    found.append(f"{name} ({where}) imports {t} ({layers[up][0]} layer)")
            elif stage == "runtime" and (name, t) not in allowed:
                found.append(f"{name} (runtime/) imports {t} ({_stage(t)}/), not in RUNTIME_IMPORTS_UP")
            elif stage != "runtime" and STAGES.index(_stage(t)) > STAGES.index(stage):
                found.append(f"{name} ({stage}/) imports {t} ({_stage(t)}/, a later stage)")
    return found


def test_imports_run_downward():
    graph = import_graph()
    assert {"lfm.runtime.detector", "lfm.runtime.spec", "lfm.export.to_onnx"} <= set(graph)  # the walk saw the project
    placed = {n for _, names in RUNTIME_LAYERS for n in names.split()}
    present = {"__init__" if m == "lfm.runtime" else m.removeprefix("lfm.runtime.") for m in graph
               if _stage(m) == "runtime"}
    assert placed <= present, f"RUNTIME_LAYERS places modules that are gone: {sorted(placed - present)}"
    found = upward_imports(graph)
    assert not found, "imports that run upward:\n" + "\n".join(found)


def test_the_runtime_imports_a_later_stage_only_as_listed_and_only_inside_functions():
    graph, eager = import_graph(), import_graph(module_level=True)
    for (name, target), why in RUNTIME_IMPORTS_UP.items():
        assert target in graph.get(name, ()), f"{name} no longer imports {target}: remove it from RUNTIME_IMPORTS_UP"
        assert target not in eager[name], f"{name} imports {target} at module level ({why}: import it where it is used)"


def test_an_upward_import_and_an_unplaced_module_are_found(tmp_path):
    _write(tmp_path, {
        "runtime/__init__.py": "",
        "runtime/spec.py": "def size():\n    from .detector import Detector\n",  # lazily, still upward
        "runtime/detector.py": "from .spec import size\nfrom lfm.export.x import y\n",
        "runtime/infer.py": "from lfm.runtime.detector import Detector\n",
        "runtime/extra.py": "",
        "export/__init__.py": "",
        "export/x.py": "from lfm.runtime.infer import main\nfrom lfm.benchmarks import common\ny = 1\n",
        "benchmarks/common.py": "from lfm.runtime import infer\n",
    })
    layers = (("foundation", "__init__ spec"), ("pipeline", "detector"), ("commands", "infer"))
    graph = import_graph(tmp_path, ("runtime", "export", "benchmarks"))
    assert upward_imports(graph, layers, allowed={}) == [
        "lfm.export.x (export/) imports lfm.benchmarks.common (benchmarks/, a later stage)",
        "lfm.export.x (export/) imports lfm.runtime.infer (commands layer)",
        "lfm.runtime.detector (runtime/) imports lfm.export.x (export/), not in RUNTIME_IMPORTS_UP",
        "lfm.runtime.extra is in no layer of RUNTIME_LAYERS (place it)",
        "lfm.runtime.spec (foundation layer) imports lfm.runtime.detector (pipeline layer)",
    ]
    assert "lfm.runtime.detector (runtime/) imports lfm.export.x (export/), not in RUNTIME_IMPORTS_UP" not in \
        upward_imports(graph, layers, allowed={("lfm.runtime.detector", "lfm.export.x"): "a reason"})


# ----------------------------------------------------------------------------------------------
# Short functions

FUNCTION_LINES = 100  # the longest a function or method may be, def line to last line, outside kernels/
SHORT_FUNCTION_DIRS = ("runtime", "export", "train", "benchmarks")  # kernels/ keeps its long Triton kernels


def long_functions(root: Path = ROOT, dirs=SHORT_FUNCTION_DIRS, limit: int = FUNCTION_LINES) -> list[str]:
    """'file:line name (N lines)' for every function or method (nested ones too) over ``limit`` lines."""
    found = []
    for path in project_modules(root, dirs).values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return sorted(found)


def test_no_function_is_longer_than_100_lines_outside_kernels():
    found = long_functions()
    assert not found, f"functions over {FUNCTION_LINES} lines (split them):\n" + "\n".join(found)


def test_a_function_of_101_lines_is_found(tmp_path):
    body = "    x = 0\n" * 98
    _write(tmp_path, {"train/a.py": f"def ok():\n{body}    return x\n",  # 100 lines
                      "train/b.py": f"class C:\n    def long(self):\n{textwrap.indent(body, '    ')}        x += 1\n"
                                    "        return x\n",  # 101 lines
                      "kernels/k.py": f"def kernel():\n{body}    x += 1\n    return x\n"})
    assert long_functions(tmp_path, ("train", "kernels"), 100) == ["kernels/k.py:1 kernel (101 lines)",
                                                                   "train/b.py:2 long (101 lines)"]
    assert long_functions(tmp_path, ("train",), 100) == ["train/b.py:2 long (101 lines)"]


# ----------------------------------------------------------------------------------------------
# One job per module


def test_each_module_states_its_job_in_its_first_docstring_line():
    missing = []
    for path in project_modules(ROOT).values():
        if path.name == "__init__.py" and not path.read_text().strip():
            continue  # an empty package marker
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if len(doc.splitlines()[0] if doc else "") < 20:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"no one-line statement of the module's job: {', '.join(missing)}"


# ----------------------------------------------------------------------------------------------
# The backends: one registry, one module each, loaded lazily


def test_every_registry_line_names_a_runner_and_the_options_make_runner_knows():
    from lfm.runtime.backends.base import OPTIONS, REGISTRY, Runner

    assert set(REGISTRY) == {"auto", "onnxruntime", "openvino", "tensorrt", "torch"}
    for entry in REGISTRY.values():
        cls = entry.runner_class()
        assert issubclass(cls, Runner) and cls.name.startswith(entry.name), entry
        assert set(entry.options) <= set(OPTIONS), entry
        assert all(ext.startswith(".") and ext == ext.lower() for ext in entry.extensions), entry


def test_the_backends_package_imports_no_backend_and_no_heavy_library():
    code = ("import sys\n"
            "for heavy in ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'cuda'): sys.modules[heavy] = None\n"
            "import lfm.runtime.backends, lfm.runtime.detector\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('lfm.runtime.backends.'))\n"
            "assert loaded == ['lfm.runtime.backends.base'], loaded\n"
            "import lfm.runtime.backends.onnxrt, lfm.runtime.backends.openvino_rt, lfm.runtime.backends.pyt\n"
            "import lfm.runtime.backends.trt_engine, lfm.runtime.backends.auto\n"  # every backend module: its library on activate() only
            "print('ok')\n")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


BACKEND_MODULE = '''
"""A toy backend for the registry test: a .mean file holds a bias; logit = mean pixel value + bias."""
import os

import numpy as np

from lfm.runtime.backends.base import BackendError, Runner
from lfm.runtime.spec import ModelSpec


class MeanRunner(Runner):
    name = "mean"

    def __init__(self, path, threads=None):
        super().__init__()
        self.path = os.fspath(path)

    def activate_impl(self):
        if not os.path.isfile(self.path):
            raise BackendError(f"{self.path}: no such file")
        self.bias = float(open(self.path).read())
        self.spec = ModelSpec(input="uint8", layout="NHWC", size=64)

    def infer_impl(self, feed):
        (x,) = feed.values()
        return {"logit": x.reshape(len(x), -1).mean(axis=1).astype(np.float32) + self.bias}
'''


def test_a_new_backend_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """What the layout promises: a module with a Runner and one REGISTRY line, and make_runner,
    the Detector and source_kind use it by extension, with nothing else touched."""
    from lfm.runtime.backends import BackendError, make_runner
    from lfm.runtime.backends.base import REGISTRY, Backend
    from lfm.runtime.detector import Detector, source_kind

    (tmp_path / "toy_mean_backend.py").write_text(BACKEND_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="cannot tell the model kind"):
        make_runner(tmp_path / "bias.mean")
    monkeypatch.setitem(REGISTRY, "mean", Backend("mean", "toy_mean_backend:MeanRunner", "model", (".mean",),
                                                  ("threads",), "a .mean file"))
    (tmp_path / "bias.mean").write_text("-100")
    assert type(make_runner(tmp_path / "bias.mean", threads=2)).__name__ == "MeanRunner"
    assert source_kind("x.mean") == "model"
    with pytest.raises(BackendError, match=r"providers \['cpu'\] \(--providers\) applies to an ONNX model \(auto: the "
                                           r"fastest faithful path\) or an ONNX model on ONNX Runtime only"):
        make_runner(tmp_path / "bias.mean", providers=["cpu"])
    images = [np.full((64, 64, 3), v, np.uint8) for v in (10, 200)]
    with Detector(str(tmp_path / "bias.mean"), batch_size=1) as det:
        assert [round(r.logit) for r in det.predict(images)] == [-90, 100]


def test_serve_py_stays_a_command_not_a_library():
    """Issue 25's target: serve.py at most 500 lines; its options live in runtime/options.py, the
    Triton process plumbing in serve_triton.py, the supervision in serve_health.py."""
    lines = (ROOT / "runtime" / "serve.py").read_text().count("\n")
    assert lines <= 500, f"runtime/serve.py has {lines} lines: move a part into a module of its own"
