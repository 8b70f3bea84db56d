"""Build a TensorRT engine from an exported LFM ONNX model, compared with ONNX Runtime before it is kept.

    python export/to_trt.py lfm.onnx [-o lfm.plan] [--precision fp32|fp16|int8] [--batch 1,16,32]
                            [--size 48,256,512] [--workspace 2048] [--opt-level 3] [--timing-cache FILE]

Writes PLAN (the serialized engine), PLAN.json (its sidecar: the model's preprocessing spec
lfm.spec, TensorRT version, GPU name and compute capability, the optimisation profile, the
precision, the ONNX model's SHA-256, the plan's SHA-256 and the command that rebuilds it) and
PLAN.report.json (the comparison). runtime/infer.py --engine PLAN reads the sidecar, and refuses
an engine built by another TensorRT release or for another GPU architecture with the rebuild
command in its message.

Precision follows the ONNX model: fp32, fp16 (export/to_onnx.py --fp16) or INT8 from the QDQ
model (export/to_onnx.py --int8 --int8-profile tensorrt), each built as a strongly typed network
(TensorRT 10 and 11 alike; 11 has no other kind). --precision fp16 on an fp32 model converts it to
fp16 first (export/to_onnx.py --fp16's conversion) and builds and compares that graph. No
calibrator is ever used. The plugin graph (export/to_onnx.py --variant plugins) is built with
LFM's TensorRT plugins (lfm.kernels.trt_plugins; TensorRT 10.9+), registered only for such a graph.
An unsupported TensorRT, NumPy or Polygraphy (lfm.runtime.backends.trt_plan.TENSORRT_SUPPORT) is one line
and exit 2, before the build.

--batch and --size give the optimisation profile, MIN,OPT,MAX (or one N for a static one);
--size bounds height and width alike (default: LFM's minimum 48, the model's size, twice it). The
timing cache (default: beside PLAN, named by TensorRT release and GPU architecture) is loaded and
updated by every build, so rebuilds are fast.

After the build, Polygraphy runs the engine and ONNX Runtime (CPU) on the same ONNX model with the
same inputs: fixed patterns and seeded random images at the profile's min, opt and max shapes and
an odd one (plus --compare-images DIR). fp32 must agree to 1e-3 (max logit error, relative or
absolute), fp16 to 1e-2 / 0.1; INT8 is judged by decisions, none may flip unless ONNX Runtime's
logit is within 1.0 of the threshold. The report is printed and saved as PLAN.report.json; an
engine that fails is kept only as lfm.rejected.plan (for -o lfm.plan), nothing is written at PLAN,
exit 1. Exit 2: bad arguments or model, no TensorRT, no GPU.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: don't let export/'s modules shadow libraries
    sys.path.pop(0)

from lfm.runtime.cli import ArgumentParser, run  # noqa: E402
from lfm.runtime.files import file_sha256, first_line, overwrite_refusal  # noqa: E402


def parse_args(argv=None):
    from lfm.export.trt_build import DEFAULT_OPT_LEVEL, DEFAULT_WORKSPACE_MIB, OPT_LEVELS, PRECISIONS

    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("onnx", metavar="ONNX", help="an LFM model from export/to_onnx.py (fp32, fp16, INT8 QDQ or plugin graph)")
    p.add_argument("-o", "--output", metavar="PLAN", default=None,
                   help="where to write the engine (default: the ONNX path with .plan, e.g. lfm.plan)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: the ONNX model's; int8 needs the QDQ model, fp16 on an fp32 model builds its fp16 conversion")
    p.add_argument("--batch", metavar="MIN,OPT,MAX", default=None, help="batch range of the profile (default 1,16,32)")
    p.add_argument("--size", metavar="MIN,OPT,MAX", default=None,
                   help="height/width range of the profile (default: 48, the model's size, twice the model's size)")
    p.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MIB, metavar="MiB",
                   help=f"builder workspace limit in MiB (default {DEFAULT_WORKSPACE_MIB})")
    p.add_argument("--opt-level", type=int, choices=OPT_LEVELS, default=DEFAULT_OPT_LEVEL,
                   help=f"builder optimisation level 0-5 (default {DEFAULT_OPT_LEVEL}, TensorRT's; higher builds longer)")
    p.add_argument("--timing-cache", metavar="FILE", default=None,
                   help="timing cache to load and update (default: beside PLAN, per TensorRT release and GPU)")
    p.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache")
    p.add_argument("--compare-images", metavar="DIR", default=None,
                   help="also compare on these images (prepared by the model's spec), e.g. for INT8 decisions")
    p.add_argument("--compare-count", type=int, default=256, help="at most this many --compare-images files (256)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.workspace < 1:
        p.error(f"--workspace must be >= 1 MiB, got {args.workspace}")
    if args.timing_cache and args.no_timing_cache:
        p.error("--timing-cache and --no-timing-cache exclude each other")
    return args



def build_engine(trt, onnx_path: str, profile: dict, plugins: list, workspace_mib: int, opt_level: int,
                 timing_cache: str | None) -> bytes:
    """TensorRT's ONNX parser and builder, through Polygraphy's config and build loaders; the
    network strongly typed (precision from the graph's types, as TensorRT 11 requires)."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, Profile

    from lfm.export.trt_build import BuildError, import_plugins

    logger = trt.Logger(trt.Logger.WARNING)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # 10.x; 11.x keeps it, ignored (always strong)
    if plugins:  # the plugin graph: LFM's plugins registered before parsing, AOT implementations preferred
        trt_plugins = import_plugins()
        trt_plugins.register_plugins()
        flags |= trt_plugins.network_flags()

    def network():
        builder = trt.Builder(logger)
        net = builder.create_network(flags)
        parser = trt.OnnxParser(net, logger)
        if not parser.parse_from_file(onnx_path):
            errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
            first = first_line(errors[0] if errors else "", empty="no reason given")
            raise BuildError(f"{onnx_path}: TensorRT's ONNX parser refused it ({first})")
        return builder, net, parser

    config = CreateConfig(
        tf32=False,
        profiles=[Profile().add(profile["input"], min=profile["min"], opt=profile["opt"], max=profile["max"])],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mib << 20},
        builder_optimization_level=opt_level,
        load_timing_cache=timing_cache if timing_cache and os.path.exists(timing_cache) else None,
    )
    return EngineBytesFromNetwork(network, config=config, save_timing_cache=timing_cache)()


def compare(trt, onnx_path: str, plan_bytes: bytes, feeds: list, precision: str, threshold: float) -> dict:
    """Polygraphy's Comparator: ONNX Runtime (CPU) on the ONNX model against the engine."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from lfm.export.trt_build import TOLERANCES, iteration_verdicts, judge
    from lfm.runtime.backends.onnxrt import inference_session
    from lfm.runtime.options import usable_cpus

    cpus = usable_cpus()  # the threads Polygraphy's SessionFromOnnx gives (verify.ort_session; no torch here)
    session = lambda: inference_session(onnx_path, providers="cpu", threads=cpus, inter_op_threads=cpus)  # noqa: E731
    runners = [OnnxrtRunner(session, name="onnxruntime"), TrtRunner(EngineFromBytes(plan_bytes), name="tensorrt")]
    results = Comparator.run(runners, data_loader=feeds)
    tol = TOLERANCES[precision]
    passed = None
    if tol.rtol is not None:
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(
            rtol=tol.rtol, atol=tol.atol, check_error_stat="max"))
        passed = iteration_verdicts(accuracy, "logit")
    (_, ref), (_, eng) = results[0], results[1]
    return judge(precision, [r["logit"] for r in ref], [e["logit"] for e in eng], threshold, passed)


def build(args) -> int:
    from lfm.export import trt_build as tb
    from lfm.runtime.backends.cuda_support import device_info, import_cudart
    from lfm.runtime.backends.trt_plan import sha256_bytes, sidecar_path
    from lfm.runtime.inputs import expand_paths

    plan = args.output or tb.default_output(args.onnx)
    tb.check_output(plan)
    compare_files = list(expand_paths([args.compare_images]).inputs)[:args.compare_count] if args.compare_images else []
    problem = overwrite_refusal([plan, sidecar_path(plan), plan + ".report.json", tb.rejected_path(plan),
                                 args.timing_cache], [("the ONNX model", args.onnx), *compare_files])
    if problem:
        raise tb.BuildError(problem)
    proto, props = tb.read_onnx(args.onnx)
    spec = tb.model_spec(props)
    inp = tb.input_info(proto, props)
    plugins = tb.plugin_ops(proto)
    model_precision = tb.onnx_precision(proto, props)
    profile = tb.make_profile(inp, args.batch, args.size, spec)
    problem = tb.uint8_input_problem(proto)
    if problem:
        raise tb.BuildError(f"{args.onnx}: {problem}")
    mode = tb.choose_mode(args.onnx, model_precision, args.precision, tb.int8_profile(props))
    trt = tb.import_tensorrt()  # with its version checked
    untested = tb.tensorrt_untested(trt.__version__)
    if untested:
        print(f"warning: {untested}", file=sys.stderr)
    tb.check_polygraphy()  # before the build, not after it
    if plugins:
        tb.check_plugin_graph(trt.__version__)
    del proto
    try:
        cudart = import_cudart()
        device_name, cc = device_info(cudart)
    except Exception as e:  # BackendError / CudaError: already one line
        raise tb.BuildError(str(e)) from None
    timing_cache = None if args.no_timing_cache else (args.timing_cache or tb.default_timing_cache(plan, trt.__version__, cc))
    precision = mode["precision"]
    command = tb.build_command(args.onnx, plan, precision, profile, args.workspace, args.opt_level)
    print(f"building a {precision} engine from {args.onnx} ({model_precision} model"
          f"{', converted to fp16' if mode['convert_fp16'] else ''}"
          f"{', plugin graph: ' + ', '.join(plugins) if plugins else ''}) with TensorRT {trt.__version__} on "
          f"{device_name} (compute capability {cc}); profile {inp['name']}: min {profile['min']} opt {profile['opt']} "
          f"max {profile['max']}")

    with graph_to_build(args.onnx, mode, plan) as graph:
        t0 = time.perf_counter()
        plan_bytes = bytes(build_engine(trt, graph, profile, plugins, args.workspace, args.opt_level, timing_cache))
        build_s = time.perf_counter() - t0

        feeds = tb.synthetic_feeds(inp, spec, profile)
        shapes = [list(next(iter(f.values())).shape) for f in feeds]
        notes = []
        if args.compare_images:
            files = compare_files
            image_feeds, notes = tb.image_feeds(files, inp, spec, profile)
            feeds += image_feeds
            shapes += [list(next(iter(f.values())).shape) for f in image_feeds]
            print(f"--compare-images: {sum(len(next(iter(f.values()))) for f in image_feeds)} images from {len(files)} "
                  f"files{f'; {len(notes)} left out (listed in the report)' if notes else ''}")
        t1 = time.perf_counter()
        verdict = compare(trt, graph, plan_bytes, feeds, precision, spec.threshold)
        compare_s = time.perf_counter() - t1
        print(tb.format_report(verdict, shapes))

        build_record = {"seconds": round(build_s, 2), "workspace_mib": args.workspace, "opt_level": args.opt_level,
                        "timing_cache": timing_cache, "strongly_typed": mode["strongly_typed"],
                        "converted_to_fp16": mode["convert_fp16"], "plugin_implementation": "aot" if plugins else None}
        sidecar = tb.make_sidecar(spec=spec, inp=inp, profile=profile, precision=precision, mode=mode,
                                  trt_version=trt.__version__, device_name=device_name, compute_capability=cc,
                                  onnx_path=args.onnx, onnx_sha256=file_sha256(args.onnx), onnx_props=props,
                                  plan_sha256=sha256_bytes(plan_bytes), plugins=plugins, command=command, build=build_record)
        report = {"onnx": os.path.abspath(args.onnx), "plan": os.path.abspath(plan), "engine": sidecar,
                  "reference": ("ONNX Runtime (CPUExecutionProvider) on the same ONNX graph"
                                f"{' (the fp16 conversion of the fp32 model)' if mode['convert_fp16'] else ''}, through "
                                "Polygraphy's Comparator"),
                  "inputs": shapes, "image_notes": notes, "comparison": verdict,
                  "seconds": {"build": round(build_s, 2), "compare": round(compare_s, 2)}, "passed": verdict["passed"]}
        report_path = plan + ".report.json"

        rejected = tb.save_build(plan, plan_bytes, sidecar, report)
        if rejected is None:
            print(f"wrote {plan} ({precision}, {len(plan_bytes) / 1e6:.1f} MB), {sidecar_path(plan)} and {report_path} "
                  f"(build {build_s:.1f} s, comparison {compare_s:.1f} s)")
            return 0
        print(f"error: the engine FAILED its comparison with ONNX Runtime; nothing written to {plan}; the engine is kept "
              f"as {rejected} and the report in {report_path}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def graph_to_build(onnx_path: str, mode: dict, plan: str):
    """The graph TensorRT parses and ONNX Runtime runs in the comparison: the model itself or, for
    --precision fp16 on an fp32 model, its fp16 conversion (trt_build.fp16_model), written to a
    temporary folder beside PLAN and removed afterwards."""
    if not mode["convert_fp16"]:
        yield onnx_path
        return
    import onnx

    from lfm.export.trt_build import fp16_model

    workdir = tempfile.mkdtemp(prefix=".lfm-trt-", dir=os.path.dirname(os.path.abspath(plan)))
    try:
        path = os.path.join(workdir, os.path.splitext(os.path.basename(onnx_path))[0] + ".fp16.onnx")
        onnx.save(fp16_model(onnx.load(onnx_path)), path)
        yield path
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    """The build; errors are cli.run's to report: BuildError in one line, exit 2."""
    args = parse_args(argv)
    try:
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = G_LOGGER.WARNING  # Polygraphy's INFO lines add nothing to our own
    except ImportError:
        pass
    return build(args)


if __name__ == "__main__":
    sys.exit(run(main))
