"""Serving: runtime/serve.py (a real Triton Inference Server through PyTriton), the tritonclient
client, export/to_triton.py's model repository, malformed requests, a short load, SIGTERM.

Servers listen on free loopback ports and are always stopped (fixture finalizers). Needs the
[serve] extra (nvidia-pytriton, tritonclient); the model is conftest's random-weight ONNX.
"""
from __future__ import annotations

import glob
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tritonclient.http", reason="serving tests need the [serve] extra: pip install -e '.[serve]'")
pytest.importorskip("tritonclient.grpc", reason="serving tests need the [serve] extra: pip install -e '.[serve]'")

from lfm.runtime.backends import make_runner  # noqa: E402
from lfm.runtime.client import LfmClient, ServerError, parse_url  # noqa: E402
from lfm.runtime.detector import Detector  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "runtime" / "serve.py"
START_TIMEOUT_S = 120
MAX_REQUEST_BYTES = 3_000_000
MAX_PIXELS = 4_000_000


def need_pytriton():
    return pytest.importorskip("pytriton", reason="serving tests need the [serve] extra: pip install -e '.[serve]'")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def encode(a: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **kw)
    return buf.getvalue()


class Server:
    """runtime/serve.py in a subprocess on free loopback ports."""

    def __init__(self, model: Path, log: Path, *extra: str, script: Path = SERVE):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log_path = log
        self._log = open(log, "wb")
        cmd = [sys.executable, str(script), "--model", str(model), "--host", "127.0.0.1",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
               *extra]
        # a session of its own: the SIGTERM test signals the whole process group, as a terminal's
        # Ctrl-C or `timeout` would
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    @property
    def http_url(self):
        return f"http://127.0.0.1:{self.http}"

    @property
    def grpc_url(self):
        return f"grpc://127.0.0.1:{self.grpc}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, model: str = "lfm"):
        deadline = time.monotonic() + START_TIMEOUT_S
        with LfmClient(self.http_url, model=model, timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"serve.py exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
                if c.ready() and "serving model" in self.log():  # ready, and the self-test passed
                    return self
                time.sleep(0.25)
        self.stop()
        pytest.fail(f"serve.py not ready after {START_TIMEOUT_S} s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 45) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Files of several formats and modes; the BMP ends in zero bytes (row padding), which a
    fixed-width numpy bytes array would strip."""
    d = tmp_path_factory.mktemp("serve_images")
    rng = np.random.default_rng(7)
    files = {
        "noise.png": encode(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8), "PNG"),
        "photo.jpg": encode(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), "JPEG", quality=90),
        "padded.bmp": encode(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8), "BMP"),  # large enough to score
        "grey.png": encode(rng.integers(0, 256, (70, 70), dtype=np.uint8), "PNG"),
        "alpha.png": encode(rng.integers(0, 256, (64, 128, 4), dtype=np.uint8), "PNG"),
    }
    assert files["padded.bmp"].endswith(b"\x00")
    paths = []
    for name, blob in files.items():
        (d / name).write_bytes(blob)
        paths.append(d / name)
    return paths


@pytest.fixture(scope="module")
def offline(random_onnx, images):
    """What runtime/infer.py's Detector says about the files: the reference for every served score."""
    with Detector(random_onnx) as det:
        return {str(p): r for p, r in zip(images, det.predict([str(p) for p in images]))}


@pytest.fixture(scope="module")
def server(random_onnx, tmp_path_factory):
    need_pytriton()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    s = Server(random_onnx, log, "--instances", "2", "--max-batch-size", "16", "--preferred-batch-sizes", "4,8",
               "--max-queue-delay-us", "20000", "--max-request-bytes", str(MAX_REQUEST_BYTES),
               # the default queue policy: it holds every request the load tests keep open (8 clients)
               "--max-pixels", str(MAX_PIXELS), "--exit-timeout", "20")
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def same(a, b) -> bool:
    return (a.ok and b.ok and a.logit == b.logit and a.score == b.score and a.label == b.label
            and a.flags == b.flags)


# --------------------------------------------------------------------------------------------
# Without a server


def test_fix_python_backend_libpython(monkeypatch, restore_env):
    need_pytriton()
    from lfm.runtime.serve_triton import fix_python_backend_libpython

    monkeypatch.delenv("PYTRITON_NO_TENSORSTORE", raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/elsewhere")
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    how = fix_python_backend_libpython()
    if os.path.isfile(os.path.join(libdir, soname)):
        assert how == "libpython"
        assert os.environ["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/elsewhere"]
        assert fix_python_backend_libpython() == "libpython"  # idempotent
        assert os.environ["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/elsewhere"]
    else:  # a static Python: the serializer switch instead
        assert how == "no-tensorstore" and os.environ["PYTRITON_NO_TENSORSTORE"] == "1"
    monkeypatch.setenv("PYTRITON_NO_TENSORSTORE", "1")
    assert fix_python_backend_libpython() == "already"


def test_parse_url():
    assert parse_url("http://h:1") == ("http", "h:1")
    assert parse_url("grpc://h:2/") == ("grpc", "h:2")
    assert parse_url("h:3", "grpc") == ("grpc", "h:3")
    with pytest.raises(ValueError):
        parse_url("https://h:1")


def test_client_reports_shed_requests_as_retryable(monkeypatch, tmp_path, capsys):
    """Triton's load-shedding refusals (queue full, queue timeout, a stopping server: HTTP 503 /
    gRPC UNAVAILABLE) raise ServerOverloaded, retryable, and become "rejected: " records that the
    command counts apart; other refusals and connection failures stay plain ServerErrors."""
    from tritonclient.utils import InferenceServerException

    from lfm.runtime import client as client_module
    from lfm.runtime.client import ServerOverloaded, is_rejected
    from lfm.runtime.records import Record

    answers = []

    def fake_infer(model, inputs, outputs=None, **kw):
        raise answers.pop(0)

    c = LfmClient("http://127.0.0.1:1")
    c._outputs = ["logit", "score", "label", "error"]
    monkeypatch.setattr(c._client, "infer", fake_infer)
    answers[:] = [InferenceServerException("[request id: <id_unknown>] Exceeds maximum queue size", status="503"),
                  InferenceServerException("Request timeout expired", status="StatusCode.UNAVAILABLE"),
                  InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE"),
                  InferenceServerException("inference request batch-size must be <= 16", status="400")]
    with pytest.raises(ServerOverloaded, match="Exceeds maximum queue size") as e:
        c.score_bytes([b"x"])
    assert e.value.retryable and isinstance(e.value, ServerError)
    (record,) = c.score([b"x"])
    assert is_rejected(record) and record.error.startswith("rejected: server overloaded")
    for _ in range(2):
        with pytest.raises(ServerError) as e:
            c.score_bytes([b"x"])
        assert not isinstance(e.value, ServerOverloaded) and not e.value.retryable
    assert not is_rejected(Record.failed("x", "server: boom"))
    # the command: the rejected inputs are failures (exit 1, as before) and are counted apart
    (tmp_path / "a.png").write_bytes(b"x")
    monkeypatch.setattr(client_module.LfmClient, "output_names", lambda self: ["logit", "score", "label", "error"])

    def overloaded(self, name, data, datatype):
        raise ServerOverloaded("server overloaded, request shed (Exceeds maximum queue size); retry later")

    monkeypatch.setattr(client_module.LfmClient, "infer", overloaded)
    assert client_module.main([str(tmp_path / "a.png"), str(tmp_path / "missing.png"), "--url", "http://127.0.0.1:1",
                               "-o", str(tmp_path / "out.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "note: 1 of the failed inputs were rejected by an overloaded server" in err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0]["error"].startswith("rejected: ") and rows[1]["error"] == "no such file"


def test_serve_and_client_import_no_torch():
    need_pytriton()
    code = ("import sys; sys.modules['torch'] = None\n"
            "import lfm.runtime.serve, lfm.runtime.client, pytriton.triton, tritonclient.http, tritonclient.grpc\n"
            "assert not any(m == 'lfm.train' or m.startswith('lfm.train.') for m in sys.modules)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.fixture
def restore_env():
    """serve.main and fix_python_backend_libpython set LD_LIBRARY_PATH / PYTRITON_NO_TENSORSTORE."""
    saved = {k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "PYTRITON_NO_TENSORSTORE")}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_serve_rejects_bad_arguments_and_engine(tmp_path, capsys, restore_env, monkeypatch):
    need_pytriton()
    from lfm.runtime import serve

    with pytest.raises(SystemExit):
        serve.parse_args(["--model", "m.onnx", "--preferred-batch-sizes", "64", "--max-batch-size", "32"])
    with pytest.raises(SystemExit):
        serve.parse_args(["--model", "m.onnx", "--http-port", "9000", "--grpc-port", "9000"])
    with pytest.raises(SystemExit):
        serve.parse_args(["--model", "m.onnx", "--kernels"])  # --kernels is for checkpoints
    with pytest.raises(SystemExit):
        serve.parse_args(["--model", "m.onnx", "--cuda-graphs"])
    kw = serve.runner_kwargs(serve.parse_args(["--checkpoint", "c.pt", "--kernels", "--cuda-graphs"]), 2)
    assert (kw["source"], kw["backend"], kw["kernels"], kw["cuda_graphs"]) == ("c.pt", "torch", True, True)
    # without a GPU a kernels checkpoint is refused in one line, before any server starts
    torch = pytest.importorskip("torch", reason="checkpoints need the [train] extra")
    if not torch.cuda.is_available():
        from lfm.runtime.spec import ModelSpec
        from lfm.train.checkpoint import make_checkpoint, save_atomic
        from lfm.train.model import build_model

        ckpt = tmp_path / "random.pt"
        save_atomic(make_checkpoint(build_model(), ModelSpec()), ckpt)
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # test_kernels sets it for its interpreter runs
        http, grpc, metrics = free_ports(3)
        rc = serve.main(["--checkpoint", str(ckpt), "--kernels", "--device", "cpu", "--no-self-test",
                         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)])
        assert rc == 2 and "on a CUDA GPU" in capsys.readouterr().err
    # --engine: passed through to the runtime (not served here: no GPU); a missing plan is a one-line error
    http, grpc, metrics = free_ports(3)
    plan = tmp_path / "lfm.plan"
    rc = serve.main(["--engine", str(plan), "--http-port", str(http), "--grpc-port", str(grpc),
                     "--metrics-port", str(metrics)])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: {plan}: no such file" in err


@pytest.mark.parametrize("args, problem", [
    (["--http-port", "99999"], "argument --http-port: must be from 1 to 65535, got 99999"),
    (["--grpc-port", "0"], "argument --grpc-port: must be from 1 to 65535, got 0"),
    (["--metrics-port", "65536"], "argument --metrics-port: must be from 1 to 65535, got 65536"),
    (["--http-port", "9000", "--metrics-port", "9000"], "--http-port and --metrics-port are both 9000"),
    (["--grpc-port", "8000"], "--http-port and --grpc-port are both 8000"),
    (["--instances", "0"], "argument --instances: must be at least 1, got 0"),
    (["--max-batch-size", "0"], "argument --max-batch-size: must be at least 1, got 0"),
    (["--threshold", "1.5"], "argument --threshold: must be a score in [0, 1], got 1.5"),
    (["--threshold", "nan"], "argument --threshold: must be a score in [0, 1], got nan"),
    (["--max-tiles", "0"], "argument --max-tiles: must be at least 1, got 0"),
    (["--max-pixels", "0"], "argument --max-pixels: must be at least 2304, got 0"),
    (["--workers", "-1"], "argument --workers: must be at least 1, got -1"),
    (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["--log-verbose", "-1"], "argument --log-verbose: must be at least 0, got -1"),
    (["--exit-timeout", "26"], "argument --exit-timeout: must be from 0 to 25, got 26"),
    (["--model-name", "a/b"], "argument --model-name: 'a/b' is not a valid Triton model name"),
])
def test_serve_refuses_out_of_range_options_at_parsing(args, problem, capsys):
    need_pytriton()
    from lfm.runtime import serve

    with pytest.raises(SystemExit) as e:
        serve.parse_args(["--model", "m.onnx", *args])
    assert e.value.code == 2
    assert problem in capsys.readouterr().err.strip().splitlines()[-1]


def test_serve_accepts_options_at_the_edges_of_their_ranges():
    need_pytriton()
    from lfm.runtime import serve

    args = serve.parse_args(["--model", "m.onnx", "--http-port", "65535", "--grpc-port", "1", "--metrics-port", "8002",
                             "--threshold", "0", "--exit-timeout", "0", "--max-queue-delay-us", "0",
                             "--log-verbose", "0", "--model-name", "lfm-v2.int8_b"])
    assert (args.http_port, args.grpc_port, args.threshold, args.exit_timeout) == (65535, 1, 0.0, 0)
    assert args.model_name == "lfm-v2.int8_b"
    assert serve.parse_args(["--model", "m.onnx", "--threshold", "1"]).threshold == 1.0
    assert serve.parse_args(["--model", "m.onnx"]).model_name == "lfm"  # the name clients ask for by default


def test_serve_port_out_of_range_is_one_line_exit_2():
    """The command itself: exit 2 before anything starts, the last line names the option and
    the range (it used to say 'must be three different ports')."""
    need_pytriton()
    r = subprocess.run([sys.executable, str(SERVE), "--model", "m.onnx", "--http-port", "99999"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "serve.py: error: argument --http-port: must be from 1 to 65535, got 99999 (see serve.py --help)")


def _help_blocks(text: str) -> dict[str, str]:
    """`--option` -> its help text (wrapped lines joined) from argparse's --help output."""
    blocks, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("  -") and not line.startswith("   "):
            current = stripped.split()[0].rstrip(",")
            if current == "-h":
                current = "--help"
            blocks[current] = stripped
        elif current and line.startswith("    ") and stripped:
            blocks[current] += " " + stripped
        else:
            current = None
    return blocks


def test_serve_help_states_every_default():
    """`serve.py --help`: every option that has a default says it, "(default: X)" with the
    value parse_args really uses, or what an unset value means (e.g. the model's)."""
    need_pytriton()
    from lfm.runtime import serve

    r = subprocess.run([sys.executable, str(SERVE), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    blocks = _help_blocks(r.stdout)
    defaults = vars(serve.parse_args(["--model", "m.onnx"]))
    no_default = {"--help", "--version", "--model", "--engine", "--checkpoint"}  # one of the three is required
    options = set(blocks) - no_default
    assert {"--http-port", "--grpc-port", "--metrics-port", "--threshold", "--policy", "--size", "--tile-reduce",
            "--max-tiles", "--model-name", "--no-self-test", "--kernels"} <= options
    for option in sorted(options):
        value = defaults[option[2:].replace("-", "_")]
        if isinstance(value, list):  # parsed from its text form, as the default is written
            value = ",".join(map(str, value))
        help_text = " ".join(blocks[option].split())
        if value is None:
            assert "(default: " in help_text, help_text
        elif value is False:
            assert "(default: off)" in help_text, help_text
        else:
            assert f"(default: {value}" in help_text, help_text
    assert "(default: 8000)" in blocks["--http-port"] and "(default: lfm)" in blocks["--model-name"]
    assert "(default: the model's)" in blocks["--policy"] and "(default: max)" in blocks["--tile-reduce"]


@pytest.mark.parametrize("policy, size", [("center-crop", 128), ("tiles", 160), ("center-crop", 64),
                                          ("resize", None), ("none", None)])
def test_self_test_image_fits_the_model_spec(random_onnx, policy, size):
    """The start-up image is one the model's spec accepts: the fixed 96 x 80 was refused by a
    center-crop to 128 (serve.py then exited 1 at start-up)."""
    need_pytriton()
    from lfm.runtime.preprocess import open_image, tile_boxes
    from lfm.runtime.serve import self_test_image

    with Detector(make_runner(random_onnx, threads=1), policy=policy, size=size, workers=1) as det:
        blob = self_test_image(det.spec)
        (record,) = det.predict([blob])
        assert record.ok, record.error
    img = open_image(blob)
    if policy in ("center-crop", "tiles"):
        assert min(img.size) >= det.spec.size
    else:  # resize / none take any image above the minimum: the small one is kept
        assert img.size == (96, 80)
    if policy == "tiles":
        assert len(tile_boxes(img.width, img.height, det.spec.size)) == 1


def test_self_test_image_holds_top_k():
    """A spec with a larger top-k needs a larger minimum input than 96 x 80 gives."""
    need_pytriton()
    from lfm.runtime.preprocess import open_image
    from lfm.runtime.serve import self_test_image
    from lfm.runtime.spec import ModelSpec, check_input_size, min_input_size

    spec = ModelSpec(policy="none", top_k=128)
    assert min_input_size(128) > 80
    img = open_image(self_test_image(spec))
    check_input_size(img.height, img.width, 128)
    assert min(img.size) >= min_input_size(128)


def _in_process_server(monkeypatch, server_detector):
    """LfmClient requests answered by serve.py's real model callable (LfmModel, its own
    Detector) in this process: serve.self_test runs end to end except for Triton's transport."""
    from lfm.runtime import client, serve

    model = serve.LfmModel(server_detector)
    monkeypatch.setattr(client.LfmClient, "infer",
                        lambda self, name, data, datatype: model([{name: data}])[0])


def test_self_test_agreement_rule(random_onnx, monkeypatch):
    """The same error record from server and local Detector is agreement (the server starts);
    different answers are not."""
    need_pytriton()
    from lfm.runtime.records import Record
    from lfm.runtime.serve import records_agree, self_test

    ok = Record.from_logit("a", 0.25, 0.5)
    assert records_agree(ok, Record.from_logit("b", 0.25, 0.5))
    assert not records_agree(ok, Record.from_logit("b", 0.5, 0.5))
    assert records_agree(Record.failed("a", "too big"), Record.failed("b", "too big"))
    assert not records_agree(Record.failed("a", "too big"), Record.failed("b", "too small"))
    assert not records_agree(ok, Record.failed("b", "too big")) and not records_agree(Record.failed("a", "x"), ok)

    def runner():
        return make_runner(random_onnx, threads=1)

    # --max-pixels below the self-test image: both sides refuse it with the same error
    with Detector(runner(), workers=1, max_pixels=5000) as served, Detector(runner(), workers=1, max_pixels=5000) as local:
        _in_process_server(monkeypatch, served)
        message = self_test("http://127.0.0.1:1", local)
    assert message.startswith("self-test: server and local Detector agree (both refuse the test image: ")
    assert "exceeds the limit of 5000" in message
    # the server refuses what the local Detector scores: a failure
    with Detector(runner(), workers=1, max_pixels=5000) as served, Detector(runner(), workers=1) as local:
        _in_process_server(monkeypatch, served)
        with pytest.raises(RuntimeError, match="start-up self-test failed"):
            self_test("http://127.0.0.1:1", local)


def test_decode_option_reaches_detector_kwargs(capsys):
    """--decode (infer.py's choices) goes to every instance's Detector as decode=; --workers
    then counts decoding processes; threads by default; anything else is refused at parsing."""
    need_pytriton()
    from lfm.runtime import serve
    from lfm.runtime.options import DECODE_MODES

    assert serve.pipeline_options(serve.parse_args(["--model", "m.onnx"]), 2).decode == "threads"
    for mode in DECODE_MODES:
        options = serve.pipeline_options(serve.parse_args(["--model", "m.onnx", "--decode", mode, "--workers", "3"]), 2)
        assert (options.decode, options.workers) == (mode, 3)
    with pytest.raises(SystemExit) as e:
        serve.parse_args(["--model", "m.onnx", "--decode", "fast"])
    assert e.value.code == 2
    assert "argument --decode: invalid choice: 'fast'" in capsys.readouterr().err.strip().splitlines()[-1]


def test_spawned_decoding_process_keeps_serve_py_sys_path(tmp_path):
    """A --decode processes worker (multiprocessing "spawn") runs serve.py again as __mp_main__
    with serve.py's sys.path: the module drops sys.path[0] only when it is runtime/ (a script
    run), not the first entry of the parent's path (PYTHONPATH's first folder, say)."""
    need_pytriton()
    marker = str(tmp_path)
    code = ("import runpy, sys\n"
            f"sys.path.insert(0, {marker!r})\n"
            f"runpy.run_path({str(SERVE)!r}, run_name='__mp_main__')\n"
            "print(sys.path[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == marker
    # run as a script, runtime/ itself is still dropped (the installed package is imported)
    code = ("import runpy, sys\n"
            f"sys.path.insert(0, {str(SERVE.parent)!r})\n"
            f"runpy.run_path({str(SERVE)!r}, run_name='serve_as_script')\n"
            f"print({str(SERVE.parent)!r} in sys.path)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def _spawned_children() -> set[int]:
    """This process's multiprocessing "spawn" children (decoding processes among them)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            if b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                found.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_local_reference_scores_on_every_instance_before_serving(random_onnx, monkeypatch):
    """serve.py's self-test and health probe compare the server with a reference record computed
    before Triton starts (local_reference: every instance scores the test image once, so a
    --decode processes instance starts its decoding processes then); given that reference,
    self_test no longer asks the Detector, which is serving requests by then (a decoding pool
    serves one thread at a time)."""
    need_pytriton()
    from lfm.runtime.serve import local_reference, self_test, self_test_image

    class Busy:  # the instance's Detector while it serves: not to be used from the main thread
        spec = None

        def predict(self, items):
            raise AssertionError("the Detector was asked while serving")

    before = _spawned_children()
    with Detector(make_runner(random_onnx, threads=1), workers=1) as threads, \
            Detector(make_runner(random_onnx, threads=1), workers=1, decode="processes") as processes:
        blob, record = local_reference([threads, processes])
        assert blob == self_test_image(threads.spec)
        assert record.ok and record == threads.predict([blob])[0]
        assert len(_spawned_children() - before) == 1  # the processes instance's one worker, started now
        _in_process_server(monkeypatch, processes)
        message = self_test("http://127.0.0.1:1", Busy(), reference=(blob, record))
    assert message == f"self-test: server and local Detector agree (logit {record.logit:.6f})"


@pytest.mark.slow
def test_decode_gpu_without_cuda_is_one_line_exit_2_before_triton(random_onnx, tmp_path):
    """--decode gpu where torch + CUDA + torchvision are missing (this CPU machine): the command
    exits 2 with one line naming the problem, no traceback, before tritonserver starts."""
    need_pytriton()
    from lfm.runtime.gpu_decode import GpuDecodeUnavailable, nvjpeg_decoder

    try:
        nvjpeg_decoder("cuda")
        pytest.skip("nvJPEG is available here: --decode gpu would serve")
    except GpuDecodeUnavailable:
        pass
    http, grpc, metrics = free_ports(3)
    r = subprocess.run([sys.executable, str(SERVE), "--model", str(random_onnx), "--decode", "gpu",
                        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                       capture_output=True, text=True, timeout=180, cwd=ROOT, start_new_session=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors == [r.stderr.strip().splitlines()[-1]], r.stderr
    assert errors[0].startswith("error: decode 'gpu' needs ") and "CUDA" in errors[0], errors
    assert "tritonserver" not in r.stderr and "Started HTTPService" not in r.stderr  # Triton never started
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", http), timeout=1)


# --------------------------------------------------------------------------------------------
# Through the server


def test_health_endpoints_and_python_backend_fix(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/lfm/ready"):
        with urllib.request.urlopen(server.http_url + path, timeout=5) as r:
            assert r.status == 200, path
    with LfmClient(server.grpc_url) as c:
        assert c.live() and c.ready()
    with urllib.request.urlopen(server.http_url + "/v2/models/lfm/config", timeout=5) as r:
        config = json.load(r)
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert sum(g["count"] for g in config["instance_group"]) == 2
    assert {i["name"]: i["data_type"] for i in config["input"]} == {"image": "TYPE_STRING", "pixels": "TYPE_UINT8"}
    assert [o["name"] for o in config["output"]] == ["logit", "score", "label", "error", "flags"]
    # The root-cause fix: the Python-backend stubs run this interpreter's own libpython.
    from lfm.runtime.serve_triton import stub_libpythons

    libdir = sysconfig.get_config_var("LIBDIR")
    ours = os.path.realpath(os.path.join(libdir, f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"))
    children = _descendants(server.proc.pid)
    stubs = {pid: libs for pid, libs in stub_libpythons().items() if pid in children}
    assert len(stubs) == 2, f"expected 2 stub processes under the server, found {stubs}"
    if os.path.isfile(ours):
        for libs in stubs.values():
            assert [os.path.realpath(p) for p in libs] == [ours]


def test_a_cpu_start_prints_no_error_line(server):
    """Triton's `E` lines read as errors. Those it prints at every start without a CUDA driver,
    and the one PyTriton's model load causes, are expected: left out, and said once."""
    start = server.log().split("serving model", 1)[0]
    errors = [line for line in start.splitlines() if re.match(r"^E\d{4} ", line) or " ERROR" in line]
    assert not errors, errors
    assert "Triton's start-up: " in start and "expected error/warning line(s) left out" in start


def test_expected_triton_lines_are_left_out_whole_lines_only(capsys):
    """The filter gets tritonserver's output in chunks as they come (PyTriton reads it
    unbuffered): lines are put together first; every other line, E ones included, passes."""
    need_pytriton()
    from pytriton.server.triton_server import TritonServer

    from lfm.runtime.serve_triton import expected_triton_lines_left_out

    expected = 'E1206 12:20:55.944866 5956 server.cc:241] "CudaDriverHelper has not been initialized."\n'
    other = 'E1206 12:20:56.000001 5956 server.cc:241] "CudaDriverHelper has been initialized."\n'
    info = 'I1206 12:20:56.967039 5956 model_lifecycle.cc:472] "loading: lfm:1"\n'
    server = TritonServer.__new__(TritonServer)  # what the log callback uses of it
    server._verbose, server._tritonserver_logs = True, ""
    with expected_triton_lines_left_out() as left_out:
        record = TritonServer._record_logs.__get__(server)
    text = (expected + other + info).encode()
    for chunk in (text[:30], text[30:100], text[100:]):
        record(chunk)
    assert capsys.readouterr().out == other + info
    assert left_out == ["no CUDA driver"]
    assert TritonServer._record_logs.__name__ == "_record_logs"  # put back once started


def test_served_config_bounds_the_queue(server):
    """The model's dynamic batcher has serve.py's default queue policy: a bounded queue whose
    excess Triton refuses at once (REJECT), and the queue timeout."""
    from lfm.runtime import serve_defaults as defaults

    with urllib.request.urlopen(server.http_url + "/v2/models/lfm/config", timeout=5) as r:
        policy = json.load(r)["dynamic_batching"]["default_queue_policy"]
    assert policy == {"timeout_action": "REJECT", "default_timeout_microseconds": defaults.QUEUE_TIMEOUT_MS * 1000,
                      "allow_timeout_override": False, "max_queue_size": defaults.MAX_QUEUE_SIZE}
    deadline = time.monotonic() + 10  # logged just after "serving model", which the fixture waits for
    while "supervision: watching tritonserver" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "supervision: watching tritonserver" in server.log()
    # the supervision's documented defaults (docs/serving.md), as a real start reports them
    assert "inference probe every 1 s; hang timeout 60 s; watchdog 5 s" in server.log()


def _descendants(pid: int) -> set[int]:
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier} - out
        out |= frontier
    return out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scores_equal_offline_runtime(server, images, offline, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with LfmClient(url) as c:
        records = c.score([str(p) for p in images], batch_size=2)
    assert [r.path for r in records] == [str(p) for p in images]
    for r in records:
        assert same(r, offline[r.path]), (r, offline[r.path])


def test_client_command(server, images, offline, tmp_path):
    out = tmp_path / "served.jsonl"
    missing = str(tmp_path / "missing.png")
    res = subprocess.run([sys.executable, str(ROOT / "runtime" / "client.py"), *map(str, images), missing,
                          "--url", server.http_url, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr  # one input failed (the missing file)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [*map(str, images), missing]
    for row in rows[:-1]:
        ref = offline[row["path"]].to_dict()
        assert row == ref
    assert rows[-1]["error"] == "no such file" and rows[-1]["flags"] == []
    flags = {Path(r["path"]).name: r["flags"] for r in rows}  # through the server's flags output and back
    assert "low-jpeg-quality:90" in flags["photo.jpg"] and "upscaled:1.28" in flags["padded.bmp"]


def test_pixels_input_equals_detector_on_arrays(server, random_onnx):
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)  # the model's size: the policy is a no-op
    other = rng.integers(0, 256, (2, 90, 70, 3), dtype=np.uint8)  # resized by the policy, as the runtime does
    with Detector(random_onnx) as det:
        ref = det.predict(list(batch) + list(other))
    with LfmClient(server.http_url) as c:
        got = c.score_pixels(batch) + c.score_pixels(other)
    for r, e in zip(got, ref):
        assert same(r, e), (r, e)


def _png(w, h, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_malformed_requests_get_errors_and_server_keeps_answering(server, images, offline):
    good = images[0].read_bytes()
    bomb = _png(3000, 3000, "L")  # 9 MP in a few kB: over --max-pixels 4 MP
    assert len(bomb) < 100_000
    with LfmClient(server.http_url) as c, LfmClient(server.grpc_url) as g:
        # per item, in its place: garbage, empty, bomb, oversized request, too small; the good one scored
        recs = c.score_bytes([b"\x89PNG\r\n\x1a\ngarbage", good, b"", bomb])
        assert "corrupt PNG" in recs[0].error
        assert same(recs[1], offline[str(images[0])])
        assert recs[2].error == "empty file (0 bytes)"
        assert "exceeds the limit of 4000000" in recs[3].error
        (big,) = g.score_bytes([b"\xff" * (MAX_REQUEST_BYTES + 1)])
        assert f"exceeds the limit of {MAX_REQUEST_BYTES} bytes" in big.error
        (small,) = c.score_pixels(np.zeros((1, 8, 8, 3), np.uint8))
        assert "too small for LFM" in small.error
        # rejected by Triton before the model: an error response
        for name, data, dtype, expect in [
            ("pixels", np.zeros((1, 64, 64, 3), np.float32), "FP32", "data-type is 'FP32'"),
            ("image", np.zeros((1, 1), np.int32), "INT32", "data-type is 'INT32'"),
            ("pixels", np.zeros((1, 64, 64, 4), np.uint8), "UINT8", "unexpected shape"),
            ("image", np.empty((0, 1), dtype=object), "BYTES", "expected 1 string elements"),
            ("image", np.array([[good]] * 17, dtype=object), "BYTES", "batch-size must be <= 16"),
        ]:
            for client in (c, g):
                with pytest.raises(ServerError, match=expect):
                    client.infer(name, data, dtype)
        # still up, still right
        assert server.proc.poll() is None
        assert same(c.score_bytes([good])[0], offline[str(images[0])])


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def test_http_json_answer_with_a_failed_item_is_strict_json(server, images, offline):
    """A bad image among good ones over plain HTTP (KServe v2 JSON; the image bytes in Triton's
    binary extension, as JSON cannot carry them; every output asked for as JSON): the answer
    parses with a strict parser (Python's accepts NaN unless told not to; JSON.parse, Go and
    Java refuse it), the good items hold the offline scores, the bad one its error."""
    import struct

    good = [p.read_bytes() for p in images[:2]]
    blobs = [good[0], b"not an image", good[1]]
    body = b"".join(struct.pack("<I", len(b)) + b for b in blobs)  # Triton's BYTES serialisation
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [3, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(body)}}],
        "outputs": [{"name": n, "parameters": {"binary_data": False}} for n in ("logit", "score", "label", "error")],
    }).encode()
    request = urllib.request.Request(server.http_url + "/v2/models/lfm/infer", data=header + body, method="POST",
                                     headers={"Inference-Header-Content-Length": str(len(header)),
                                              "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=30) as r:
        text = r.read().decode()
    answer = json.loads(text, parse_constant=_refuse_constant)  # NaN, Infinity: refused, as JSON.parse would
    out = {o["name"]: o["data"] for o in answer["outputs"]}
    assert out["error"][1] == "not an image (unrecognised format)" and out["label"][1] == ""
    assert out["score"][1] == -1.0 and out["logit"][1] == 0.0  # the documented placeholders: never a score
    for i, path in ((0, images[0]), (2, images[1])):
        ref = offline[str(path)]
        assert (out["logit"][i], out["score"][i], out["label"][i], out["error"][i]) == (ref.logit, ref.score,
                                                                                        ref.label, "")
    with LfmClient(server.http_url) as c:  # the client's records are unchanged
        recs = c.score_bytes(blobs)
    assert recs[1].error == "not an image (unrecognised format)" and recs[1].logit is None and recs[1].score is None
    assert same(recs[0], offline[str(images[0])]) and same(recs[2], offline[str(images[1])])


def test_short_load_with_a_bad_client_among_good_ones(server, images, offline):
    """8 closed-loop clients for ~2 s, batched together by the dynamic batcher (20 ms window);
    one of them sends garbage half the time. No good request fails, every score is the offline
    one, and batches of several requests did form (Triton's own counters)."""
    blobs = [(str(p), p.read_bytes()) for p in images]
    stop = time.monotonic() + 2.0
    results, errors = [], []

    def worker(k):
        with LfmClient(server.grpc_url if k % 2 else server.http_url) as c:
            i = 0
            while time.monotonic() < stop:
                i += 1
                if k == 0 and i % 2:
                    (r,) = c.score_bytes([b"not an image"])
                    results.append(("bad", r))
                    continue
                path, blob = blobs[(k + i) % len(blobs)]
                try:
                    (r,) = c.score_bytes([blob], [path])
                    results.append(("good", r))
                except ServerError as e:
                    errors.append(str(e))

    before = _metric(server, "nv_inference_exec_count"), _metric(server, "nv_inference_count")
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    good = [r for kind, r in results if kind == "good"]
    bad = [r for kind, r in results if kind == "bad"]
    assert len(good) >= 16 and bad
    assert all(same(r, offline[r.path]) for r in good)
    assert all(r.error == "not an image (unrecognised format)" for r in bad)
    executions = _metric(server, "nv_inference_exec_count") - before[0]
    inferences = _metric(server, "nv_inference_count") - before[1]
    assert inferences >= len(results) and executions < inferences, (executions, inferences)


def _metric(server, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'model="lfm"' in line)


def test_zz_sigterm_finishes_in_flight_requests(server):
    """Last in this file: stops the module's server. Slow requests (6 JPEGs of 2000 x 2000 each,
    ~0.4 s of decoding per request on one core) are in flight when SIGTERM arrives, sent to the
    server's whole process group (the harder case: tritonserver and its stubs must not get it
    directly, see serve_triton.own_process_group); every request completes, then the process exits 0
    and frees its ports."""
    y, x = np.mgrid[0:2000, 0:2000]
    a = np.stack([x * 255 // 2000, y * 255 // 2000, (x + y) % 256], -1).astype(np.uint8)
    a += np.random.default_rng(1).integers(0, 8, a.shape, dtype=np.uint8)
    blob = encode(a, "JPEG", quality=85)
    per_request = 6
    assert len(blob) * per_request < MAX_REQUEST_BYTES
    finished, failed = [], []

    def worker(k):
        with LfmClient(server.grpc_url if k % 2 else server.http_url, timeout=60) as c:
            try:
                recs = c.score_bytes([blob] * per_request)
                finished.append((time.monotonic(), recs))
            except ServerError as e:
                failed.append(str(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the requests are in the server
    t0 = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)  # the group of serve.py, which started it (a session leader)
    for t in threads:
        t.join(60)
    assert not failed, failed
    assert len(finished) == 3 and all(r.ok for _, recs in finished for r in recs)
    assert any(t > t0 for t, _ in finished), "every request finished before SIGTERM: nothing was in flight"
    assert server.stop() == 0
    assert time.monotonic() - t0 < 40
    log = server.log()
    assert "SIGTERM received" in log and "stopped in" in log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.http), timeout=1)


@pytest.fixture(scope="module")
def center_crop_onnx(random_onnx, tmp_path_factory) -> Path:
    """conftest's model with the spec of `to_onnx.py --policy center-crop --size 128` in its
    metadata (the graph takes any size; only the spec differs)."""
    onnx = pytest.importorskip("onnx", reason="rewriting ONNX metadata needs the [export] extra")
    from lfm.export.onnx_files import read_metadata, save_atomic, set_metadata
    from lfm.runtime.spec import ModelSpec

    proto = onnx.load(str(random_onnx))
    props = read_metadata(proto)
    spec = ModelSpec.from_dict(json.loads(props["lfm.spec"])).replace(policy="center-crop", size=128)
    props.update({"lfm.spec": spec.to_json(), "lfm.policy": spec.policy, "lfm.size": str(spec.size)})
    set_metadata(proto, props)
    path = tmp_path_factory.mktemp("center_crop_onnx") / "center_crop_128.onnx"
    save_atomic(proto, path)
    return path


@pytest.mark.slow
def test_center_crop_model_starts_under_a_chosen_model_name(center_crop_onnx, tmp_path):
    """A model whose spec refuses the old 96 x 80 self-test image (center-crop to 128) starts
    (serve.py exited 1 before), under --model-name, and scores as the local Detector does."""
    need_pytriton()
    with Detector(center_crop_onnx) as det:
        assert (det.spec.policy, det.spec.size) == ("center-crop", 128)
        photo = encode(np.random.default_rng(5).integers(0, 256, (150, 200, 3), dtype=np.uint8), "PNG")
        small = _png(100, 100)
        ref = det.predict([photo, small])
    assert ref[0].ok and "centre crop" in ref[1].error
    s = Server(center_crop_onnx, tmp_path / "serve.log", "--model-name", "lfm_cc128", "--instances", "1")
    try:
        s.wait_ready(model="lfm_cc128")
        log = s.log()
        assert "self-test: server and local Detector agree (logit" in log
        assert "serving model 'lfm_cc128'" in log
        with LfmClient(s.grpc_url, model="lfm_cc128") as c:
            got = c.score_bytes([photo, small])
        assert same(got[0], ref[0]) and got[1].error == ref[1].error
        with LfmClient(s.http_url) as c:
            assert c.live() and not c.ready()  # nothing is served as 'lfm'
        (tmp_path / "photo.png").write_bytes(photo)  # client.py --model-name NAME reaches it too
        res = subprocess.run([sys.executable, str(ROOT / "runtime" / "client.py"), str(tmp_path / "photo.png"),
                              "--url", s.http_url, "--model-name", "lfm_cc128"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        row = json.loads(res.stdout)
        assert (row["logit"], row["score"], row["label"]) == (ref[0].logit, ref[0].score, ref[0].label)
    finally:
        assert s.stop() == 0


def _decode_shared_memory(pid: int) -> list[str]:
    from lfm.runtime.decode_pool import SHM_PREFIX

    return glob.glob(f"/dev/shm/{SHM_PREFIX}{pid}-*")


def _all_gone(pids, timeout: float = 30.0) -> set[int]:
    """The pids still running (not exited, not a zombie) after waiting up to ``timeout``."""
    from lfm.runtime.serve_health import process_state

    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if process_state(p) not in (None, "Z", "X")}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _decode_processes_server(random_onnx, log: Path, *extra: str) -> Server:
    """serve.py with --decode processes, 2 decoding processes for its one instance, ready; its
    decoding processes and their shared-memory ring exist before the first request."""
    from lfm.runtime.serve_health import parent_map

    s = Server(random_onnx, log, "--decode", "processes", "--workers", "2", "--instances", "1", *extra)
    try:
        s.wait_ready()
        text = s.log()
        assert "decoding in 2 process(es) per instance" in text
        assert "self-test: server and local Detector agree (logit" in text
        children = {p for p, parent in parent_map().items() if parent == s.proc.pid}
        spawned = {p for p in children if b"spawn_main" in _cmdline(p)}
        assert len(spawned) == 2, spawned  # the instance's decoding processes
        assert len(_decode_shared_memory(s.proc.pid)) == 1
    except BaseException:
        s.stop()
        raise
    return s


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _decode_blobs() -> list[bytes]:
    rng = np.random.default_rng(11)
    return [encode(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8), "PNG"),
            encode(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), "JPEG", quality=90),
            b"\x89PNG\r\n\x1a\ngarbage",
            encode(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8), "JPEG", quality=75)]


@pytest.mark.slow
def test_decode_processes_serves_bytes_as_local_threads_and_sigterm_leaves_nothing(random_onnx, tmp_path):
    """--decode processes: the BYTES input is decoded by the instance's worker processes, and
    the records served (HTTP and gRPC) are the local threads Detector's: the same logits, the
    same errors; the start-up self-test and the health probes agree (no fault: exit 0). After
    SIGTERM no process of the server is left and its /dev/shm/lfm-decode-<pid>-* ring is gone."""
    need_pytriton()
    blobs = _decode_blobs()
    with Detector(random_onnx) as det:
        ref = det.predict(blobs)
    assert [r.ok for r in ref] == [True, True, False, True] and "corrupt PNG" in ref[2].error
    s = _decode_processes_server(random_onnx, tmp_path / "serve.log")
    try:
        pid = s.proc.pid
        for url in (s.http_url, s.grpc_url):
            with LfmClient(url) as c:
                got = c.score_bytes(blobs) + c.score_bytes(blobs[::-1])[::-1]
            for r, e in zip(got, ref + ref):
                assert r.error == e.error
                if e.ok:
                    assert r.ok and abs(r.logit - e.logit) <= 1e-6 and r.label == e.label, (r, e)
        # the health probe (every second) compares the server with the local reference: let a few run
        requests = _metric(s, "nv_inference_request_success")
        deadline = time.monotonic() + 60
        while _metric(s, "nv_inference_request_success") < requests + 3 and time.monotonic() < deadline:
            assert s.proc.poll() is None, s.log()[-3000:]
            time.sleep(0.25)
        assert _metric(s, "nv_inference_request_success") >= requests + 3, "no health probes answered"
        processes = _descendants(pid)
    finally:
        rc = s.stop()
    assert rc == 0, s.log()[-3000:]  # 3 would be a fault (a probe that disagreed)
    assert "fault:" not in s.log() and "stopped in" in s.log()
    assert not _all_gone(processes), f"left running after SIGTERM: {_all_gone(processes, 0)}"
    assert _decode_shared_memory(pid) == []


@pytest.mark.slow
def test_decode_processes_fault_exit_leaves_no_decoders_nor_shared_memory(random_onnx, tmp_path):
    """A fault (the instance's stub killed, as the OOM killer does) with --decode processes:
    serve.py exits 3, and neither its decoding processes nor its lfm-decode-<pid>-* ring
    outlive it (nor any other process of the server)."""
    need_pytriton()
    from lfm.runtime.serve_health import FAULT_EXIT_STATUS, find_server_processes

    s = _decode_processes_server(random_onnx, tmp_path / "serve.log")
    try:
        pid = s.proc.pid
        with LfmClient(s.http_url) as c:
            assert c.score_bytes(_decode_blobs()[:1])[0].ok
        server = find_server_processes(pid, "lfm")
        assert server is not None and len(server.stubs) == 1
        processes = _descendants(pid)
        os.kill(next(iter(server.stubs.values())), signal.SIGKILL)
        try:
            s.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        rc = s.stop()
    assert rc == FAULT_EXIT_STATUS, s.log()[-3000:]
    assert "fault: " in s.log()
    assert not _all_gone(processes), f"left running after the fault: {_all_gone(processes, 0)}"
    assert _decode_shared_memory(pid) == []


# --------------------------------------------------------------------------------------------
# export/to_triton.py


def _raw_answers(address: str, model: str, images: list[Path]) -> tuple:
    """A server's model outputs (name, datatype, shape) and its raw answer to one request: a bad
    image, two good ones and an empty file."""
    import tritonclient.http as tc

    client = tc.InferenceServerClient(address)
    try:
        outputs = [(o["name"], o["datatype"], o["shape"]) for o in client.get_model_metadata(model)["outputs"]]
        blobs = np.array([[b"junk"], [images[0].read_bytes()], [b""], [images[1].read_bytes()]], dtype=object)
        request = tc.InferInput("image", list(blobs.shape), "BYTES")
        request.set_data_from_numpy(blobs)
        result = client.infer(model, [request], outputs=[tc.InferRequestedOutput(n) for n, _, _ in outputs])
        return outputs, {n: result.as_numpy(n).tolist() for n, _, _ in outputs}
    finally:
        client.close()


def _parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_to_triton_repository(random_onnx, tmp_path):
    pytest.importorskip("onnx", reason="reading the ONNX graph needs the [export] extra")
    from lfm.export.to_triton import main
    from lfm.runtime.flags import DEFAULT_UNCERTAIN_BAND

    repo = tmp_path / "repo"
    assert main([str(random_onnx), "--repository", str(repo), "--max-batch-size", "16",
                 "--preferred-batch-sizes", "4,8", "--instances", "3", "--kind", "cpu"]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["lfm", "lfm_model", "lfm_postprocess", "lfm_preprocess"]
    assert (repo / "lfm_model" / "1" / "model.onnx").read_bytes() == random_onnx.read_bytes()
    assert (repo / "lfm_preprocess" / "1" / "model.py").is_file() and (repo / "lfm" / "1").is_dir()
    assert (repo / "lfm_postprocess" / "1" / "model.py").is_file()
    model, pre, post, ens = (_parse_config(repo / m / "config.pbtxt")
                             for m in ("lfm_model", "lfm_preprocess", "lfm_postprocess", "lfm"))
    from tritonclient.grpc import model_config_pb2 as mc

    assert model.platform == "onnxruntime_onnx" and model.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in model.input] == [("pixels", mc.TYPE_UINT8, [-1, -1, 3])]
    assert [(o.name, o.data_type, list(o.dims), list(o.reshape.shape)) for o in model.output] == [
        ("logit", mc.TYPE_FP32, [1], []), ("score", mc.TYPE_FP32, [1], [])]
    assert list(model.dynamic_batching.preferred_batch_size) == [4, 8]
    assert [(g.count, g.kind) for g in model.instance_group] == [(3, mc.ModelInstanceGroup.KIND_CPU)]
    spec = json.loads(model.parameters["lfm.spec"].string_value)
    assert spec["input"] == "uint8" and spec["size"] == 64
    assert pre.backend == "python" and [(i.name, i.data_type) for i in pre.input] == [("image", mc.TYPE_STRING)]
    assert [(o.name, list(o.dims)) for o in pre.output] == [("pixels", [64, 64, 3]), ("error", [1]), ("facts", [2])]
    assert post.backend == "python" and [i.name for i in post.input] == ["logit", "error", "facts"]
    assert float(post.parameters["lfm.threshold"].string_value) == 0.5  # the model's spec's
    assert float(post.parameters["lfm.uncertain_band"].string_value) == DEFAULT_UNCERTAIN_BAND  # no band of its own
    assert ens.platform == "ensemble" and ens.input[0].data_type == mc.TYPE_STRING
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["lfm_preprocess", "lfm_model", "lfm_postprocess"]
    assert dict(steps[0].output_map) == {"pixels": "preprocessed", "error": "preprocess_error",
                                         "facts": "preprocess_facts"}
    assert dict(steps[1].input_map) == {"pixels": "preprocessed"} and dict(steps[1].output_map) == {"logit": "model_logit"}
    assert dict(steps[2].input_map) == {"logit": "model_logit", "error": "preprocess_error", "facts": "preprocess_facts"}
    # the serving contract, as serve.py's model declares it: logit and score FP64, label, error and flags BYTES
    assert [(o.name, o.data_type, list(o.dims)) for o in ens.output] == [
        ("logit", mc.TYPE_FP64, [1]), ("score", mc.TYPE_FP64, [1]), ("label", mc.TYPE_STRING, [1]),
        ("error", mc.TYPE_STRING, [1]), ("flags", mc.TYPE_STRING, [1])]
    assert [(o.name, o.data_type) for o in post.output] == [(o.name, o.data_type) for o in ens.output]
    assert dict(steps[2].output_map) == {o.name: o.name for o in ens.output}
    # an existing repository is not overwritten without --force
    assert main([str(random_onnx), "--repository", str(repo)]) == 2
    assert main([str(random_onnx), "--repository", str(repo), "--force"]) == 0


def test_to_triton_plan_from_sidecar(random_onnx, tmp_path, capsys):
    from lfm.export.to_triton import main
    from lfm.runtime.spec import ModelSpec

    plan = tmp_path / "lfm.plan"
    plan.write_bytes(b"not really an engine")
    spec = ModelSpec(input="float", layout="NCHW", size=224)
    (tmp_path / "lfm.plan.json").write_text(json.dumps({
        "spec": spec.to_dict(), "input": {"name": "image", "dtype": "float32", "layout": "NCHW"},
        "profiles": [{"min": [1, 3, 48, 48], "opt": [16, 3, 224, 224], "max": [24, 3, 448, 448]}], "plugins": []}))
    repo = tmp_path / "repo"
    assert main([str(plan), "--repository", str(repo), "--max-batch-size", "32"]) == 0
    assert "capped at the engine profile's 24" in capsys.readouterr().err
    model = _parse_config(repo / "lfm_model" / "config.pbtxt")
    pre = _parse_config(repo / "lfm_preprocess" / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as mc

    assert model.platform == "tensorrt_plan" and model.max_batch_size == 24
    assert model.default_model_filename == "model.plan" and (repo / "lfm_model" / "1" / "model.plan").is_file()
    assert [(g.kind) for g in model.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert [(i.name, i.data_type, list(i.dims)) for i in model.input] == [("image", mc.TYPE_FP32, [3, -1, -1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in pre.output] == [("image", mc.TYPE_FP32, [3, 224, 224]),
                                                                          ("error", mc.TYPE_STRING, [1]),
                                                                          ("facts", mc.TYPE_FP64, [2])]
    assert list(model.dynamic_batching.preferred_batch_size) == [8, 16]
    assert main([str(plan), "--repository", str(tmp_path / "r2"), "--kind", "cpu"]) == 2
    (tmp_path / "lfm.plan.json").unlink()
    assert main([str(plan), "--repository", str(tmp_path / "r3")]) == 2
    assert "no sidecar" in capsys.readouterr().err


def test_to_triton_writes_the_queue_policy(random_onnx, tmp_path, capsys):
    """The ensemble's door, lfm_preprocess, bounds its queue (--max-queue-size) and refuses what
    is past it at once; both models refuse a request queued past --queue-timeout-ms; lfm_model
    gets no size bound (what reaches it was admitted and preprocessed already)."""
    pytest.importorskip("onnx", reason="reading the ONNX graph needs the [export] extra")
    from tritonclient.grpc import model_config_pb2 as mc

    from lfm.export.to_triton import main
    from lfm.runtime import serve_defaults as defaults
    repo = tmp_path / "repo"
    assert main([str(random_onnx), "--repository", str(repo)]) == 0
    pre = _parse_config(repo / "lfm_preprocess" / "config.pbtxt").dynamic_batching.default_queue_policy
    model = _parse_config(repo / "lfm_model" / "config.pbtxt").dynamic_batching.default_queue_policy
    assert (pre.max_queue_size, pre.default_timeout_microseconds) == (defaults.MAX_QUEUE_SIZE,
                                                                      defaults.QUEUE_TIMEOUT_MS * 1000)
    assert pre.timeout_action == model.timeout_action == mc.ModelQueuePolicy.REJECT
    assert (model.max_queue_size, model.default_timeout_microseconds) == (0, defaults.QUEUE_TIMEOUT_MS * 1000)
    assert main([str(random_onnx), "--repository", str(repo), "--force", "--max-queue-size", "4",
                 "--queue-timeout-ms", "500"]) == 0
    pre = _parse_config(repo / "lfm_preprocess" / "config.pbtxt").dynamic_batching.default_queue_policy
    assert (pre.max_queue_size, pre.default_timeout_microseconds) == (4, 500_000)
    assert main([str(random_onnx), "--repository", str(repo), "--force", "--max-queue-size", "0",
                 "--queue-timeout-ms", "0"]) == 0
    for m in ("lfm_preprocess", "lfm_model"):  # both bounds off: Triton's own unbounded queue
        assert not _parse_config(repo / m / "config.pbtxt").dynamic_batching.HasField("default_queue_policy")
    with pytest.raises(SystemExit) as e:
        main([str(random_onnx), "--repository", str(repo), "--max-queue-size", "-1"])
    assert e.value.code == 2 and "--max-queue-size and --queue-timeout-ms must be >= 0" in capsys.readouterr().err


def _load_python_model(repo: Path, name: str):
    """The written model.py of ``name``, imported with a stand-in for Triton's
    triton_python_backend_utils and initialised with its written config.pbtxt."""
    from google.protobuf import json_format

    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class TritonError:
        def __init__(self, message):
            self.msg = message

    pb.Tensor, pb.InferenceResponse, pb.TritonError = Tensor, InferenceResponse, TritonError
    pb.get_input_tensor_by_name = lambda request, name: request[name]
    pb.triton_string_to_numpy = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32}.__getitem__
    sys.modules["triton_python_backend_utils"] = pb
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_model", repo / name / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del sys.modules["triton_python_backend_utils"]
    config = _parse_config(repo / name / "config.pbtxt")
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))})
    return model, config, Tensor


def test_to_triton_python_models_answer_each_image(random_onnx, images, tmp_path):
    """The written python-backend models, run with a stand-in pb_utils. Preprocessing: the
    runtime's arrays, and a bad image is its own error (a placeholder in the batch), never its
    request's, and each image's facts (the flags' makings) are the runtime's. Postprocessing:
    logit, score (float64, sigmoid of the logit), label at the model's threshold, error and flags
    (the model's band), as infer.py's records have them."""
    pytest.importorskip("onnx", reason="reading the ONNX graph needs the [export] extra")
    from lfm.export.to_triton import write_repository
    from lfm.runtime.flags import DEFAULT_UNCERTAIN_BAND, NO_FACTS, record_flags
    from lfm.runtime.preprocess import load_array, load_prepared
    from lfm.runtime.records import Record
    from lfm.runtime.serve_contract import facts_row
    from lfm.runtime.spec import ModelSpec

    repo = tmp_path / "repo"
    write_repository(str(random_onnx), str(repo))
    pre, config, Tensor = _load_python_model(repo, "lfm_preprocess")
    blobs = [p.read_bytes() for p in images]
    requests = [{"image": Tensor("image", np.array([[b] for b in blobs[:2]], dtype=object))},
                {"image": Tensor("image", np.array([[b"junk"], [blobs[2]], [b""]], dtype=object))},
                {"image": Tensor("image", np.array([[b"junk"]], dtype=object))}]
    responses = pre.execute(requests)
    spec = ModelSpec.from_dict(json.loads(config.parameters["lfm.spec"].string_value))
    assert all(r.error is None for r in responses)
    (p0, e0, f0), (p1, e1, f1), (p2, e2, f2) = ([t.array for t in r.output_tensors] for r in responses)
    np.testing.assert_array_equal(p0, np.stack([load_array(b, spec) for b in blobs[:2]]))
    np.testing.assert_array_equal(p1[1], load_array(blobs[2], spec))
    assert not p1[0].any() and not p1[2].any() and p2.shape == (1, 64, 64, 3)  # placeholders, the model's size
    assert e0.tolist() == [[b""], [b""]] and e2.tolist() == [[b"not an image (unrecognised format)"]]
    assert e1.tolist() == [[b"not an image (unrecognised format)"], [b""], [b"empty file (0 bytes)"]]
    assert f0.tolist() == [facts_row(load_prepared(b, spec)[1]) for b in blobs[:2]] and f0.dtype == np.float64
    assert f1.tolist() == [facts_row(NO_FACTS), facts_row(load_prepared(blobs[2], spec)[1]), facts_row(NO_FACTS)]

    post, config, Tensor = _load_python_model(repo, "lfm_postprocess")
    assert float(config.parameters["lfm.uncertain_band"].string_value) == DEFAULT_UNCERTAIN_BAND
    logits = np.array([[0.25], [-3.5], [7.0]], np.float32)
    [response] = post.execute([{"logit": Tensor("logit", logits), "error": Tensor("error", e1),
                                "facts": Tensor("facts", f1)}])
    out = {t.name: t.array for t in response.output_tensors}
    assert list(out) == ["logit", "score", "label", "error", "flags"]
    assert out["logit"].dtype == out["score"].dtype == np.float64
    flags = record_flags(load_prepared(blobs[2], spec)[1], -3.5, 0.5, DEFAULT_UNCERTAIN_BAND)
    want = Record.from_logit("", float(logits[1, 0]), 0.5, flags)  # infer.py's record of that logit and image
    assert (out["logit"][1, 0], out["score"][1, 0]) == (want.logit, want.score) and want.label == "real"
    assert out["label"].tolist() == [[b""], [b"real"], [b""]] and out["error"].tolist() == e1.tolist()
    assert out["flags"].tolist() == [[b""], [b"upscaled:1.28;uncertain"], [b""]] and want.flags == [
        "upscaled:1.28", "uncertain"]  # padded.bmp, 50 x 60, at the model's 64
    assert out["score"][[0, 2], 0].tolist() == [-1.0, -1.0]  # failed: no sigmoid's value
    [response] = post.execute([{"logit": Tensor("logit", logits), "error": Tensor("error", e0.repeat(2)[:3, None]),
                                "facts": Tensor("facts", f0.repeat(2, axis=0)[:3])}])
    assert [t.array.tolist() for t in response.output_tensors if t.name == "label"] == [[[b"fake"], [b"real"], [b"fake"]]]


def test_to_triton_ensemble_in_bundled_tritonserver(random_onnx, images, offline, tmp_path, restore_env):
    """The repository in a real tritonserver (PyTriton's bundled binary, which has the python
    backend but not the onnxruntime one): lfm_model is swapped for a python model running the
    same ONNX file with onnxruntime; the ensemble, the preprocessing and the postprocessing models
    are as written. One serving contract: the same outputs as serve.py's model (names, types,
    shapes) and the same answers to the same request, a bad image its own error beside good ones;
    records equal the runtime's, labels the server's; --threshold relabels from the score."""
    pytriton = need_pytriton()
    pytest.importorskip("onnx", reason="reading the ONNX graph needs the [export] extra")
    from lfm.export.to_triton import write_repository
    from lfm.runtime.serve_triton import fix_python_backend_libpython

    repo = tmp_path / "repo"
    write_repository(str(random_onnx), str(repo), instances=1, max_queue_delay_us=100)
    (repo / "lfm_model" / "config.pbtxt").write_text(
        'name: "lfm_model"\nbackend: "python"\nmax_batch_size: 32\n'
        'input [ { name: "pixels" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] } ]\n'
        'output [ { name: "logit" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'instance_group [ { count: 1 kind: KIND_CPU } ]\n')
    (repo / "lfm_model" / "1" / "model.py").write_text(
        "import os\nimport onnxruntime as ort\nimport triton_python_backend_utils as pb\n\n"
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        self.s = ort.InferenceSession(os.path.join(os.path.dirname(__file__), 'model.onnx'), providers=['CPUExecutionProvider'])\n\n"
        "    def execute(self, requests):\n"
        "        out = []\n"
        "        for r in requests:\n"
        "            logit, score = self.s.run(['logit', 'score'], {'pixels': pb.get_input_tensor_by_name(r, 'pixels').as_numpy()})\n"
        "            out.append(pb.InferenceResponse([pb.Tensor('logit', logit.reshape(-1, 1)), pb.Tensor('score', score.reshape(-1, 1))]))\n"
        "        return out\n")
    dist = Path(pytriton.__file__).parent / "tritonserver"
    server_dir = tmp_path / "tritonserver"
    shutil.copytree(dist, server_dir, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(dist / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub",
                server_dir / "backends" / "python" / "triton_python_backend_stub")
    fix_python_backend_libpython()  # the stub must run this interpreter's libpython here too
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in [os.environ.get("LD_LIBRARY_PATH", ""), str(Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs")] if p)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    http, grpc, metrics = free_ports(3)
    log = open(tmp_path / "tritonserver.log", "wb")
    proc = subprocess.Popen([str(server_dir / "bin" / "tritonserver"), "--model-repository", str(repo),
                             "--backend-directory", str(server_dir / "backends"), "--http-address", "127.0.0.1",
                             "--http-port", str(http), "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
                             "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
                             "--allow-gpu-metrics", "false", "--exit-timeout-secs", "5"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with LfmClient(f"http://127.0.0.1:{http}") as c:
            if not c.wait_ready(START_TIMEOUT_S):
                pytest.fail("tritonserver not ready:\n" + (tmp_path / "tritonserver.log").read_text()[-4000:])
            records = c.score([str(p) for p in images], batch_size=2)
            junk, after, empty = c.score([b"junk", str(images[0]), b""], batch_size=3)  # one request
        for r in records + [after]:
            assert same(r, offline[r.path]), (r, offline[r.path])
        assert (junk.error, empty.error) == ("not an image (unrecognised format)", "empty file (0 bytes)")
        served = Server(random_onnx, tmp_path / "serve.log").wait_ready()  # the module's server is stopped by now
        try:
            assert _raw_answers(f"127.0.0.1:{http}", "lfm", images) == _raw_answers(f"127.0.0.1:{served.http}", "lfm",
                                                                                    images)
        finally:
            served.stop()
        scores = [r.score for r in records]
        threshold = sorted(scores)[len(scores) // 2]  # one score on it ("real": not above), others either side
        with LfmClient(f"grpc://127.0.0.1:{grpc}", threshold=threshold) as c:
            relabelled = c.score([str(p) for p in images], batch_size=2)
        assert [r.label for r in relabelled] == ["fake" if s > threshold else "real" for s in scores]
        assert [(r.logit, r.score) for r in relabelled] == [(r.logit, r.score) for r in records]
        from lfm.runtime.flags import DEFAULT_UNCERTAIN_BAND
        from lfm.runtime.spec import logit_boundary

        near = [abs(r.logit - logit_boundary(threshold)) < DEFAULT_UNCERTAIN_BAND for r in records]
        assert [r.flags for r in relabelled] == [[f for f in r.flags if f != "uncertain"] + ["uncertain"] * n
                                                 for r, n in zip(records, near)]  # uncertain: around the new threshold
        with pytest.raises(ServerError, match="lacks the output.s. label, error, flags"):
            LfmClient(f"http://127.0.0.1:{http}", model="lfm_model").output_names()  # not the contract
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


# The error serve.py got when PyTriton's instance handshake race struck (a fresh-clone CI run,
# 2026-12-06, test_serve_faults with --instances 2): Triton's model load error, its stub's traceback
# inside. Abridged to the lines that carry the signature; the text is Triton's, as logged.
HANDSHAKE_RACE_ERROR = (
    "[400] load failed for model 'lfm': version 1 is at UNAVAILABLE state: Internal: TritonModelException: Model "
    "initialize error: Traceback (most recent call last):\n  File \"/tmp/folderZ8IIxW/1/model.py\", line 425, in "
    "initialize\n    inference_handler_config = get_config_from_handshake_server(handshake_socket)\n  File "
    "\"/tmp/folderZ8IIxW/1/communication.py\", line 550, in get_config_from_handshake_server\n    "
    "sock.connect(socket_path.as_posix())\nConnectionRefusedError: [Errno 111] Connection refused\n")


def test_instance_handshake_race_is_told_from_other_load_failures():
    from lfm.runtime.serve_triton import is_instance_handshake_race

    assert is_instance_handshake_race(RuntimeError(HANDSHAKE_RACE_ERROR))
    timeout = HANDSHAKE_RACE_ERROR.replace("ConnectionRefusedError: [Errno 111] Connection refused",
                                           "TimeoutError: Timeout occurred while waiting for config file /tmp/x.sock")
    assert is_instance_handshake_race(RuntimeError(timeout))
    # our own model failing to load, or the handshake failing otherwise, is not retried
    assert not is_instance_handshake_race(RuntimeError(
        "[400] load failed for model 'lfm': version 1 is at UNAVAILABLE state: Internal: TritonModelException: "
        "Model initialize error: ValueError: bad model"))
    assert not is_instance_handshake_race(RuntimeError(HANDSHAKE_RACE_ERROR.replace("ConnectionRefusedError",
                                                                                    "PermissionError")))


def test_a_start_lost_to_the_handshake_race_starts_again_and_serves(random_onnx, images, offline, tmp_path):
    """serve.py really started twice in one process: the first Triton really runs, then its start
    is failed with the race's error (the race itself cannot be made to happen on demand); serve.py
    stops it, starts a second Triton with the same instances, and serves exactly as offline."""
    need_pytriton()
    wrapper = tmp_path / "serve_losing_first_start.py"
    wrapper.write_text(
        "import runpy, sys\n"
        "import pytriton.triton as pt\n"
        "from tritonclient.utils import InferenceServerException\n"
        f"ERROR = {HANDSHAKE_RACE_ERROR!r}\n"
        "real_run, starts = pt.Triton.run, []\n"
        "def run(self):\n"
        "    starts.append(self)\n"
        "    real_run(self)\n"
        "    if len(starts) == 1:\n"
        "        raise InferenceServerException(ERROR)\n"
        "pt.Triton.run = run\n"
        f"sys.argv[0] = {str(SERVE)!r}\n"
        f"runpy.run_path({str(SERVE)!r}, run_name='__main__')\n")
    s = Server(random_onnx, tmp_path / "serve.log", "--instances", "2", script=wrapper)
    try:
        s.wait_ready()
        with LfmClient(s.http_url) as c:
            records = c.score([str(p) for p in images], batch_size=2)
        for r in records:
            assert same(r, offline[r.path]), (r, offline[r.path])
    finally:
        code = s.stop()
    log = s.log()
    assert "PyTriton's start-up race between instances" in log and "(attempt 2 of 2)" in log, log[-3000:]
    assert log.count("serving model") == 1 and code == 0, (code, log[-3000:])
