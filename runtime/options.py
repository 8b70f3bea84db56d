"""Every command's options, each declared once and composed, in the manner of Polygraphy's
``tools/args``: a group of arguments adds its flags to a parser and turns the parsed values into
the object the code takes.

    ModelArgs      --model | --checkpoint | --engine and the backend's options  -> make_runner(**kwargs)
    PipelineArgs   --threshold --policy --size --tile-reduce --max-tiles --max-pixels
                   --max-model-pixels --workers --decode --batch-size
                   --uncertain-band                                             -> PipelineOptions
    OutputArgs     --output --format --progress

    p = ArgumentParser(...)
    model, pipeline, output = ModelArgs(), PipelineArgs(), OutputArgs()
    for group in (model, pipeline, output):
        group.add_to(p)
    args = parse_and_check(p, argv, model, pipeline, output)
    Detector(make_runner(**model.runner_arguments(args)), pipeline.options(args))

A command takes the flags of a group that apply to it (``only=``) and may change a default
(``defaults=``); the flag's name, type, range and refusal are the same in every command. Every
check here runs while the arguments are parsed: a bad value is one line and exit 2 before any
model loads, server starts or Ray connects. Standard library only, plus the runtime's own
lower layers (spec, preprocess constants, the backend registry): importing this costs nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Callable

from .backends.base import (OPENVINO_PRECISIONS, BackendError, backend_for, backends_for, check_runner_options, provider_list,
                            source_from_flags)
from . import serve_defaults
from .cli import argtype, number, one_of, positive_int, seconds, whole_number
from .flags import DEFAULT_UNCERTAIN_BAND
from .preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MAX_TILES
from .spec import POLICIES, min_input_size

# How files (paths or encoded bytes) are decoded: "threads", "processes" (decode_pool), or "gpu":
# JPEGs by nvJPEG in batches (gpu_decode; other files on the CPU path, per file). Arrays and PIL
# images are decoded already: only the policy applies, on the threads.
DECODE_MODES = ("threads", "processes", "gpu")
TILE_REDUCTIONS = ("max", "mean")
PROGRESS_MODES = ("auto", "on", "off")

# Pixels the model sees in one call (images x height x width). Activations take about 0.5 kB per
# input pixel in fp32 (conv1's 64 maps and their neighbours): 4.2 MP is about 2 GB. Under policy
# "none" an image is scored at its native size, so a larger image is refused (its own record)
# rather than taking the machine's memory; batches are split to stay under the bound too.
DEFAULT_MAX_MODEL_PIXELS = 2048 * 2048
MIN_SIZE = min_input_size()  # the smallest side LFM (K=16) scores: 48
MIN_PIXELS = MIN_SIZE ** 2


def usable_cpus() -> int:
    """The cores this process may run on (a container's cpuset, taskset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(decode: str = "threads") -> int:
    """Decoding workers by default: a process per usable core (the parent's own work is a few
    per cent of a core per worker); threads at most 8 (they share one GIL for everything but
    Pillow's own loops)."""
    cores = usable_cpus()
    return max(1, cores if decode == "processes" else min(8, cores))


# -- the pipeline options: how the Detector runs -----------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One pipeline option: its flag, its check, its argparse declaration."""

    check: Callable[[object], object] | None  # None: choices only
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    def checked(self, name: str, value):
        if value is None and name in OPTIONAL_FIELDS:
            return None
        try:
            return (self.check or one_of(self.choices))(value)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None


# Options whose None means "the model's own" (threshold, policy, size, uncertain_band) or "pick for this
# machine" (workers).
OPTIONAL_FIELDS = ("threshold", "policy", "size", "workers", "uncertain_band")

FIELDS: dict[str, Field] = {
    "threshold": Field(number(0.0, 1.0, "a score"), "T",
                       help="score above which an image is 'fake', in [0, 1] (default: the model's, 0.5)"),
    "policy": Field(None, choices=POLICIES,
                    help="resize (bilinear to SIZE, upstream's eval), center-crop, none (native size), or tiles "
                         "(native resolution, SIZE x SIZE tiles, one score per image) (default: the model's)"),
    "size": Field(whole_number(MIN_SIZE), "PX",
                  help=f"side for resize / center-crop / tiles, at least {MIN_SIZE} for K=16 (default: the model's, 256)"),
    "tile_reduce": Field(None, choices=TILE_REDUCTIONS,
                         help="--policy tiles: image logit = max or mean of its tiles' logits"),
    "max_tiles": Field(whole_number(1), "N",
                       help="--policy tiles: at most this many tiles per image (larger images get spread-out tiles)"),
    "max_pixels": Field(whole_number(MIN_PIXELS), "N",
                        help="refuse image files with more pixels, before decoding (decompression bombs)"),
    "max_model_pixels": Field(whole_number(MIN_PIXELS), "N",
                              help="pixels the model may see per image and per call (about 0.5 kB of memory each); "
                                   "under --policy none a larger image gets an error record"),
    "workers": Field(whole_number(1), "N",
                     help="decoding threads, or processes with --decode processes (default: the usable cores for "
                          "processes, threads at most 8)"),
    "decode": Field(None, choices=DECODE_MODES,
                    help="decode files in threads, or in worker processes into shared memory (scales with cores; "
                         "same records, same order), or gpu: JPEGs by nvJPEG (needs torch + CUDA + torchvision; "
                         "pixels not bit-identical to the CPU decoder), other files on the CPU"),
    "batch_size": Field(whole_number(1), "N", help="images per backend call"),
    "uncertain_band": Field(number(0.0, math.inf, "a logit half-width"), "LOGITS",
                            help="records whose logit lies within this many logits of the threshold's are flagged "
                                 "'uncertain' (0: never) (default: the model's own, written by a calibration, "
                                 f"else {DEFAULT_UNCERTAIN_BAND:g}, measured: docs/runtime.md#flags)"),
}


@dataclass(frozen=True)
class PipelineOptions:
    """How the Detector runs, whatever runs the model. threshold, policy and size of None take the
    model's own (its spec); uncertain_band of None the model's own or the measured default
    (``flags.model_band``); workers of None picks ``default_workers(decode)``. Every value is
    checked here, so a Detector built from code refuses what the command line refuses."""

    threshold: float | None = None
    policy: str | None = None
    size: int | None = None
    tile_reduce: str = "max"
    max_tiles: int = DEFAULT_MAX_TILES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_model_pixels: int = DEFAULT_MAX_MODEL_PIXELS
    workers: int | None = None
    decode: str = "threads"
    batch_size: int = 16
    uncertain_band: float | None = None

    def __post_init__(self):
        for name, field in FIELDS.items():
            object.__setattr__(self, name, field.checked(name, getattr(self, name)))

    def replace(self, **changes) -> "PipelineOptions":
        return dataclasses.replace(self, **changes)

    @property
    def decode_workers(self) -> int:
        return self.workers or default_workers(self.decode)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- argument groups ----------------------------------------------------------------------------------

class ArgGroup:
    """A group of flags declared once: ``add_to`` a parser, then read back with the group's own
    method. ``only`` picks the flags a command takes; ``defaults`` changes a default; ``help``
    changes a flag's help where a command means something narrower (per request, per instance)."""

    title = ""
    names: tuple[str, ...] = ()

    def __init__(self, only: tuple[str, ...] | None = None, defaults: dict | None = None, help: dict | None = None):
        unknown = set(only or ()) - set(self.names) | set(defaults or {}) - set(self.names)
        if unknown:
            raise ValueError(f"{type(self).__name__}: no options {sorted(unknown)}")
        self.taken = tuple(n for n in self.names if only is None or n in only)
        self.defaults = dict(defaults or {})
        self.help = dict(help or {})

    def add_to(self, command_parser: argparse.ArgumentParser):
        group = command_parser.add_argument_group(self.title) if self.title else command_parser
        for name in self.taken:
            self.declare(group, name)
        return group

    def declare(self, group, name: str) -> None:
        raise NotImplementedError

    def check(self, args: argparse.Namespace) -> None:
        """Checks that need more than one flag; raise ValueError with the one line."""


class PipelineArgs(ArgGroup):
    title = "pipeline"
    names = tuple(FIELDS)

    def declare(self, group, name: str) -> None:
        field, default = FIELDS[name], self.defaults.get(name, getattr(PipelineOptions, name))
        kwargs = dict(default=default, help=self.help.get(name, field.help))
        if field.choices:
            kwargs["choices"] = field.choices
        else:
            kwargs.update(type=argtype(field.check), metavar=field.metavar)
        group.add_argument(flag_name(name), **kwargs)

    def options(self, args: argparse.Namespace, **overrides) -> PipelineOptions:
        values = {name: getattr(args, name) for name in self.taken}
        return PipelineOptions(**{**self.defaults, **values, **overrides})


class ModelArgs(ArgGroup):
    """Which model (one of --model, --checkpoint, --engine) and how its backend runs: what
    ``make_runner`` takes. The backend's options are refused here, while parsing, where the
    chosen backend could not use them (the registry's own rule, ``check_runner_options``).
    ``positional=True``: the model is the positional MODEL instead (``args.model_file``), any file
    the runtime runs, its kind told by its extension as ``make_runner`` tells it."""

    title = "model"
    SOURCES = ("model", "checkpoint", "engine")
    names = SOURCES + ("backend", "providers", "threads", "device", "openvino_precision", "cuda_graphs", "kernels")
    SOURCE_HELP = {
        "model": ("ONNX", "exported ONNX model (--backend auto, the default: ONNX Runtime or OpenVINO, whichever is "
                          "the fastest faithful path for it here)"),
        "checkpoint": ("CKPT", "PyTorch checkpoint, ours or upstream's (needs the [train] extra)"),
        "engine": ("PLAN", "TensorRT engine from export/to_trt.py, with its PLAN.json sidecar (needs an NVIDIA GPU "
                           "and the [tensorrt] extra)"),
    }

    POSITIONAL_HELP = ("the model: a PyTorch checkpoint (.pt, .pth; ours or upstream's), an ONNX model (.onnx; "
                       "auto: ONNX Runtime or OpenVINO; or --backend) or a TensorRT engine (.plan, with its PLAN.json "
                       "sidecar)")

    def __init__(self, only=None, defaults=None, help=None, required: bool = True, positional: bool = False):
        super().__init__(only, defaults, help)
        self.required, self.positional = required, positional
        if positional:
            self.taken = tuple(n for n in self.taken if n not in self.SOURCES)

    def add_to(self, command_parser: argparse.ArgumentParser):
        if self.positional:
            command_parser.add_argument("model_file", metavar="MODEL", help=self.help.get("model", self.POSITIONAL_HELP))
        group = command_parser.add_argument_group(self.title)
        sources = [n for n in self.taken if n in self.SOURCES]
        if sources:
            exclusive = group.add_mutually_exclusive_group(required=self.required)
            for name in sources:
                metavar, text = self.SOURCE_HELP[name]
                exclusive.add_argument(flag_name(name), metavar=metavar, default=None, help=self.help.get(name, text))
        for name in self.taken:
            if name not in self.SOURCES:
                self.declare(group, name)
        if "openvino_precision" in self.taken:  # the old name, which to_trt uses for the engine's precision
            group.add_argument("--precision", action=Renamed, nargs="?", help=argparse.SUPPRESS,
                               replacement="--openvino-precision")
        return group

    def declare(self, group, name: str) -> None:
        default = self.defaults.get(name)
        declare = {
            "backend": lambda: group.add_argument(
                "--backend", choices=backends_for("model"), default=default,
                help="--model: auto (ONNX Runtime or OpenVINO, whichever is the fastest path whose decisions are "
                     "proven for this model on this CPU; the run's summary says which and why; docs/runtime.md), "
                     "onnxruntime, or openvino (the [openvino] extra) (default: auto)"),
            "providers": lambda: group.add_argument(
                "--providers", default=default, help="--model: comma-separated onnxruntime providers, e.g. cpu or "
                                                     "cuda,cpu (default: TensorRT, CUDA, CPU as available); under "
                                                     "auto, runs ONNX Runtime"),
            "threads": lambda: group.add_argument(
                "--threads", type=argtype(whole_number(1)), metavar="N", default=default,
                help=self.help.get("threads", "--model: the backend's intra-op threads (default: all cores)")),
            "device": lambda: group.add_argument(
                "--device", default=default or "auto", help="--checkpoint: torch device, auto | cpu | cuda[:N]"),
            "openvino_precision": lambda: group.add_argument(
                "--openvino-precision", choices=OPENVINO_PRECISIONS, default=default or "auto",
                help="--backend openvino: inference precision; auto keeps the fp32 model's decisions: f32 for "
                     "float-input and INT8 graphs, bf16 for uint8-input graphs where the CPU has bf16; under "
                     "--backend auto, anything but auto runs OpenVINO"),
            "cuda_graphs": lambda: group.add_argument(
                "--cuda-graphs", action="store_true",
                help="--engine, --checkpoint on a GPU: capture each batch shape as a CUDA graph once and replay it"),
            "kernels": lambda: group.add_argument(
                "--kernels", action="store_true",
                help="--checkpoint: run through our Triton kernels (lfm.kernels.triton_lfm, float16; the fastest GPU "
                     "path; needs a CUDA GPU and the [kernels] extra)"),
        }
        declare[name]()

    def runner_arguments(self, args: argparse.Namespace, **overrides) -> dict:
        """make_runner's keyword arguments: which model, which backend, its options."""
        named = ({backend_for(args.model_file).kind: args.model_file} if self.positional
                 else {n: getattr(args, n, None) for n in self.SOURCES})
        source, backend = source_from_flags(**named, backend=getattr(args, "backend", None))
        given = {"source": source, "backend": backend}
        for name in ("device", "providers", "threads", "cuda_graphs", "kernels"):
            if name in self.taken:
                given[name] = getattr(args, name)
        if "openvino_precision" in self.taken:
            given["precision"] = args.openvino_precision
        return {**given, **overrides}

    def check(self, args: argparse.Namespace) -> None:
        if not self.positional and not any(getattr(args, n, None) for n in self.SOURCES if n in self.taken):
            return  # no model named (a command where it is optional)
        try:
            kwargs = self.runner_arguments(args)
            kwargs["providers"] = provider_list(kwargs.get("providers"))
            check_runner_options(backend_for(kwargs.pop("source"), kwargs.pop("backend")), kwargs)
        except BackendError as e:
            raise ValueError(str(e)) from None


class OutputArgs(ArgGroup):
    """Where the results go: --output (a file, or for some commands a folder), --format, --progress."""

    title = "output"
    names = ("output", "format", "progress")

    def __init__(self, formats: tuple[str, ...] = (), only=None, defaults=None, help=None, required: bool = False,
                 metavar: str = "FILE"):
        super().__init__(only, defaults, help)
        self.formats, self.required, self.metavar = formats, required, metavar

    def declare(self, group, name: str) -> None:
        if name == "output":
            group.add_argument("--output", "-o", metavar=self.metavar, required=self.required,
                               default=self.defaults.get("output"),
                               help=self.help.get("output", "write the records here instead of standard output"))
        elif name == "format":
            group.add_argument("--format", choices=self.formats, default=self.defaults.get("format"),
                               help=self.help.get("format", "output format (default: from the --output extension, "
                                                            "else jsonl)"))
        else:
            group.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                               help="a progress line on stderr: auto = when stderr is a terminal")


# Triton's rule for model names (PyTriton's Triton.bind refuses others, after Triton has started).
MODEL_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9._-]+$")


def model_name(text: str) -> str:
    if not MODEL_NAME_PATTERN.match(text) or set(text) == {"."}:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid Triton model name: use letters, digits, "
                                         "'.', '_' and '-' only")
    return text


def batch_sizes(text: str) -> list[int]:
    """Comma-separated whole numbers >= 1 ('' for none): --preferred-batch-sizes."""
    try:
        return [whole_number(1)(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of at least 1: {e}") from None


class ServerArgs(ArgGroup):
    """A Triton server's options: where it listens, how its dynamic batcher batches and sheds, how
    it is supervised (runtime/serve.py; benchmarks/bench_serve.py passes the batching ones on)."""

    port = positive_int(1, 65535)
    FLAGS = {  # name -> (argparse group, keyword arguments)
        "host": ("network", dict(default="127.0.0.1",
                                 help="address for HTTP, gRPC and metrics; 0.0.0.0 for every interface")),
        "http_port": ("network", dict(type=port, metavar="PORT", default=8000, help="Triton's HTTP/REST endpoint")),
        "grpc_port": ("network", dict(type=port, metavar="PORT", default=8001, help="Triton's gRPC endpoint")),
        "metrics_port": ("network", dict(type=port, metavar="PORT", default=8002,
                                         help="Prometheus metrics, at /metrics")),
        "model_name": ("Triton", dict(type=model_name, default=serve_defaults.MODEL_NAME, metavar="NAME",
                                      help="Triton model name to serve under; clients name it too: "
                                           "runtime/client.py --model-name NAME")),
        "instances": ("Triton", dict(metavar="N", type=positive_int(1), default=serve_defaults.INSTANCES,
                                     help="model instances, each with its own Detector and backend session")),
        "max_batch_size": ("Triton", dict(metavar="N", type=positive_int(1), default=serve_defaults.MAX_BATCH_SIZE,
                                          help="largest batch the dynamic batcher forms, counted in images")),
        "preferred_batch_sizes": ("Triton", dict(
            metavar="N,N", type=batch_sizes, default=",".join(map(str, serve_defaults.PREFERRED_BATCH_SIZES)),
            help="dynamic batcher's preferred batch sizes, comma-separated ('' for none)")),
        "max_queue_delay_us": ("Triton", dict(metavar="US", type=positive_int(0),
                                              default=serve_defaults.MAX_QUEUE_DELAY_US,
                                              help="how long a request may wait for others to batch with, "
                                                   "microseconds")),
        "max_queue_size": ("Triton", dict(
            metavar="N", type=positive_int(0), default=serve_defaults.MAX_QUEUE_SIZE,
            help="requests the dynamic batcher's queue holds; more are refused at once (HTTP 503 / gRPC UNAVAILABLE, "
                 f"'Exceeds maximum queue size'); the default holds {serve_defaults.CLOSED_LOOP_CLIENTS} clients "
                 "with a request each; 0: unbounded")),
        "queue_timeout_ms": ("Triton", dict(
            metavar="MS", type=positive_int(0), default=serve_defaults.QUEUE_TIMEOUT_MS,
            help="a request still queued after this long is refused ('Request timeout expired'): a backstop for a "
                 "backend that slows down; 0: never")),
        "allow_timeout_override": ("Triton", dict(
            action="store_true", help="let a request set its own queue timeout (Triton's 'timeout' request parameter)")),
        "max_request_bytes": ("Triton", dict(
            metavar="BYTES", type=positive_int(1), default=serve_defaults.MAX_REQUEST_BYTES,
            help="larger requests get an error per item, not decoded (default: %(default)s = 64 MiB)")),
        "exit_timeout": ("Triton", dict(
            type=positive_int(0, serve_defaults.MAX_EXIT_TIMEOUT_S), default=20, metavar="S",
            help=f"on SIGTERM, wait this long for in-flight requests, seconds, at most "
                 f"{serve_defaults.MAX_EXIT_TIMEOUT_S}")),
        "log_verbose": ("Triton", dict(metavar="N", type=positive_int(0), default=0,
                                       help="Triton's verbose log level")),
        "no_self_test": ("Triton", dict(
            action="store_true",
            help="skip the start-up request that checks the server answers as the local Detector does")),
        "health_interval": ("supervision", dict(
            metavar="S", type=seconds, default=1.0,
            help="seconds between health probes, one small image through the server's own endpoint; 0: none")),
        "hang_timeout": ("supervision", dict(metavar="S", type=seconds, default=60.0,
                                             help="an instance busy with one batch for longer is wedged: a fault")),
        "watchdog_timeout": ("supervision", dict(
            metavar="S", type=seconds, default=5.0,
            help="a watchdog process kills tritonserver and serve.py when serve.py is stopped or hung this long; "
                 "0: no watchdog")),
    }
    names = tuple(FLAGS)
    TITLES = {"network": "network", "Triton": "Triton",
              "supervision": "supervision (a fault stops Triton and exits with status 3; see runtime/serve_health.py)"}

    def add_to(self, command_parser: argparse.ArgumentParser):
        groups = {}
        for name in self.taken:
            where, kwargs = self.FLAGS[name]
            if where not in groups:
                groups[where] = command_parser.add_argument_group(self.TITLES[where])
            kwargs = {**kwargs, **({"default": self.defaults[name]} if name in self.defaults else {}),
                      **({"help": self.help[name]} if name in self.help else {})}
            groups[where].add_argument(flag_name(name), **kwargs)
        return groups

    def check(self, args: argparse.Namespace) -> None:
        preferred = getattr(args, "preferred_batch_sizes", None) or []
        if any(b > args.max_batch_size for b in preferred):
            raise ValueError(f"--preferred-batch-sizes must lie in [1, --max-batch-size={args.max_batch_size}]")
        ports = {flag_name(n): getattr(args, n) for n in ("http_port", "grpc_port", "metrics_port") if n in self.taken}
        seen: dict[int, str] = {}
        for flag, value in ports.items():
            if value in seen:
                raise ValueError(f"{seen[value]} and {flag} are both {value}: each endpoint needs a port of its own")
            seen[value] = flag


class Renamed(argparse.Action):
    """A flag that was renamed: refused in one line naming its replacement."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(self, command_parser, namespace, values, option_string=None):
        command_parser.error(f"{option_string} is now {self.replacement}")


def parse_and_check(command_parser: argparse.ArgumentParser, argv, *groups: ArgGroup) -> argparse.Namespace:
    """Parse, then run each group's checks across flags: a refusal is argparse's one line, exit 2."""
    args = command_parser.parse_args(argv)
    for group in groups:
        try:
            group.check(args)
        except ValueError as e:
            command_parser.error(str(e))
    return args


__all__ = ["ArgGroup", "DECODE_MODES", "DEFAULT_MAX_MODEL_PIXELS", "ModelArgs", "OutputArgs", "PipelineArgs",
           "PipelineOptions", "Renamed", "ServerArgs", "TILE_REDUCTIONS", "default_workers", "parse_and_check", "usable_cpus"]
