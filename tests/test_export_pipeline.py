"""The export as a declared pipeline (export/pipeline.py), its layers, and the one error handler
of every command (runtime/cli.py's run)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lfm.runtime import cli
from test_structure import import_graph

ROOT = Path(__file__).resolve().parents[1]
TO_ONNX = [sys.executable, str(ROOT / "export" / "to_onnx.py")]

# What each format accepts beyond the common options, as docs/export.md states it (written out
# here, not read from the table it checks).
REDUCED = ["--stress-count", "4", "--force"]
INT8 = ["--calib", "DIR", "--calib-count", "16", "--int8-profile", "tensorrt", "--int8-layers", "all",
        "--report-count", "8"]
ACCEPTS = {"fp32": [], "plugins": [], "fp16": REDUCED, "int8": INT8 + REDUCED}
CHOSEN_BY = {"fp32": [], "plugins": ["--variant", "plugins"], "fp16": ["--fp16"], "int8": ["--int8", "--calib-synthetic"]}
OPTIONS = {"--stress-count": ["8"], "--force": [], "--calib-count": ["16"], "--int8-profile": ["tensorrt"],
           "--int8-layers": ["all"], "--report-count": ["8"], "--calib": ["DIR"], "--calib-synthetic": []}


def stray_cases():
    return [(fmt, option) for fmt in CHOSEN_BY for option in OPTIONS if option not in ACCEPTS[fmt]
            and not (fmt == "int8" and option == "--calib-synthetic")]


# ----------------------------------------------------------------------------------------------
# The format table


def test_a_flag_the_chosen_format_does_not_take_is_refused_in_one_line_by_the_real_command(upstream_ckpt, tmp_path):
    """It was silently ignored: `--force` on an fp32 export exported, exit 0."""
    out = tmp_path / "m.onnx"
    for extra, says in ((["--force"], "--force does not apply to the fp32 export"),
                        (["--fp16", "--int8-profile", "tensorrt"], "--int8-profile does not apply to the fp16 export"),
                        (["--variant", "plugins", "--stress-count", "8"], "--stress-count does not apply to the plugins")):
        r = subprocess.run(TO_ONNX + [str(upstream_ckpt), "-o", str(out), *extra], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.startswith(f"error: {says}") and r.stderr.count("\n") == 1, r.stderr
        assert "verification" not in r.stdout  # refused before any work
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt, option", stray_cases())
def test_every_flag_outside_a_format_is_refused_before_anything_loads(fmt, option, tmp_path, capsys):
    """Through cli.run, as `lfm export` runs it; the checkpoint does not even exist: nothing is
    loaded before the refusal."""
    from lfm.export import to_onnx

    argv = [str(tmp_path / "none.pt"), "-o", str(tmp_path / "m.onnx"), *CHOSEN_BY[fmt], option, *OPTIONS[option]]
    assert cli.run(to_onnx.main, argv, prog="lfm export") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option} does not apply to the {fmt} export") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_int8_without_images_and_plugins_below_fp32_are_refused_by_the_table(tmp_path, capsys):
    from lfm.export import to_onnx

    out = ["-o", str(tmp_path / "m.onnx")]
    assert cli.run(to_onnx.main, ["none.pt", *out, "--int8"]) == 2
    assert capsys.readouterr().err == "error: --int8 needs --calib or --calib-synthetic\n"
    assert cli.run(to_onnx.main, ["none.pt", *out, "--variant", "plugins", "--fp16"]) == 2
    assert "--variant plugins is exported in fp32 only (not with --fp16)" in capsys.readouterr().err


def test_the_flags_a_format_takes_pass_the_table():
    from lfm.export import pipeline, to_onnx

    for fmt, accepted in ACCEPTS.items():
        chosen_by = ["--int8"] if fmt == "int8" else CHOSEN_BY[fmt]  # its --calib DIR is among those accepted
        args = to_onnx.parse_args(["none.pt", *chosen_by, *accepted])
        assert pipeline.choose_format(args, args.given).name == fmt


def test_the_report_times_each_stage(upstream_ckpt, tmp_path):
    import json

    out = tmp_path / "m.onnx"
    r = subprocess.run(TO_ONNX + [str(upstream_ckpt), "-o", str(out), "--variant", "plugins"], capture_output=True,
                       text=True, timeout=600)
    if r.returncode == 2 and "onnxruntime-extensions" in r.stderr:
        pytest.skip("the plugin graph's check needs the [plugins] extra")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "m.onnx.report.json").read_text())
    assert list(report["stage_seconds"]) == ["check_output", "check_custom_ops", "check_overwrite", "check_opset",
                                             "load_checkpoint", "export_graph", "verify_fp32", "compare_with_standard"]
    assert report["passed"] and report["standard_agreement"]["passed"]


# ----------------------------------------------------------------------------------------------
# The one error handler of every command


def run_command(body: str, *argv: str, env_debug: bool = False) -> subprocess.CompletedProcess:
    """A real process whose main() is ``body``, run through cli.run as every command is."""
    code = textwrap.dedent(f"""
        import sys
        from lfm.runtime import cli
        class ExportError(cli.CommandError): pass
        def main(argv):
            {body}
        sys.exit(cli.run(main, prog="lfm-x"))
        """)
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_VARIABLE}
    if env_debug:
        env[cli.DEBUG_VARIABLE] = "1"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)


def test_an_unexpected_error_is_one_line_and_exit_1_unless_the_traceback_is_asked_for():
    """cli.run re-raised every other exception: a traceback wall; to_onnx and to_trt each had a
    copy of the handler that now lives in cli.run."""
    boom = 'raise RuntimeError("disk on fire\\nsecond line")'
    r = run_command(boom)
    assert r.returncode == 1
    assert r.stderr == "error: lfm-x failed: RuntimeError: disk on fire (set LFM_DEBUG=1 for the traceback)\n"
    for traced in (run_command(boom, env_debug=True), run_command(boom, "--debug")):
        assert traced.returncode == 1
        assert traced.stderr.startswith("Traceback") and "RuntimeError: disk on fire" in traced.stderr


def test_a_command_error_is_its_message_and_exit_2_even_when_debugging():
    for r in (run_command('raise ExportError("m.onnx: is the model")'),
              run_command('raise ExportError("m.onnx: is the model")', "--debug")):
        assert (r.returncode, r.stderr) == (2, "error: m.onnx: is the model\n")


def test_the_export_s_unexpected_errors_go_through_the_one_handler(upstream_ckpt, tmp_path, monkeypatch, capsys):
    from lfm.export import to_onnx, verify

    def broken(*args, **kwargs):
        raise ValueError("polygraphy exploded")

    monkeypatch.setattr(verify, "verify", broken)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    argv = [str(upstream_ckpt), "-o", str(tmp_path / "m.onnx")]
    assert cli.run(to_onnx.main, argv, prog="lfm export") == 1
    assert capsys.readouterr().err == ("error: lfm export failed: ValueError: polygraphy exploded "
                                       "(set LFM_DEBUG=1 for the traceback)\n")
    with pytest.raises(ValueError, match="polygraphy exploded"):  # --debug: the traceback
        cli.run(to_onnx.main, argv + ["--debug"], prog="lfm export")
    assert list(tmp_path.iterdir()) == []  # the temp folder went with the error


def test_the_export_errors_are_command_errors():
    from lfm.export.onnx_files import ModelFileError
    from lfm.export.pipeline import ExportError
    from lfm.export.quantize import QuantizeError
    from lfm.export.trt_build import BuildError

    assert all(issubclass(e, cli.CommandError) for e in (ExportError, BuildError, QuantizeError, ModelFileError))


# ----------------------------------------------------------------------------------------------
# Layers and walkers (function length: tests/test_structure.py)


# Each export module's layer: a module imports only modules of lower layers.
EXPORT_LAYERS = {"onnx_files": 0, "paths": 0, "threshold_choice": 0, "onnx_export": 1, "quantize": 1, "fidelity": 1,
                 "trt_build": 1, "verify": 2, "sensitivity": 3, "pipeline": 3, "to_onnx": 4, "to_trt": 4, "to_triton": 4,
                 "calibrate": 4}


def test_the_export_s_imports_run_one_way():
    """quantize imported onnx_export (torch) for its file helpers, fidelity imported quantize for
    run_logits: calls back across the stages."""
    graph = import_graph()
    wrong = []
    for name, layer in EXPORT_LAYERS.items():
        for target in sorted(graph[f"lfm.export.{name}"]):
            other = target.removeprefix("lfm.export.")
            if target.startswith("lfm.export.") and EXPORT_LAYERS[other] >= layer:
                wrong.append(f"{name} (layer {layer}) imports {other} (layer {EXPORT_LAYERS[other]})")
    assert not wrong, wrong
    assert set(EXPORT_LAYERS) == {p.stem for p in (ROOT / "export").glob("*.py")} - {"__init__"}


def test_export_walks_folders_through_the_one_walker(tmp_path):
    """quantize and fidelity had walkers of their own; the listing order is the runtime's."""
    from lfm.export.quantize import calibration_images

    calls = [n for path in (ROOT / "export").glob("*.py") for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, ast.Attribute) and n.attr == "walk" and getattr(n.value, "id", "") == "os"]
    assert not calls
    for rel in ("b.png", "a.jpg", "notes.txt", ".hidden.png", "sub/z.png", "sub/a.webp", ".cache/x.png", "a/y.bmp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    expected = ["a.jpg", "b.png", "a/y.bmp", "sub/a.webp", "sub/z.png"]  # a folder's files first, each sorted
    assert calibration_images(tmp_path, n=0) == [str(tmp_path / rel) for rel in expected]

