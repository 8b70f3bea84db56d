"""What every LFM command shares: ``--version``, help that shows defaults, path lists, a clean
stop on Ctrl-C or a closed pipe, one line naming the extra to install, progress on a terminal,
and the one ``lfm`` command with subcommands. Standard library only: importing this costs nothing.

    lfm infer --model lfm.onnx photos/          # = python runtime/infer.py ...
    lfm export ckpt.pt -o lfm.onnx              # = python export/to_onnx.py ...
    lfm --help                                  # the subcommands
"""
from __future__ import annotations

import argparse
import errno
import importlib
import math
import os
import signal
import sys
import time
from typing import Callable, Sequence

DIST_NAME = "lfm-deploy"
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
TERMINATED = 128 + signal.SIGTERM  # 143: what a shell reports for a process killed by SIGTERM
BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: what a shell reports for a process killed by SIGPIPE


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, systemd and Kubernetes send), raised in the main thread as Ctrl-C
    raises KeyboardInterrupt, so that every clean-up and every "keep what is complete" that runs
    on Ctrl-C runs on it too. ``run`` installs it; the exit status is 143."""


def raise_terminated(signum=None, frame=None):
    raise Terminated


def stop_status(stop: KeyboardInterrupt) -> int:
    """The exit status of a run stopped by Ctrl-C (130) or SIGTERM (143)."""
    return TERMINATED if isinstance(stop, Terminated) else INTERRUPTED


def stop_word(stop: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
        try:
            return dist_version(DIST_NAME)
        except PackageNotFoundError:
            return "unknown (not installed)"
    except ImportError:  # pragma: no cover
        return "unknown"


# -- argument parsing -------------------------------------------------------------------------------

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout (epilog) and appends every option's default to its
    help, unless the help already names it (options whose None stands for something, e.g. "the
    model's", say so themselves): "(default: X)", "(default: off)" for a switch."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "(default" in text or action.default in (None, argparse.SUPPRESS):
            return text
        if action.nargs == 0 and action.default is False:  # a store_true switch
            return f"{text} (default: off)".strip()
        return f"{text} (default: %(default)s)".strip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with ``--version``, defaults in ``--help``, the program's name as typed
    (``lfm-infer``, ``lfm infer`` or ``infer.py``) and a refusal in one line (the usage is one
    ``--help`` away; a screen of it hides the line that matters)."""

    def __init__(self, *args, prog: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, prog=prog or program_name(), **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s ({DIST_NAME} {version()})",
                          help="print the version and exit")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def program_name() -> str:
    return os.path.basename(sys.argv[0] or "lfm")


# -- option values: one check per kind, the same refusal in every command ---------------------------

def whole_number(low: int, high: int | None = None) -> Callable[[object], int]:
    """A check: an int in [low, high] (no upper bound for None), else ValueError in one line."""
    def check(value) -> int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"expected a whole number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            expected = f"at least {low}" if high is None else f"from {low} to {high}"
            raise ValueError(f"must be {expected}, got {value}")
        return value
    return check


def number(low: float = 0.0, high: float = math.inf, what: str = "a number") -> Callable[[object], float]:
    """A check: a finite float in [low, high] (nan and inf refused), else ValueError in one line."""
    def check(value) -> float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {what}, got {value!r}") from None
        if not low <= value <= high or math.isnan(value) or math.isinf(value):
            bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise ValueError(f"must be {what} {bounds}, got {value:g}")
        return value
    return check


def one_of(choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    return check


def argtype(check: Callable[[object], object], name: str = "value") -> Callable[[str], object]:
    """An argparse ``type`` from a check: its ValueError becomes argparse's one-line refusal
    ("argument --size: must be at least 48, got 3")."""
    def parse(text: str):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name
    return parse


def positive_int(minimum: int = 1, high: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number >= minimum (and <= high)."""
    return argtype(whole_number(minimum, high), "whole number")


unit_interval = argtype(number(0.0, 1.0, "a score"), "score")  # thresholds on the sigmoid score
seconds = argtype(number(0.0, math.inf, "a number of seconds"), "seconds")


def add_path_arguments(command_parser: argparse.ArgumentParser, dest: str = "paths", metavar: str = "PATH",
                       sources: str = "image files, directories, glob patterns") -> None:
    """The inputs of every command that scores files: the positional paths (``sources``,
    ``@LIST`` or ``-``; see ``read_path_arguments``) and ``-0`` / ``--null`` for their lists."""
    command_parser.add_argument(dest, nargs="+", metavar=metavar, help=f"{sources}, @LIST or -")
    negative_number_options = list(command_parser._has_negative_number_optionals)
    command_parser.add_argument("-0", "--null", action="store_true",
                                help="the path lists of - and @LIST are separated by NUL bytes, as `find -print0` "
                                     "writes them: every name exact, newlines included")
    # "-0" looks like a number: argparse would from now on take every negative value (--decode-cpus -1)
    # for an option and refuse it as a missing argument, not with the option's own message
    command_parser._has_negative_number_optionals[:] = negative_number_options


def read_path_arguments(args: Sequence[str], stdin=None, null: bool = False) -> tuple[list[str], dict[str, str]]:
    """Expand ``-`` (paths from standard input) and ``@LIST`` (paths from the file LIST) into
    paths, in place: one per line (blank lines and lines starting with # are skipped), or with
    ``null`` NUL-separated (``find -print0``) and taken exactly (see ``path_list_entries``). A
    list that cannot be read comes back in the errors dict under its own argument, so it keeps
    its place as one error record. An existing file whose name starts with @ is a path, not a
    list."""
    paths: list[str] = []
    errors: dict[str, str] = {}
    for arg in args:
        if arg == "-":
            stream = stdin or sys.stdin
            raw = getattr(stream, "buffer", None) if null else None  # bytes: no newline or encoding rewrites
            paths += path_list_entries(raw.read().decode("utf-8", "surrogateescape") if raw else stream.read(), null)
        elif arg.startswith("@") and len(arg) > 1 and not os.path.exists(arg):
            try:  # newline="" for NUL-separated names: a \r in a name stays as it is
                with open(arg[1:], encoding="utf-8", errors="surrogateescape", newline="" if null else None) as f:
                    paths += path_list_entries(f.read(), null)
            except OSError as e:
                errors[arg] = f"cannot read the path list {arg[1:]}: {describe_os_error(e)}"
                paths.append(arg)
        else:
            paths.append(arg)
    return paths, errors


def path_list_entries(text: str, null: bool = False) -> list[str]:
    """The paths a list holds: with ``null`` the NUL-separated names exactly as they are (empty
    ones skipped); else one per line, blank lines and lines starting with # skipped."""
    if null:
        return [name for name in text.split("\0") if name]
    return [line.rstrip("\r") for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#")]


def describe_os_error(e: OSError) -> str:
    """An OSError as words a user acts on, without Python's [Errno N] prefix."""
    hints = {errno.ENOENT: "no such file or folder", errno.EACCES: "permission denied (check the file's owner and mode)",
             errno.EISDIR: "is a folder, not a file", errno.ENOTDIR: "a part of the path is not a folder",
             errno.ENOSPC: "no space left on the device", errno.EEXIST: "already exists",
             errno.EROFS: "the file system is read-only"}
    return hints.get(e.errno, e.strerror or str(e))


# -- running a command ------------------------------------------------------------------------------

# The extra that provides each optional top-level module, for "pip install 'lfm-deploy[EXTRA]'".
EXTRA_FOR_MODULE = {"torch": "train", "tqdm": "train", "onnx": "export", "onnxslim": "export", "polygraphy": "export",
                    "onnxruntime_extensions": "plugins", "openvino": "openvino", "matplotlib": "viz",
                    "sklearn": "viz", "pytriton": "serve", "tritonclient": "serve", "tensorrt": "tensorrt",
                    "cuda": "tensorrt", "triton": "kernels", "pytest": "dev", "hypothesis": "dev", "gradio": "app"}


def missing_extra_message(e: ModuleNotFoundError, prog: str) -> str | None:
    """One line naming the extra that provides the missing module; None if it is not one of ours."""
    top = (e.name or "").split(".")[0]
    extra = EXTRA_FOR_MODULE.get(top)
    if extra is None:
        return None
    hint = f"pip install '{DIST_NAME}[{extra}]'"
    if extra == "train":
        hint = f"pip install torch==2.13.0 '{DIST_NAME}[train]' (the CPU wheel; see the README for GPUs)"
    return f"error: {prog} needs the Python package {top!r} (the [{extra}] extra), which is not installed: {hint}"


class CommandError(Exception):
    """A failure the user can act on (a bad argument, file or model): ``run`` prints
    ``error: MESSAGE`` and exits 2. Each command's own errors subclass it (ExportError,
    BuildError, QuantizeError); their messages are one line by contract."""


DEBUG_VARIABLE = "LFM_DEBUG"  # LFM_DEBUG=1: an unexpected error shows its traceback


def wants_traceback(argv: Sequence[str] | None) -> bool:
    """The one rule for tracebacks: LFM_DEBUG=1 in the environment, or --debug on the command
    line (the commands that take it: export, build)."""
    return os.environ.get(DEBUG_VARIABLE) == "1" or "--debug" in (sys.argv[1:] if argv is None else argv)


def failure_line(error: BaseException, prog: str) -> str:
    """An unexpected error as one line: what failed, the error's type and the first line of its text."""
    from .files import first_line

    text = first_line(error, empty="")
    what = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return f"error: {prog} failed: {what} (set {DEBUG_VARIABLE}=1 for the traceback)"


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run a command's main() the way users expect of a command-line tool: Ctrl-C stops it
    with one line and exit 130, SIGTERM likewise with 143 (``Terminated``; the command's own
    handler, if any, has already said what was done); a closed pipe (``| head``) ends it quietly
    with 141; a missing optional dependency is one line naming the extra. The output a command
    wrote before is left complete, and its temp files are removed. Errors, the one handler of
    every command: a ``CommandError`` is its message in one line, exit 2; any other exception
    one line naming it (``failure_line``), exit 1, or its traceback when ``wants_traceback``.
    An ImportError that is not a stop keeps its traceback: a broken installation, shown whole."""
    prog = prog or program_name()
    try:
        previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: signals are not ours to handle
        previous_sigterm = None
    try:
        return main(argv)
    except KeyboardInterrupt as stop:
        print(f"{prog}: {stop_word(stop)}", file=sys.stderr)
        return stop_status(stop)
    except BrokenPipeError:
        return quiet_broken_pipe()
    except ModuleNotFoundError as e:
        stop = stop_inside(e)
        message = f"{prog}: {stop_word(stop)}" if stop else missing_extra_message(e, prog)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return stop_status(stop) if stop else 2
    except Exception as e:
        stop = stop_inside(e)
        if stop is not None:
            print(f"{prog}: {stop_word(stop)}", file=sys.stderr)
            return stop_status(stop)
        if isinstance(e, CommandError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, ImportError) or wants_traceback(argv):
            raise
        print(failure_line(e, prog), file=sys.stderr)
        return 1
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def stop_inside(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) a library turned into an error of its own, or None: onnxruntime's
    import, interrupted, raises ImportError("initialization failed") from the KeyboardInterrupt."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def quiet_broken_pipe() -> int:
    """The reader went away: point stdout at /dev/null so the interpreter's final flush does not
    raise again (Python's documented recipe), and exit as a SIGPIPE'd process would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return BROKEN_PIPE


class Progress:
    """One self-overwriting line on stderr while a long run works ("scored 120/600, 3 failed,
    21 img/s, about 22 s left"), only when stderr is a terminal: quiet when piped or logged.
    Redrawn at most a few times a second; ``close`` clears it before the summary line."""

    def __init__(self, total: int | None, what: str = "scored", stream=None, enabled: bool | None = None,
                 interval_s: float = 0.25):
        self.stream = stream or sys.stderr
        self.total, self.what, self.interval_s = total, what, interval_s
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.done = self.failed = 0
        self._t0 = self._last = time.perf_counter()
        self._width = 0

    def update(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += not ok
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval_s or self.done == self.total):
            self._last = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self._t0, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total else ""
        text = f"{self.what} {self.done}{of}, {self.failed} failed, {rate:.1f}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", about {(self.total - self.done) / rate:.0f} s left"
        return text

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- writing records --------------------------------------------------------------------------------

class RecordRun:
    """What ``write_records`` did: records written, how many failed, how it ended."""

    def __init__(self):
        self.written = self.failed = 0
        self.interrupted = self.broken_pipe = False
        self.stop: KeyboardInterrupt | None = None  # what interrupted it: Ctrl-C, or SIGTERM (Terminated)
        self.seconds = 0.0


def write_records(records, total: int, output: str | None, fmt: str, progress: str = "auto") -> RecordRun:
    """Stream records to ``output`` (a file replaced when the run ends, see ``ReplacedAtEnd``) or
    standard output, with a progress line on a terminal. Ctrl-C or SIGTERM ends the run early:
    the output keeps the complete records written so far (``interrupted``, ``stop``). A closed
    standard output (``| head``) ends it quietly (``broken_pipe``). Any other error (a full
    disk) leaves an earlier output file as it was, removes the temp file and propagates."""
    from .files import ReplacedAtEnd
    from .records import RecordWriter

    run_ = RecordRun()
    sink = ReplacedAtEnd(output) if output else None
    bar = Progress(total, enabled={"auto": None, "on": True, "off": False}[progress])
    # A stop while a record is being written and counted is held until both are done, so the
    # count on the last stderr line is exactly the number of records in the output.
    state = {"writing": False, "pending": None}
    stops = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}

    def on_stop(signum, frame):
        if state["writing"]:
            state["pending"] = stops[signum]
        else:
            raise stops[signum]

    try:
        previous = {signum: signal.signal(signum, on_stop) for signum in stops}
    except ValueError:  # not the main thread: the handlers stay as they are
        previous = {}
    t0 = time.perf_counter()
    try:
        writer = RecordWriter(sink.stream if sink else sys.stdout, fmt)
        for record in records:
            state["writing"] = True
            writer.write(record)
            run_.written += 1
            run_.failed += not record.ok
            state["writing"] = False
            if state["pending"]:
                raise state["pending"]
            bar.update(record.ok)
    except KeyboardInterrupt as stop:  # Terminated too
        for signum in stops:  # a second signal must not break the clean-up
            signal.signal(signum, signal.SIG_IGN)
        run_.interrupted, run_.stop = True, stop
    except BrokenPipeError:
        run_.broken_pipe = True
    except BaseException:
        if sink:
            sink.discard()  # an earlier output file stays as it was; no temp file is left
        raise
    finally:
        bar.close()
        run_.seconds = time.perf_counter() - t0
        if not run_.interrupted:
            for signum, handler in previous.items():
                if handler is not None:
                    signal.signal(signum, handler)
    if sink:
        sink.commit()
    return run_


def summary_exit(run_: RecordRun, total: int, output: str | None, describe: str) -> int:
    """The last line on stderr and the exit status of a scoring run (infer.py, client.py)."""
    if run_.broken_pipe:
        return quiet_broken_pipe()
    where = f" -> {output}" if output else ""
    if run_.interrupted:
        print(f"{stop_word(run_.stop)}: {run_.written} of {total} inputs done ({run_.failed} failed) in "
              f"{run_.seconds:.2f} s{where}; the output holds their complete records", file=sys.stderr)
        return stop_status(run_.stop)
    print(f"scored {run_.written - run_.failed} of {run_.written} inputs in {run_.seconds:.2f} s{where}; "
          f"{run_.failed} failed; {describe}", file=sys.stderr)
    return 1 if run_.failed else 0


# -- the `lfm` command ------------------------------------------------------------------------------

# subcommand -> (module, what it does). Modules are imported only when their subcommand runs.
SUBCOMMANDS = {
    "train": ("lfm.train.train", "train LFM from images (needs [train])"),
    "evaluate": ("lfm.train.evaluate", "accuracy, AP, AUC of any model on labelled folders, clean and degraded ([train])"),
    "export": ("lfm.export.to_onnx", "checkpoint -> verified ONNX, fp32 / fp16 / INT8 (needs [train,export])"),
    "build": ("lfm.export.to_trt", "ONNX -> TensorRT engine (needs an NVIDIA GPU and [tensorrt])"),
    "triton-repo": ("lfm.export.to_triton", "ONNX -> a Triton Inference Server model repository"),
    "sensitivity": ("lfm.export.sensitivity", "per-layer INT8 sensitivity of a checkpoint (needs [train,export])"),
    "infer": ("lfm.runtime.infer", "score image files: one record per input"),
    "serve": ("lfm.runtime.serve", "serve LFM with Triton Inference Server (needs [serve])"),
    "client": ("lfm.runtime.client", "score files through a Triton server (needs [serve])"),
    "inspect": ("lfm.runtime.inspect_model", "what a model, engine or checkpoint is: spec, precision, provenance"),
    "visualize": ("lfm.train.visualize", "Top-K maps, Grad-CAM and t-SNE figures (needs [train,viz])"),
    "synthetic": ("lfm.train.make_synthetic", "write a small labelled synthetic image set (needs [train])"),
    "bench": ("lfm.benchmarks.bench", "latency, throughput and fidelity of every backend (from a source checkout)"),
    "batch": ("lfm.runtime.batch", "score a corpus on Ray Data: Parquet shards, resumable, exactly once (needs [cluster])"),
    "calibrate": ("lfm.export.calibrate", "fit the threshold to your own real images: a target false-positive rate, "
                                          "met at a confidence bound"),
    "app": ("lfm.runtime.app", "a web page for people who review images: verdict, evidence, stability (needs [app])"),
}


def run_module(module_name: str, argv: list[str] | None, prog: str) -> int:
    """Import a command's module and run its main() under ``run``; a missing extra at import
    time is one line too."""
    sys.argv[0] = prog  # the usage line names the command as typed ("lfm infer", "lfm-infer")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        message = missing_extra_message(e, prog)
        if message is None and e.name in (module_name, "lfm.benchmarks"):
            message = f"error: {prog} is not available in this installation ({module_name} is missing)"
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    return run(module.main, argv, prog)


def _entry(subcommand: str) -> Callable[[], int]:
    def entry() -> int:
        name = os.path.basename(sys.argv[0] or f"lfm-{subcommand}")
        return run_module(SUBCOMMANDS[subcommand][0], sys.argv[1:], name)
    entry.__name__ = f"lfm_{subcommand.replace('-', '_')}"
    return entry


# Console scripts (pyproject.toml): lfm-infer, lfm-train, ... each through run_module, so the lean
# install says which extra a command needs instead of dying on an import.
infer, train, evaluate, export, build, serve, client, inspect, visualize, synthetic, bench, triton_repo, sensitivity = (
    _entry(name) for name in ("infer", "train", "evaluate", "export", "build", "serve", "client", "inspect",
                              "visualize", "synthetic", "bench", "triton-repo", "sensitivity"))
batch = _entry("batch")
calibrate = _entry("calibrate")
app = _entry("app")


def main(argv: list[str] | None = None) -> int:
    """``lfm SUBCOMMAND [ARGS...]``."""
    return run(_dispatch, sys.argv[1:] if argv is None else list(argv), "lfm")


def _dispatch(argv: list[str]) -> int:
    usage = "lfm SUBCOMMAND [ARGS...]   (lfm SUBCOMMAND --help for its options)"
    listing = "\n".join(f"  {name:<12} {what}" for name, (_, what) in SUBCOMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {usage}\n\nLFM deepfake detector: train, export, build, serve and score.\n\n"
              f"subcommands:\n{listing}\n\n  --version    print the version and exit")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"lfm ({DIST_NAME} {version()})")
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"error: lfm: unknown subcommand {name!r}; one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return run_module(SUBCOMMANDS[name][0], argv[1:], f"lfm {name}")


if __name__ == "__main__":
    # `python -m lfm.runtime.cli`: this file runs as __main__, a second copy of the module whose
    # CommandError is not the one commands raise; dispatch from the package's copy
    from lfm.runtime.cli import main as package_main

    sys.exit(package_main())
