"""The TensorRT glue against the real TensorRT bindings, cuda-python and Polygraphy, without loading them.

TensorRT cannot be installed here, but its bindings wheels can be read (tests/trt_api.py): every
``tensorrt`` / ``tensorrt.plugin`` name the code in runtime/, export/, kernels/ and benchmarks/ uses
(found by an AST scan, so new code is covered by itself) must exist in the class it is used on, with
a call shape some overload takes, in every release the project claims:

* the newest 10.x and 11.x (NEWEST);
* the oldest of each claim: the ``tensorrt*`` floors of pyproject's extras (pip installs, which also
  need ``tensorrt.plugin`` in the pip package), and the floors of ``TENSORRT_SUPPORT`` in
  runtime/backends/trt_plan.py when it is there ("tensorrt": the engine code; "plugin_graph": the files in
  PLUGIN_FILES, whose decorated functions must also satisfy that release's ``_validate.py``);
* any others in LFM_TRT_RELEASES (comma-separated, e.g. 10.12.0.36,cu12:11.4.0.106).

Uses guarded by hasattr / try-except / getattr defaults may be absent: they are listed, not failed.
A negative control (TensorRT 10.8, which predates the AOT plugin API, and made-up names) proves the
check fails when a name is missing. cuda-python is read the same static way (the installed one, else
the cuda-bindings wheels when small enough); Polygraphy's names and keywords are checked on the
installed one with inspect.

Wheels are cached in $LFM_TRT_WHEELS (default ~/.cache/lfm-trt-wheels). A download failure skips the
test with the reason, except under CI (the CI environment variable set), where it fails.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

import trt_api  # tests/trt_api.py: test-only tooling, beside this file (pytest puts tests/ on sys.path)
from trt_api import (ApiReadError, check_cuda, check_plugin_functions, check_polygraphy, check_uses, project_uses,
                     read_bindings, read_cuda_bindings, release_key)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("LFM_TRT_WHEELS", Path.home() / ".cache" / "lfm-trt-wheels"))
NEWEST = ("10.16.1.11", "11.4.0.106")
NEGATIVE = "10.8.0.43"  # no tensorrt.plugin.aot_impl / KernelLaunchParams / SymInt32, no pip tensorrt.plugin
PLUGIN_FILES = ("kernels/trt_plugins.py",)  # the plugin graph's code: held to TENSORRT_SUPPORT["plugin_graph"]
PLUGIN_IDS = {"NPR_ID": "lfm::LfmNpr", "TOP_K_POOL_ID": "lfm::LfmTopKPool"}
# The newest patch of each minor on PyPI (tensorrt-cu12-bindings / -cu13-bindings), for a floor "10.14";
# a minor not listed is looked up with `pip index versions`.
NEWEST_PATCH = {
    "10.0": "10.0.1", "10.1": "10.1.0", "10.2": "10.2.0.post1", "10.3": "10.3.0", "10.4": "10.4.0", "10.5": "10.5.0",
    "10.6": "10.6.0.post2", "10.7": "10.7.0.post1", "10.8": "10.8.0.43", "10.9": "10.9.0.34", "10.10": "10.10.0.31",
    "10.11": "10.11.0.33", "10.12": "10.12.0.36", "10.13": "10.13.3.9.post1", "10.14": "10.14.1.48.post1",
    "10.15": "10.15.1.29", "10.16": "10.16.1.11", "11.0": "11.0.0.114", "11.1": "11.1.0.106", "11.2": "11.2.1.2",
    "11.3": "11.3.0.99", "11.4": "11.4.0.106",
}
CUDA_BINDINGS = {"12": "12.9.4", "13": "13.5.0"}  # the newest cuda-bindings of each CUDA major
CUDA_WHEEL_LIMIT = 16 << 20  # read cuda-bindings wheels up to this size (12.9.4: 12 MB, 13.5.0: 8 MB)
WHEEL_TAGS = ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"]


# ----------------------------------------------------------------------------------------------
# Which releases: the project's claims


def _floor(spec: str) -> str | None:
    """'>=10.14,<12' -> '10.14' (the lower bound's MAJOR.MINOR), None without one."""
    m = re.search(r"(?:>=|~=|==)\s*(\d+)\.(\d+)", spec)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def pip_floor(pyproject: Path = ROOT / "pyproject.toml") -> str | None:
    """The lowest TensorRT any pyproject extra allows (requirements named tensorrt, tensorrt-cu12, ...)."""
    extras = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    floors = []
    for reqs in extras.values():
        for req in reqs:
            m = re.match(r"\s*(tensorrt(?:[-_]cu\d+)?)\s*(\[[^]]*\])?\s*(.*)", req)
            if m and not m.group(1).endswith("bindings") and _floor(m.group(3)):
                floors.append(_floor(m.group(3)))
    return min(floors, key=release_key) if floors else None


def support_floors(path: Path = ROOT / "runtime" / "backends" / "trt_plan.py") -> dict[str, str]:
    """TENSORRT_SUPPORT's "tensorrt" (engine code) and "plugin_graph" floors, read without importing."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TENSORRT_SUPPORT" for t in node.targets):
            try:
                table = ast.literal_eval(node.value)
            except ValueError:
                return {}
            out = {}
            for key in ("tensorrt", "plugin_graph"):
                value = table.get(key)
                value = value[0] if isinstance(value, (tuple, list)) else value
                if isinstance(value, str):
                    out[key] = value
            return out
    return {}


def newest_patch(minor: str) -> str:
    """The newest release of a MAJOR.MINOR: from NEWEST_PATCH, else asked of the index (pip)."""
    if minor in NEWEST_PATCH:
        return NEWEST_PATCH[minor]
    dist = "tensorrt-cu13-bindings" if release_key(minor) >= (11,) else "tensorrt-cu12-bindings"
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", dist], capture_output=True, text=True)
    versions = re.findall(r"[\d.]+(?:\.post\d+)?", out.stdout.split("Available versions:", 1)[-1])
    mine = [v for v in versions if v.startswith(minor + ".")]
    if not mine:
        _unavailable(f"no {dist} release for TensorRT {minor} ({out.stderr.strip()[-200:]})")
    return max(mine, key=release_key)


@dataclasses.dataclass(frozen=True)
class Claims:
    engine: str  # oldest release the engine code claims (MAJOR.MINOR)
    plugin: str  # ... the plugin graph's code
    pip: str | None  # ... pip installs (pyproject's extras)

    def releases(self) -> list[str]:
        extra = [r.strip() for r in os.environ.get("LFM_TRT_RELEASES", "").split(",") if r.strip()]
        # a floor whose minor NEWEST_PATCH lacks stays "MAJOR.MINOR" here: tensorrt_api looks it up in
        # the test (collection must not touch the network)
        floors = [NEWEST_PATCH.get(f, f) for f in {self.engine, self.plugin, self.pip} if f]
        return list(dict.fromkeys(list(NEWEST) + sorted(floors, key=release_key) + extra))


def claims() -> Claims:
    pip = pip_floor()
    support = support_floors()
    engine = support.get("tensorrt") or pip or "10.0"
    return Claims(engine, support.get("plugin_graph") or engine, pip)


# ----------------------------------------------------------------------------------------------
# Downloads (cached), and reading


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: a download failure fails the conformance test)")
    pytest.skip(reason)


def _pip_download(requirement: str, args: list[str]) -> Path:
    """One distribution into CACHE (reused when already there)."""
    name, version = requirement.split("==")
    stem = re.sub(r"[-_.]+", "_", name)
    pattern = re.compile(rf"{re.escape(stem)}-{re.escape(version)}(-.*\.whl|\.tar\.gz|\.zip)$", re.I)
    found = [p for p in CACHE.glob("*") if pattern.match(p.name)] if CACHE.is_dir() else []
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(CACHE),
           requirement] + args
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and "--no-build-isolation" in args:  # sdists: retry building metadata the usual way
        out = subprocess.run([c for c in cmd if c != "--no-build-isolation"], capture_output=True, text=True, timeout=600)
    found = [p for p in CACHE.glob("*") if pattern.match(p.name)]
    if out.returncode != 0 or not found:
        err = " ".join(line for line in (out.stderr or out.stdout).splitlines() if "ignored: it is neither" not in line)
        _unavailable(f"could not download {requirement}: {err.strip()[-300:] or 'no file'}")
    return found[0]


def _variant(release: str) -> tuple[str, str]:
    """'11.4.0.106' -> ('cu13', '11.4.0.106'); 'cu12:11.4.0.106' -> ('cu12', ...)."""
    if ":" in release:
        variant, release = release.split(":", 1)
        return variant, release
    return ("cu13" if release_key(release) >= (11,) else "cu12"), release


_APIS: dict[tuple, trt_api.TrtApi] = {}


def tensorrt_api(release: str, pip_claimed: bool = True) -> trt_api.TrtApi:
    """The release's API from its bindings wheel; with ``pip_claimed``, also whether pip's
    tensorrt-cuNN ships tensorrt.plugin (from that package's sdist)."""
    key = (release, pip_claimed)
    if key not in _APIS:
        variant, version = _variant(release)
        if version.count(".") == 1:  # a bare MAJOR.MINOR floor: its newest patch
            version = newest_patch(version)
        wheel = _pip_download(f"tensorrt-{variant}-bindings=={version}", WHEEL_TAGS)
        meta = _pip_download(f"tensorrt-{variant}=={version}", ["--no-build-isolation"]) if pip_claimed else None
        try:
            _APIS[key] = read_bindings(wheel, meta)
        except ApiReadError as e:
            pytest.fail(f"TensorRT {release}: {e}")
    return _APIS[key]


_USES: list = []


def uses_of_project(c: Claims) -> list:
    """The project's uses, each held to the oldest release its part of the code claims."""
    if not _USES:
        found = project_uses([ROOT / d for d in trt_api.SCAN_DIRS], root=ROOT)
        for u in found:
            floor = c.plugin if u.path in PLUGIN_FILES else c.engine
            _USES.append(dataclasses.replace(u, min_release=max(tuple(u.min_release), release_key(floor))))
    return _USES


def report(title: str, findings, optional=()) -> str:
    lines = [title] + [f"  MISSING  {f}" for f in findings]
    if optional:
        lines += ["  (guarded uses a release lacks; allowed:)"] + [f"  optional {f}" for f in optional]
    return "\n".join(lines)


CLAIMS = claims()
RELEASES = CLAIMS.releases()


# ----------------------------------------------------------------------------------------------
# Fast tests: the scan and the claims (no download)


SNIPPET = '''
import tensorrt as trt
import tensorrt.plugin as trtp

def build(logger, onnx):
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    parser = trt.OnnxParser(net, logger)
    if hasattr(trt.BuilderFlag, "FP16"):
        flag = trt.BuilderFlag.FP16
    size = getattr(net, "no_such_size", 0)
    try:
        old = parser.removed_in_11
    except AttributeError:
        old = None
    config = make_config()          # not TensorRT's: untyped, not checked
    config.anything
    trt.Builder.no_such_method
    return builder.build_serialized_network(net, config, 1, 2, 3)

@trtp.register("lfm::X")
def desc(x: trtp.TensorDesc, k: int) -> trtp.TensorDesc:
    return x.shape_expr
'''


def _scan(tmp_path, text, name="snippet.py"):
    path = tmp_path / name
    path.write_text(text)
    return project_uses([path], root=tmp_path)


def test_scan_types_instances_and_classifies_guards(tmp_path):
    uses = {}
    for u in _scan(tmp_path, SNIPPET):
        uses.setdefault((u.owner, u.name), u)  # the first use of each name
    assert uses[((), "Builder")].call == (1, ()) and uses[((), "Builder")].line == 6
    assert uses[(("Builder",), "create_network")].instance
    # typed through the method's return type, resolved per release
    assert (("Builder", "create_network()"), "no_such_size") in uses
    assert uses[(("Builder", "create_network()"), "no_such_size")].optional == "getattr with a default"
    assert uses[(("BuilderFlag",), "FP16")].optional.startswith("hasattr")
    assert uses[(("OnnxParser",), "removed_in_11")].optional == "try/except AttributeError"
    assert uses[(("Builder",), "no_such_method")].optional == ""
    assert uses[(("Builder",), "build_serialized_network")].call == (5, ())
    assert uses[(("TensorDesc",), "shape_expr")].module == "tensorrt.plugin"
    assert not any(u.name == "anything" for u in uses.values())  # config came from elsewhere
    imports = [u for u in uses.values() if u.kind == "import"]
    assert {u.name for u in imports} == {"tensorrt", "tensorrt.plugin"}


def test_scan_covers_the_project():
    """The scan sees the engine code's TensorRT, cuda-python and Polygraphy uses (a scanner that
    found nothing would pass every release)."""
    uses = project_uses([ROOT / d for d in trt_api.SCAN_DIRS], root=ROOT)
    modules = {u.module.split(".")[0] for u in uses}
    assert {"tensorrt", "cuda", "polygraphy"} <= modules
    names = {(u.owner[:1], u.name) for u in uses if u.module == "tensorrt"}
    assert ((("ICudaEngine",), "get_tensor_name") in names and ((), "Runtime") in names
            and (("IExecutionContext",), "execute_async_v3") in names), sorted(names)
    assert any(u.module == "tensorrt.plugin" and u.name == "register" for u in uses)
    # the engine code and the CUDA plumbing where they live now (runtime/backends/)
    paths = {(u.path, u.module) for u in uses}
    assert {("runtime/backends/trt_engine.py", "tensorrt"), ("runtime/backends/cuda_support.py", "cuda.runtime")} <= paths


def test_claims_come_from_the_project(tmp_path):
    c = claims()
    assert c.pip == pip_floor() and c.engine and c.plugin
    from lfm.runtime.backends.trt_plan import TENSORRT_SUPPORT  # read by path above: found where it lives
    assert support_floors() == {"tensorrt": TENSORRT_SUPPORT["tensorrt"][0], "plugin_graph": TENSORRT_SUPPORT["plugin_graph"]}
    assert (c.engine, c.plugin) == (TENSORRT_SUPPORT["tensorrt"][0], TENSORRT_SUPPORT["plugin_graph"])
    assert release_key(c.plugin) >= release_key(c.engine)
    releases = c.releases()
    assert releases[:2] == list(NEWEST)
    for floor in {c.engine, c.plugin, c.pip} - {None}:
        assert NEWEST_PATCH.get(floor, floor) in releases
    toml = tmp_path / "pyproject.toml"
    toml.write_text('[project]\nname = "x"\n[project.optional-dependencies]\n'
                    'a = ["tensorrt-cu12>=10.14,<12", "cuda-python>=12.6"]\nb = ["tensorrt[extra]~=10.9.0"]\n')
    assert pip_floor(toml) == "10.9"
    assert newest_patch("10.14") == "10.14.1.48.post1"


def test_env_adds_releases(monkeypatch):
    monkeypatch.setenv("LFM_TRT_RELEASES", "10.12.0.36, cu12:11.4.0.106")
    releases = claims().releases()
    assert "10.12.0.36" in releases and "cu12:11.4.0.106" in releases
    assert _variant("cu12:11.4.0.106") == ("cu12", "11.4.0.106") and _variant("10.9.0.34") == ("cu12", "10.9.0.34")


# ----------------------------------------------------------------------------------------------
# TensorRT releases (downloads: slow)


@pytest.mark.slow
def test_reader_tells_present_from_absent():
    """What is known of these releases, read back: removals, additions, signatures, pip packaging."""
    old, new10, new11 = tensorrt_api(NEGATIVE), tensorrt_api(NEWEST[0]), tensorrt_api(NEWEST[1])
    for api in (old, new10, new11):
        assert api.doc_agreement >= trt_api.MIN_DOC_AGREEMENT
        assert api.member("ICudaEngine", "device_memory_size_v2") is not None
        assert api.member("Logger", "WARNING") is not None  # ILogger.Severity values, exported, inherited
        assert "(Builder, int) -> INetworkDefinition" in api.member("Builder", "create_network").signatures
    assert new10.member("ICudaEngine", "device_memory_size") is not None
    assert new11.member("ICudaEngine", "device_memory_size") is None  # removed in 11
    assert new10.member("BuilderFlag", "FP16") is not None and new11.member("BuilderFlag", "FP16") is None
    assert old.member("NetworkDefinitionCreationFlag", "PREFER_AOT_PYTHON_PLUGINS") is None
    assert new10.member("NetworkDefinitionCreationFlag", "PREFER_AOT_PYTHON_PLUGINS") is not None
    assert "aot_impl" not in old.plugin.names and "aot_impl" in new10.plugin.names and "aot_impl" in new11.plugin.names
    assert "KernelLaunchParams" in new11.plugin.names and "KernelLaunchParams" not in old.plugin.names
    assert old.plugin_in_pip is False and new10.plugin_in_pip is True and new11.plugin_in_pip is True
    assert "aot_impl" in new11.plugin.rules["validators"] and "aot_impl" not in old.plugin.rules["validators"]


@pytest.mark.slow
@pytest.mark.parametrize("release", RELEASES)
def test_project_uses_exist_in_release(release):
    """Every TensorRT name and call shape the project uses, in a release it claims."""
    pip_claimed = CLAIMS.pip is not None and release_key(_variant(release)[1]) >= release_key(CLAIMS.pip)
    api = tensorrt_api(release, pip_claimed)
    found = check_uses(api, uses_of_project(CLAIMS))
    required = [f for f in found if not f.optional]
    optional = [f for f in found if f.optional]
    assert not required, report(f"TensorRT {api.release} lacks names the project uses (file:line, use, problem, release):",
                                required, optional)


@pytest.mark.slow
@pytest.mark.parametrize("release", [r for r in RELEASES if release_key(_variant(r)[1]) >= release_key(CLAIMS.plugin)])
def test_plugin_functions_follow_validate_rules(release):
    """The decorated plugin functions against the release's tensorrt/plugin/_validate.py."""
    api = tensorrt_api(release, pip_claimed=False)
    found = [f for path in PLUGIN_FILES for f in check_plugin_functions(api, ROOT / path, ids=PLUGIN_IDS, root=ROOT)]
    assert not found, report(f"TensorRT {api.release}: plugin functions its _validate.py would refuse:", found)


@pytest.mark.slow
def test_negative_control_old_release_is_reported():
    """The checker fails on a release without the AOT plugin API: 10.8 (ignoring the claims, which
    exclude it from the plugin graph)."""
    api = tensorrt_api(NEGATIVE)
    uses = project_uses([ROOT / p for p in PLUGIN_FILES], root=ROOT)
    missing = {f.expr.split(".")[-1] for f in check_uses(api, uses, honour_minimum=False) if not f.optional}
    assert {"aot_impl", "KernelLaunchParams", "PREFER_AOT_PYTHON_PLUGINS"} <= missing, missing
    assert any("tensorrt.plugin" in f.expr and "pip package" in f.problem
               for f in check_uses(api, uses, honour_minimum=False)), "pip's 10.8 has no tensorrt.plugin"
    rules = check_plugin_functions(api, ROOT / PLUGIN_FILES[0], ids=PLUGIN_IDS, root=ROOT)
    assert rules and all("_validate_aot_impl" in f.problem and f.where.startswith("kernels/") for f in rules), rules
    for f in check_uses(api, uses, honour_minimum=False):
        assert re.match(r"kernels/trt_plugins\.py:\d+: ", str(f)) and "[10.8.0.43]" in str(f)


@pytest.mark.slow
def test_made_up_names_and_shapes_are_reported(tmp_path):
    api = tensorrt_api(NEWEST[1])
    found = check_uses(api, _scan(tmp_path, SNIPPET))
    text = "\n".join(map(str, found))
    assert "snippet.py:18: trt.Builder.no_such_method: Builder has no no_such_method [11.4.0.106]" in text, text
    assert any("build_serialized_network" in f.expr and "positional" in f.problem for f in found), text
    optional = {f.expr for f in found if f.optional}
    assert {"trt.BuilderFlag.FP16", "parser.removed_in_11"} <= optional, text  # absent in 11, but guarded
    assert not any(f.expr == "trt.BuilderFlag.FP16" for f in check_uses(tensorrt_api(NEWEST[0]), _scan(tmp_path, SNIPPET)))


BAD_PLUGIN = '''
from typing import Tuple
import tensorrt.plugin as trtp

@trtp.register("lfm::Bad")
def bad_desc(x: trtp.TensorDesc, k) -> trtp.TensorDesc:
    return x

@trtp.impl("lfm::Bad")
def bad_impl(x: trtp.Tensor, outputs: Tuple[trtp.Tensor], k: int, stream: int) -> None:
    pass

@trtp.aot_impl("lfm::Bad")
def bad_aot(x: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc], tactic: int) -> Tuple[str, str, int, int]:
    pass
'''


@pytest.mark.slow
def test_plugin_rules_reject_bad_functions(tmp_path):
    path = tmp_path / "bad_plugins.py"
    path.write_text(BAD_PLUGIN)
    found = check_plugin_functions(tensorrt_api(NEWEST[1], pip_claimed=False), path, root=tmp_path)
    text = "\n".join(map(str, found))
    assert "argument k needs a type annotation" in text
    assert "impl: parameters (x, outputs, k, stream) should be (x, outputs, stream)" in text
    assert "return element 2 is int, expected tensorrt.plugin.KernelLaunchParams" in text
    assert re.search(r"^bad_plugins\.py:\d+: bad_impl: ", text, re.M), text


# ----------------------------------------------------------------------------------------------
# Polygraphy (installed) and cuda-python (installed, else its wheels)


def test_polygraphy_names_and_keywords(tmp_path):
    pytest.importorskip("polygraphy", reason="Polygraphy is not installed (pip install -e '.[export]')")
    uses = project_uses([ROOT / d for d in trt_api.SCAN_DIRS], root=ROOT)
    assert any(u.module.startswith("polygraphy") and u.call for u in uses)
    found = check_polygraphy(uses)
    assert not [f for f in found if not f.optional], report("Polygraphy lacks what the project uses:", found)
    bad = _scan(tmp_path, "from polygraphy.comparator import Comparator, SimpleCompareFunc\n"
                          "SimpleCompareFunc(rtol=1, no_such_keyword=2)\nComparator.no_such_method()\n"
                          "from polygraphy.backend.trt import CreateConfig\nCreateConfig(no_such_option=1)\n")
    text = "\n".join(map(str, check_polygraphy(bad)))
    assert "snippet.py:2" in text and "no_such_keyword" in text, text
    assert "snippet.py:3: Comparator.no_such_method: polygraphy.comparator.Comparator has no no_such_method" in text
    assert "no_such_option" in text, text  # **kwargs forwarded to a base __init__ that lacks it


def _cuda_api(major: str):
    """The installed cuda-python when its major matches, else the cuda-bindings wheel (size checked first)."""
    import importlib.util

    spec = importlib.util.find_spec("cuda")
    installed = next((Path(p) for p in (spec.submodule_search_locations or [])), None) if spec else None
    if installed is not None:
        api = read_cuda_bindings(installed)
        version = (installed / "bindings" / "_version.py")
        if version.exists() and re.search(rf"['\"]{major}\.", version.read_text()):
            return api
    version = CUDA_BINDINGS[major]
    if not any(CACHE.glob(f"cuda_bindings-{version}-*.whl")):
        size = _wheel_size("cuda-bindings", version)
        if size > CUDA_WHEEL_LIMIT:
            pytest.skip(f"cuda-python is not installed and the cuda-bindings {version} wheel is {size >> 20} MB "
                        f"(over {CUDA_WHEEL_LIMIT >> 20} MB): not read")
    return read_cuda_bindings(_pip_download(f"cuda-bindings=={version}", WHEEL_TAGS))


def _wheel_size(dist: str, version: str) -> int:
    """The wheel's size from the package index's JSON simple API (PEP 691), before downloading."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    req = urllib.request.Request(f"{index}/{dist}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            files = json.load(r)["files"]
    except Exception as e:  # noqa: BLE001 (any failure: the size is unknown)
        _unavailable(f"could not ask {index} for {dist} {version}'s size ({type(e).__name__}: {e})")
    for f in files:
        if f"-{version}-cp311-" in f["filename"] and "manylinux" in f["filename"] and "x86_64" in f["filename"]:
            return int(f.get("size") or 0)
    _unavailable(f"{dist} {version}: no cp311 manylinux x86_64 wheel listed")


@pytest.mark.slow
@pytest.mark.parametrize("major", sorted(CUDA_BINDINGS))
def test_cuda_python_names_and_arguments(major, tmp_path):
    api = _cuda_api(major)
    uses = project_uses([ROOT / d for d in trt_api.SCAN_DIRS], root=ROOT)
    found = check_cuda(api, uses)
    assert not [f for f in found if not f.optional], report(
        f"cuda-python {api.version} lacks what the project uses:", [f for f in found if not f.optional],
        [f for f in found if f.optional])
    bad = _scan(tmp_path, "from cuda.bindings import runtime as cudart\n"
                          "cudart.cudaMallocc(16)\ncudart.cudaMalloc(16, 32)\ncudart.cudaMemcpyKind.cudaMemcpyNowhere\n")
    text = "\n".join(map(str, check_cuda(api, bad)))
    assert "snippet.py:2: cudart.cudaMallocc: cuda.runtime has no function cudaMallocc" in text, text
    assert "snippet.py:3" in text and "called with 2 arguments" in text, text
    assert "cudaMemcpyNowhere" in text, text
