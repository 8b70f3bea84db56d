"""``--backend auto``, an ONNX model's default (issue 28, item 1): every rule of choose_backend on
made-up facts; on this machine, real exported models (uint8 fp32, INT8) run where the rules say and
score exactly as the backend named explicitly; infer.py's summary says what ran and why; the facts
are read from the file as onnx reads them; OpenVINO's runner is safe from several threads.

The independent references: onnx's own parse of the files, /proc/cpuinfo through grep, the
explicit backend's logits, and serial calls of the same runner.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm.runtime.backends.auto import BF16_WHY, INT8_WHY, NOT_INSTALLED_WHY, ModelFacts, choose_backend
from lfm.runtime.cpu_features import ISA_FLAGS, cpu_flags, cpu_isa, has_bf16

ROOT = Path(__file__).resolve().parents[1]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]
OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not OPENVINO, reason="OpenVINO is an optional extra: pip install -e '.[openvino]'")

UINT8_FP32 = ModelFacts(custom_ops=False, precision="fp32", input="uint8")
UINT8_FP16 = ModelFacts(custom_ops=False, precision="fp16", input="uint8")
FLOAT_FP32 = ModelFacts(custom_ops=False, precision="fp32", input="float")
INT8 = ModelFacts(custom_ops=False, precision="int8", input="uint8")
PLUGINS = ModelFacts(custom_ops=True, precision="fp32", input="uint8")
AVX2 = {"avx", "avx2", "fma"}
SAPPHIRE = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}
MACHINE = dict(openvino_installed=True, ort_gpu=False, isa=AVX2)  # the machine these tests were written on


# ----------------------------------------------------------------------------------------------
# The rule table, on made-up facts


@pytest.mark.parametrize("facts, options, backend, why", [
    # options only one backend takes pick it first, over everything the model or the machine say
    (INT8, dict(providers="cpu"), "onnxruntime", "providers named"),
    (PLUGINS, dict(providers="cuda,cpu", isa=SAPPHIRE), "onnxruntime", "providers named"),
    (UINT8_FP32, dict(precision="f32", ort_gpu=True), "openvino", "--openvino-precision is OpenVINO's"),
    (UINT8_FP32, dict(precision="bf16", openvino_installed=False), "openvino", "--openvino-precision is OpenVINO's"),
    (PLUGINS, dict(precision="f32"), "openvino", "--openvino-precision"),  # OpenVINO's own refusal then says why
    # the plugin graph: ONNX Runtime whatever the machine
    (PLUGINS, dict(isa=SAPPHIRE), "onnxruntime", "OpenVINO cannot run LFM's custom ops"),
    (PLUGINS, dict(ort_gpu=True), "onnxruntime", "OpenVINO cannot run LFM's custom ops"),
    # a GPU provider in this onnxruntime
    (INT8, dict(ort_gpu=True, isa=SAPPHIRE), "onnxruntime", "a GPU through ONNX Runtime"),
    # the lean install
    (INT8, dict(openvino_installed=False, isa=SAPPHIRE), "onnxruntime", NOT_INSTALLED_WHY),
    (UINT8_FP32, dict(openvino_installed=False, isa=SAPPHIRE), "onnxruntime", "but is not installed"),
    # ... and only there: on an AVX2 CPU an fp32 graph would run on ONNX Runtime anyway
    (UINT8_FP32, dict(openvino_installed=False), "onnxruntime", "no faster than ONNX Runtime"),
    # INT8: OpenVINO on any CPU
    (INT8, dict(), "openvino", INT8_WHY),
    (INT8, dict(isa=SAPPHIRE), "openvino", INT8_WHY),
    # uint8 fp32/fp16 graphs: OpenVINO's bf16 where the CPU has it (x86 AVX512-BF16 or AMX, Arm BF16)
    (UINT8_FP32, dict(isa=SAPPHIRE), "openvino", BF16_WHY),
    (UINT8_FP16, dict(isa={"avx2", "amx_bf16"}), "openvino", BF16_WHY),
    (UINT8_FP32, dict(isa={"asimd", "bf16"}), "openvino", BF16_WHY),
    # otherwise ONNX Runtime: OpenVINO would run f32
    (UINT8_FP32, dict(), "onnxruntime", "no faster than ONNX Runtime (0.97-0.99x on AVX2)"),
    (UINT8_FP32, dict(isa=AVX2 | {"avx512f", "avx512_vnni"}), "onnxruntime", "no faster"),
    (FLOAT_FP32, dict(isa=SAPPHIRE), "onnxruntime", "no faster"),  # bf16 erases NPR of normalised floats
    (ModelFacts(), dict(isa=SAPPHIRE), "onnxruntime", "no faster"),  # unreadable: ONNX Runtime says why
])
def test_every_rule_of_choose_backend(facts, options, backend, why):
    chosen, reason = choose_backend(facts, **{**MACHINE, **options})
    assert chosen == backend and why in reason, reason


def test_choose_backend_asks_the_machine_only_what_it_needs():
    """Given the facts, choose_backend imports neither OpenVINO nor (before the GPU rule) onnxruntime."""
    code = ("import sys\n"
            "from lfm.runtime.backends.auto import ModelFacts, choose_backend\n"
            "facts = ModelFacts(False, 'int8', 'uint8')\n"
            "assert choose_backend(facts, providers='cpu')[0] == 'onnxruntime'\n"
            "assert choose_backend(facts, precision='f32')[0] == 'openvino'\n"
            "assert choose_backend(ModelFacts(True, 'fp32', 'uint8'))[0] == 'onnxruntime'\n"
            "assert not {'onnxruntime', 'openvino'} & set(sys.modules), sorted(sys.modules)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------------------------
# The facts: the CPU's and the model's


def test_cpu_flags_are_the_flags_line_of_proc_cpuinfo():
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo here")
    out = subprocess.run(["grep", "-m1", "-E", "^(flags|Features)", "/proc/cpuinfo"], capture_output=True, text=True)
    expected = set(out.stdout.split(":", 1)[1].split()) if out.stdout else set()
    assert cpu_flags() == expected
    assert cpu_isa() == [f for f in ISA_FLAGS if f in expected]
    assert cpu_isa(SAPPHIRE) == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]
    assert (has_bf16(AVX2), has_bf16(SAPPHIRE), has_bf16({"bf16"}), has_bf16(set())) == (False, True, True, False)


def test_benchmarks_record_the_isa_from_the_one_reader():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    assert common.machine(1)["isa"] == cpu_isa()
    assert common.cpu_flags is cpu_flags  # no second reader of /proc/cpuinfo's flags


def test_model_facts_are_what_onnx_reads(random_onnx, int8_onnx, tmp_path):
    import onnx

    from lfm.runtime.onnx_wire import metadata_props, opset_domains

    for path in (random_onnx, int8_onnx):
        proto, data = onnx.load(path), Path(path).read_bytes()
        assert metadata_props(data) == {p.key: p.value for p in proto.metadata_props}
        assert opset_domains(data) == {o.domain for o in proto.opset_import}
    assert ModelFacts.read(random_onnx) == UINT8_FP32
    assert ModelFacts.read(int8_onnx) == INT8
    (tmp_path / "text.onnx").write_text("not a model")
    assert ModelFacts.read(tmp_path / "text.onnx") == ModelFacts() == ModelFacts.read(tmp_path / "missing.onnx")
    with pytest.raises(ValueError):
        metadata_props(Path(random_onnx).read_bytes()[:1000])  # truncated inside the graph


# ----------------------------------------------------------------------------------------------
# Real models on this machine


@pytest.fixture(scope="module")
def int8_onnx(random_onnx, tmp_path_factory):
    """random_onnx quantised with the default INT8 recipe on 8 random 64 px images."""
    pytest.importorskip("onnx", reason="quantising needs the [export] extra")
    from lfm.export.quantize import quantize_int8

    d = tmp_path_factory.mktemp("auto_int8")
    rng = np.random.default_rng(0)
    calib = []
    for i in range(8):
        calib.append(str(d / f"calib{i}.png"))
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(calib[-1])
    quantize_int8(random_onnx, d / "int8.onnx", calib)
    return d / "int8.onnx"


def expected_here(facts: ModelFacts) -> str:
    """The rules restated for this machine, with nothing named: OpenVINO (where installed) for
    INT8, and for uint8 fp32/fp16 graphs on a CPU with bf16."""
    if not OPENVINO or facts.custom_ops:
        return "onnxruntime"
    bf16_graph = facts.input == "uint8" and facts.precision in ("fp32", "fp16") and has_bf16()
    return "openvino" if facts.precision == "int8" or bf16_graph else "onnxruntime"


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_make_runner_runs_the_chosen_backend_exactly(which, random_onnx, int8_onnx):
    from lfm.runtime.backends import make_runner

    path = {"fp32": random_onnx, "int8": int8_onnx}[which]
    backend = expected_here(ModelFacts.read(path))
    pixels = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with make_runner(path) as auto, make_runner(path, backend=backend) as explicit:
        assert (auto.name, auto.chosen, auto.runner.name) == ("auto", backend, backend)
        assert auto.describe() == f"auto -> {explicit.describe()}: {auto.why}"
        assert auto.spec == explicit.spec
        np.testing.assert_allclose(auto.infer({"pixels": pixels})["logit"], explicit.infer({"pixels": pixels})["logit"],
                                   rtol=1e-6, atol=1e-6)


@needs_openvino
def test_the_model_choice_on_this_machine(int8_onnx):
    """On the machine these tests were written on (AVX2, OpenVINO installed) the INT8 graph runs on
    OpenVINO; under the options that name a backend, on that one."""
    from lfm.runtime.backends import make_runner

    with make_runner(int8_onnx) as r:
        assert r.chosen == "openvino" and r.why == INT8_WHY and r.describe().startswith("auto -> openvino CPU, ")
    with make_runner(int8_onnx, providers="cpu", threads=1) as r:
        assert r.chosen == "onnxruntime" and r.runner.providers == ["CPUExecutionProvider"] and r.runner.threads == 1
    with make_runner(int8_onnx, precision="f32", threads=1) as r:
        assert r.chosen == "openvino" and r.runner.precision_hint == "f32" and r.runner.threads == 1


def _infer(*args, code_before: str = ""):
    """infer.py in a fresh interpreter (``code_before`` runs first); its records and its summary line."""
    code = (f"{code_before}\nimport sys\nfrom lfm.runtime.infer import main\nsys.exit(main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    return out, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto_img") / "img.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("flags, backend, why", [
    ([], None, None),  # the default: what the rules say here
    (["--backend", "auto", "--providers", "cpu"], "onnxruntime", "providers named"),
    (["--openvino-precision", "f32"], "openvino", "--openvino-precision is OpenVINO's"),
    (["--backend", "onnxruntime"], "onnxruntime", None),  # named: no auto, no why
])
def test_infer_summary_names_what_ran_and_why(flags, backend, why, int8_onnx, image):
    if backend == "openvino" and not OPENVINO:
        pytest.skip("OpenVINO is an optional extra")
    out, summary = _infer("--model", int8_onnx, *flags, image)
    assert out.returncode == 0, out.stderr
    if flags == ["--backend", "onnxruntime"]:
        assert "; onnxruntime CPUExecutionProvider, model precision int8; threshold" in summary, summary
        return
    backend = backend or expected_here(INT8)
    why = why or choose_backend(int8_onnx)[1]
    assert f"; auto -> {backend} " in summary and why in summary.split(" -> ", 1)[1], summary


def test_the_lean_install_runs_onnx_runtime_and_says_why(int8_onnx, image):
    """Without OpenVINO (import blocked) auto runs ONNX Runtime and says how to get the faster path."""
    out, summary = _infer("--model", int8_onnx, image, code_before="import sys; sys.modules['openvino'] = None")
    assert out.returncode == 0, out.stderr
    assert f"auto -> onnxruntime CPUExecutionProvider, model precision int8: {NOT_INSTALLED_WHY}" in summary, summary


def test_providers_and_openvino_precision_together_are_refused_in_one_line(int8_onnx, image):
    out, _ = _infer("--model", int8_onnx, "--providers", "cpu", "--openvino-precision", "f32", image)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "run ONNX Runtime and precision 'f32' (--openvino-precision) OpenVINO: give " \
                                           "one, or name the backend" in out.stderr, out.stderr


def test_a_missing_or_broken_model_gets_onnx_runtimes_line(tmp_path, image):
    (tmp_path / "text.onnx").write_text("not a model")
    for path, says in ((tmp_path / "missing.onnx", "missing.onnx: no such file"),
                       (tmp_path / "text.onnx", "text.onnx: not a loadable ONNX model")):
        out, _ = _infer("--model", path, image)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and says in out.stderr, out.stderr


# ----------------------------------------------------------------------------------------------
# OpenVINO from several threads (the Detector, serve.py's and app.py's callers may share a runner)


@needs_openvino
def test_openvino_runner_is_safe_to_call_from_several_threads(random_onnx):
    """An OpenVINO InferRequest runs one inference at a time: without a lock a second thread's call
    failed with "Infer Request is busy" (ONNX Runtime's session.run is thread-safe). Six shapes:
    four compiled for their own shape (static_shapes) and two on the dynamic model."""
    from lfm.runtime.backends import make_runner

    rng = np.random.default_rng(3)
    shapes = [(2, 64, 64, 3), (3, 64, 64, 3), (2, 72, 64, 3), (1, 64, 80, 3), (2, 80, 80, 3), (4, 64, 64, 3)]
    batches = [rng.integers(0, 256, shapes[i % len(shapes)], dtype=np.uint8) for i in range(36)]
    threads = 6
    start = threading.Barrier(threads)

    def score(i):
        if i < threads:
            start.wait()  # the first calls all at once
        return runner.infer({"pixels": batches[i]})["logit"]

    with make_runner(random_onnx, backend="openvino") as runner:
        with ThreadPoolExecutor(threads) as pool:
            together = list(pool.map(score, range(len(batches))))
        assert len(runner.by_shape) == runner.static_shapes
        serial = [runner.infer({"pixels": b})["logit"] for b in batches]  # the same compiled models, one at a time
    for a, b in zip(together, serial):
        np.testing.assert_array_equal(a, b)
