"""The one options layer (runtime/options.py): every command that takes a shared flag refuses the
same bad value with the same line, exit 2, while parsing (before a model loads, a server starts
or Ray connects), and PipelineOptions refuses in code what the command line refuses."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lfm.runtime import cli
from lfm.runtime.options import (DECODE_MODES, ModelArgs, OutputArgs, PipelineArgs, PipelineOptions, ServerArgs,
                                 parse_and_check)

ROOT = Path(__file__).resolve().parents[1]

# The shared flags, a bad value for each, and the refusal argparse prints for it: one text for every command.
BAD_VALUES = {
    "--threshold": ("1.5", "argument --threshold: must be a score in [0, 1], got 1.5"),
    "--size": ("40", "argument --size: must be at least 48, got 40"),
    "--batch-size": ("0", "argument --batch-size: must be at least 1, got 0"),
    "--max-pixels": ("100", "argument --max-pixels: must be at least 2304, got 100"),
    "--max-model-pixels": ("x", "argument --max-model-pixels: expected a whole number, got 'x'"),
    "--max-tiles": ("0", "argument --max-tiles: must be at least 1, got 0"),
    "--workers": ("-2", "argument --workers: must be at least 1, got -2"),
    "--threads": ("0", "argument --threads: must be at least 1, got 0"),
    "--policy": ("stretch", "argument --policy: invalid choice: 'stretch'"),
    "--tile-reduce": ("median", "argument --tile-reduce: invalid choice: 'median'"),
    "--decode": ("fast", "argument --decode: invalid choice: 'fast'"),
    "--progress": ("sometimes", "argument --progress: invalid choice: 'sometimes'"),
    "--model-name": ("a/b", "argument --model-name: 'a/b' is not a valid Triton model name"),
    "--uncertain-band": ("-1", "argument --uncertain-band: must be a logit half-width >= 0, got -1"),
}

# Each command: the arguments it needs to get as far as parsing, and the shared flags it takes.
PIPELINE = ("--threshold", "--size", "--batch-size", "--max-pixels", "--max-tiles", "--policy", "--tile-reduce")
COMMANDS = {
    "infer": (["--model", "m.onnx", "x.png"],
              PIPELINE + ("--max-model-pixels", "--workers", "--decode", "--threads", "--progress", "--uncertain-band")),
    "serve": (["--model", "m.onnx"], tuple(f for f in PIPELINE if f != "--batch-size")
              + ("--max-model-pixels", "--workers", "--decode", "--threads", "--model-name", "--uncertain-band")),
    "batch": (["m.onnx", "x.png", "--output", "out"], PIPELINE + ("--threads", "--progress", "--uncertain-band")),
    "client": (["x.png"], ("--threshold", "--batch-size", "--progress", "--model-name", "--uncertain-band")),
    "evaluate": (["ckpt.pt", "--data", "d"], PIPELINE + ("--max-model-pixels", "--workers", "--threads")),
    "bench": ([], ("--threads",)),
    "app": (["--model", "m.onnx"], PIPELINE + ("--max-model-pixels", "--workers", "--decode", "--threads",
                                               "--uncertain-band")),
    "calibrate": (["m.onnx", "--real", "r", "--target-fpr", "0.05", "-o", "o.onnx"],
                  ("--batch-size", "--max-pixels", "--workers", "--decode", "--threads", "--progress",
                   "--uncertain-band")),
}
CASES = [(command, flag) for command, (_, flags) in COMMANDS.items() for flag in flags]


def lfm(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lfm.runtime.cli", *argv], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def lfm_in_process(argv: list[str]) -> int:
    """`lfm ARGV` run here: its exit status (argparse's refusal is a SystemExit)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def _needs(command: str) -> None:
    if command in ("serve", "client"):
        pytest.importorskip("tritonclient", reason="the [serve] extra")
    if command == "evaluate":
        pytest.importorskip("torch", reason="the [train] extra")


@pytest.mark.parametrize("command, flag", CASES, ids=[f"{c} {f}" for c, f in CASES])
def test_the_same_bad_value_is_the_same_one_line_refusal_in_every_command(command, flag, capsys):
    _needs(command)
    required, _ = COMMANDS[command]
    value, refusal = BAD_VALUES[flag]
    status = lfm_in_process([command, *required, f"{flag}={value}"])  # in-process: parsing is all that may run
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1, err  # one line: no usage screen, no traceback
    assert err.startswith(f"lfm {command}: error: {refusal}"), err
    assert err.rstrip().endswith(f"(see lfm {command} --help)"), err


def test_a_command_that_runs_refuses_before_starting_anything(tmp_path):
    """As users meet it: a real `lfm serve` with a bad value exits 2 at once, one line, and no
    Triton, no Ray, no model (m.onnx does not even exist)."""
    pytest.importorskip("pytriton", reason="the [serve] extra")
    for command, argv in (("serve", ["--model", "m.onnx", "--size", "40"]),
                          ("batch", ["m.onnx", "x.png", "-o", str(tmp_path / "out"), "--size", "40"])):
        r = lfm(command, *argv)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "argument --size: must be at least 48, got 40" in r.stderr
        assert not (tmp_path / "out").exists()


def test_a_backend_option_the_backend_cannot_use_is_refused_while_parsing(capsys):
    for command in ("infer", "serve"):
        _needs(command)
        status = lfm_in_process([command, "--engine", "e.plan", "--device", "cuda", *(["x.png"] if command == "infer" else [])])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1, err
        assert "device 'cuda' (--device) applies to a PyTorch checkpoint only" in err


@pytest.mark.parametrize("command, old, new", [("infer", ["--precision", "bf16"], "--openvino-precision"),
                                               ("serve", ["--precision", "f32"], "--openvino-precision"),
                                               ("client", ["--model", "lfm"], "--model-name")])
def test_a_renamed_flag_is_refused_naming_its_replacement(command, old, new, capsys):
    _needs(command)
    required = {"infer": ["--model", "m.onnx", "x.png"], "serve": ["--model", "m.onnx"], "client": ["x.png"]}[command]
    assert lfm_in_process([command, *required, *old]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old[0]} is now {new}" in err, err


def test_pipeline_options_refuse_in_code_what_the_command_line_refuses():
    """The Detector's options object runs the same checks, with the field's name."""
    for field, value, words in [("threshold", 1.5, "must be a score in [0, 1], got 1.5"),
                                ("threshold", float("nan"), "must be a score in [0, 1], got nan"),
                                ("size", 40, "must be at least 48, got 40"), ("batch_size", 0, "must be at least 1"),
                                ("workers", 2.5, "expected a whole number"), ("decode", "fast", "must be one of"),
                                ("max_pixels", True, "expected a whole number"), ("policy", "stretch", "must be one of")]:
        with pytest.raises(ValueError) as e:
            PipelineOptions(**{field: value})
        assert str(e.value) == f"{field}: {words}" or str(e.value).startswith(f"{field}: {words}"), e.value
    options = PipelineOptions(threshold=0.7, policy="tiles", size=64)
    assert (options.threshold, options.policy, options.size, options.decode) == (0.7, "tiles", 64, "threads")
    with pytest.raises(Exception):
        options.size = 96  # frozen: a Detector's options cannot change under it
    assert options.replace(size=96).size == 96 and options.size == 64


def test_pipeline_args_give_the_detector_exactly_what_was_typed():
    p = cli.ArgumentParser(prog="t")
    group = PipelineArgs()
    group.add_to(p)
    args = parse_and_check(p, ["--threshold", "0.25", "--policy", "center-crop", "--size", "128", "--decode",
                               "processes", "--workers", "3", "--batch-size", "4", "--max-tiles", "5"], group)
    assert group.options(args) == PipelineOptions(threshold=0.25, policy="center-crop", size=128, decode="processes",
                                                  workers=3, batch_size=4, max_tiles=5)
    assert group.options(p.parse_args([])) == PipelineOptions()  # the flags' defaults are the object's
    assert set(DECODE_MODES) == set(next(a for a in p._actions if a.dest == "decode").choices)


def test_model_args_give_make_runner_its_arguments():
    p = cli.ArgumentParser(prog="t")
    group = ModelArgs()
    group.add_to(p)
    args = parse_and_check(p, ["--model", "m.onnx", "--backend", "openvino", "--threads", "2",
                               "--openvino-precision", "f32"], group)
    assert group.runner_arguments(args) == dict(source="m.onnx", backend="openvino", device="auto", providers=None,
                                                threads=2, cuda_graphs=False, kernels=False, precision="f32")


def test_a_group_refuses_an_option_it_does_not_have():
    with pytest.raises(ValueError, match="no options"):
        PipelineArgs(only=("thresold",))
    with pytest.raises(ValueError, match="no options"):
        OutputArgs(defaults={"colour": "red"})


def test_every_shared_flag_is_declared_once_in_the_runtime():
    """The targets of issue 25: a shared scoring flag appears in one add_argument call in runtime/
    (options.py's tables), not once per command."""
    import re

    shared = ["--threshold", "--size", "--max-pixels", "--policy", "--batch-size", "--threads", "--tile-reduce",
              "--max-tiles", "--workers", "--decode", "--max-model-pixels", "--progress", "--format", "--output"]
    text = {p.name: p.read_text() for p in (ROOT / "runtime").rglob("*.py")}
    for flag in shared:
        declared = {name: len(re.findall(r"add_argument\(\s*['\"]" + flag + r"['\"]", src)) for name, src in text.items()}
        declared = {name: n for name, n in declared.items() if n}
        assert set(declared) <= {"options.py"} and sum(declared.values()) <= 1, f"{flag} declared in {declared}"
    for name in ("host", "http_port", "instances", "max_batch_size", "queue_timeout_ms", "health_interval"):
        assert name in ServerArgs.FLAGS  # the server's flags: one table too
