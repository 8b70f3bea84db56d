"""Files to scores on this machine's CPUs (and GPU): the Detector's decode stage, the pipeline's
own ceiling and, with a model, its end-to-end rate (issue 17, item 5).

    python benchmarks/bench_decode.py [--model FILE [--kernels] [--device D] [--threads N]]
        [--images N] [--workers 1,2] [--modes threads,processes,gpu] [--rounds 3] [--block 2]
        [--size S] [--batch-size 16] [--generated-side 1024] [--output-dir DIR]

For each decoding mode and worker count (mode gpu once: nvJPEG decodes in this process whatever
the worker count) it times, side by side (rounds interleaved, so a shared machine's drift spreads
over all of them):
- decode: ``Detector._decoded`` alone, files to uint8 arrays in input order (images/s);
- pipeline: ``Detector.predict_iter`` with a no-op runner (the model's spec, zero logits), i.e.
  everything but the model: decode, batching, feeding, records. Its rate as a fraction of the
  decode stage's own rate is the pipeline's ceiling (the issue's target: >= 90 %);
- scores (with --model FILE: ``make_runner(FILE, device=, kernels=, threads=)``): the same with
  the real runner, files to scores images/s.
Pipeline and scores cases also get this process's CPU time per image (time.process_time): with
decode processes or gpu that is the parent's own cost, and 1e6 / us the images/s one parent can
feed at most; with threads it includes the decoding threads.
Once per run, single-threaded here on a sample of the distinct files: the median ms per image of
each stage (read, decode, resize, to array; with --model the copy to the device and the engine on
one decoded batch; with mode gpu nvJPEG decode + resize of a batch). With --model every case's
records are compared with the first CPU-decoding case's: flips, max |dlogit|, differing errors.
Inputs: the reference JPEGs in ../shared/reference/cnndetection ($LFM_REFERENCE/cnndetection)
listed repeatedly, or generated JPEGs where that folder is absent. A model or decoding mode that
cannot run here is one line on stderr and exit status 2. Reports: OUT_DIR/bench_decode.{json,md}.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_OUTPUT_DIR, OUTPUT_DIR_HELP, cpu_text, log, machine, run_main, summarize,  # noqa: E402
                    time_interleaved, work_folder, write_report)
from lfm.runtime.files import first_line  # noqa: E402  (standard library only)

REFERENCE = Path(os.environ.get("LFM_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
REFERENCE_JPEGS = REFERENCE / "cnndetection"
CPU_MODES = ("threads", "processes")  # the decoding modes whose records must agree exactly
STAGE_SAMPLE = 32  # distinct files the stage breakdown decodes, each STAGE_REPEATS times
STAGE_REPEATS = 3
ENGINE_CALLS = 5  # timed runner calls on one decoded batch, after one warm-up call
# What "parent CPU" covers per mode: the figure is a feeding ceiling only where the decoding
# happens elsewhere (worker processes, the GPU).
PARENT_COVERS = {"threads": "this process, its decoding threads included",
                 "processes": "this process only (the decoding workers are other processes)",
                 "gpu": "this process: file reads, JPEG headers, nvJPEG launches, copies back"}


def noop_runner(spec):
    from lfm.runtime.backends.base import Runner

    class NoopRunner(Runner):
        """No model: zero logits, so the pipeline's own cost is all that is timed."""

        name = "no-op"

        def __init__(self):
            super().__init__()
            self.spec = spec  # the model's (input kind, size, policy): the same host work as its feed

        def infer_impl(self, feed):
            return {"logit": np.zeros(len(next(iter(feed.values()))), np.float32)}

    return NoopRunner()


def generated_jpegs(folder: Path, n: int = 64, side: int | None = None) -> list[Path]:
    """Smooth random JPEGs of 256-356 px a side, like the reference set (or ``side`` px square)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = rng.integers(256, 357, 2) if side is None else (side, side)
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR)
        paths.append(folder / f"gen{i}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def parse_args(argv=None):
    from lfm.runtime.cli import ArgumentParser
    from lfm.runtime.options import ModelArgs, PipelineArgs, parse_and_check

    p = ArgumentParser(prog="bench_decode.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=400, help="files per pass (the JPEGs listed repeatedly)")
    p.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated")
    p.add_argument("--modes", default="threads,processes",
                   help="decoding modes to time (gpu: nvJPEG, needs torch + CUDA + torchvision)")
    p.add_argument("--generated-side", type=int, default=None,
                   help="time generated square JPEGs of this side (e.g. 1024) instead of the reference JPEGs")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--block", type=int, default=2, help="timed passes per case and round (after one uncounted pass)")
    p.add_argument("--model", default=None,
                   help="also time files to scores with this model (.onnx, .pt/.pth checkpoint or .plan) via make_runner")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=OUTPUT_DIR_HELP)
    pipeline = PipelineArgs(only=("size", "batch_size"), help={
        "size": "the spec's resize side (default: the model's; 256 without --model)"})
    backend = ModelArgs(only=("kernels", "device", "threads"), help={"threads": "a CPU backend's intra-op threads "
                                                                                "(default: its own)"})
    for group in (pipeline, backend):
        group.add_to(p)
    return parse_and_check(p, argv, pipeline, backend)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lfm.runtime.backends.base import BackendError
    from lfm.runtime.spec import ModelSpec

    workers = [int(w) for w in args.workers.split(",")]
    modes = args.modes.split(",")
    try:  # refused in one line before anything runs: a decoding mode or a model this machine lacks
        check_modes(modes)
        runner = make_model_runner(args) if args.model else None
    except (BackendError, ValueError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    spec = (runner.spec.replace(size=args.size) if runner is not None
            else ModelSpec(input="uint8", layout="NHWC", size=args.size or 256))
    # nvJPEG decodes in this process, in batches, whatever the worker count: one gpu case
    cases = [(m, w) for m in modes for w in (workers if m != "gpu" else [max(workers)])]
    try:
        with work_folder(None, "bench_decode_") as tmp:
            files, source = input_files(tmp, args.generated_side)
            paths = [str(files[i % len(files)]) for i in range(args.images)]
            log(f"{len(paths)} files per pass from {source} ({len(files)} distinct)"
                + (f"; model {args.model} on {runner.describe()}" if runner is not None else ""))
            times, cpu, records, stages = measure(args, spec, runner, cases, files, paths)
    finally:
        if runner is not None:
            runner.deactivate()
    place = engine_place(runner) if runner is not None else None
    rates = rate_rows(times, cpu, cases, len(paths), place)
    loaded = tuple(m for m in ("onnxruntime", "openvino", "torch", "torchvision", "triton", "tensorrt") if m in sys.modules)
    doc = {"machine": machine(threads=max(workers), modules=("numpy", "PIL") + loaded),  # only what the run loaded
           "source": source, "images_per_pass": len(paths), "distinct_files": len(files), "policy": spec.policy,
           "size": spec.size, "batch_size": args.batch_size,
           "model": ({"path": args.model, "runner": runner.describe(), "engine_place": place, "kernels": args.kernels,
                      "device": args.device, "threads": args.threads} if runner is not None else None),
           "cases": [{"mode": m, "workers": None if m == "gpu" else w, "label": case_label(m, w)} for m, w in cases],
           "rates": rates, "ratios": _ratios(rates, cases), "stages": stages,
           "decisions": decisions(records, cases)}
    write_report(args.output_dir, "bench_decode", doc, _markdown(doc))
    return 0


def check_modes(modes) -> None:
    """ValueError (one line) for an unknown decoding mode, or mode gpu where nvJPEG cannot run."""
    from lfm.runtime.options import DECODE_MODES
    from lfm.runtime.gpu_decode import nvjpeg_decoder

    for m in modes:
        if m not in DECODE_MODES:
            raise ValueError(f"unknown decoding mode {m!r} (--modes); expected some of {', '.join(DECODE_MODES)}")
    if "gpu" in modes:
        nvjpeg_decoder("cuda")  # GpuDecodeUnavailable (a ValueError) without torch + CUDA + torchvision


def make_model_runner(args):
    """The --model runner, active (BackendError, one line, where it cannot run here)."""
    from lfm.runtime.backends import make_runner

    return make_runner(args.model, device=args.device, kernels=args.kernels, threads=args.threads).activate()


def engine_place(runner) -> str:
    """Where the runner computes: "torch-cuda", "tensorrt", "onnxruntime-gpu" or "host"."""
    if runner.name.startswith("torch") and getattr(getattr(runner, "device", None), "type", "") == "cuda":
        return "torch-cuda"
    if runner.name == "tensorrt":
        return "tensorrt"
    if getattr(runner, "providers", ["CPUExecutionProvider"])[0] != "CPUExecutionProvider":
        return "onnxruntime-gpu"
    return "host"


def input_files(tmp: Path, generated_side: int | None) -> tuple[list[Path], str]:
    """The distinct files to list repeatedly, and where they come from."""
    from lfm.runtime.inputs import image_files

    # The JPEGs only (not the folder's PNGs): this times JPEG decoding, which mode gpu hands to nvJPEG.
    listed = [] if generated_side else image_files(str(REFERENCE_JPEGS))
    files = [Path(f) for f in listed if Path(f).suffix.lower() in (".jpg", ".jpeg")]
    if files:
        return files, str(REFERENCE_JPEGS)
    source = f"generated {generated_side} px JPEGs" if generated_side else "generated (reference JPEGs absent)"
    return generated_jpegs(tmp, side=generated_side), source


def case_label(mode: str, workers: int) -> str:
    return "gpu" if mode == "gpu" else f"{mode} x{workers}"


def measure(args, spec, runner, cases, files, paths):
    """Every case timed side by side, then the stage breakdown. Returns (seconds per pass by case,
    this process's CPU seconds per pass by pipeline/scores case, records of each scores case's
    last pass by case label, stage rows)."""
    from lfm.runtime.detector import Detector

    detectors, records = {}, {}
    try:
        for m, w in cases:
            options = {"workers": w, "decode": m, "batch_size": args.batch_size}
            detectors[m, w, "no-op"] = Detector(noop_runner(spec), **options)
            if runner is not None:  # one runner shared by the cases (already active); the first close ends it
                detectors[m, w, "model"] = Detector(runner, size=args.size, **options)
        runs = case_runs(detectors, cases, records)
        for run in runs.values():  # starts the workers, fills the page cache, compiles the model's batch shapes
            run(warmup_paths(paths, len(files), args.batch_size))
        cpu = {name: [] for name in runs if not name.startswith("decode ")}
        fns = {name: with_parent_cpu(run, paths, cpu.get(name)) for name, run in runs.items()}
        log(f"timing {len(fns)} cases x {args.rounds} rounds")
        times = time_interleaved(fns, rounds=args.rounds, block=args.block, on_round=lambda r: log(f"round {r}"))
        log("stage breakdown")
        stages = stage_breakdown(files, spec, runner, args.batch_size, gpu=any(m == "gpu" for m, _ in cases))
    finally:
        for det in detectors.values():
            det.close()
    return times, cpu, records, stages


def case_runs(detectors, cases, records: dict) -> dict:
    """name -> a pass over a list of paths that returns its number of records. The scores passes
    keep their records in records[case label] (each pass replaces the previous one's)."""
    runs = {}
    for m, w in cases:
        noop, label = detectors[m, w, "no-op"], case_label(m, w)
        runs[f"decode {label}"] = lambda ps, d=noop: _count(d._decoded(ps))
        runs[f"pipeline {label}"] = lambda ps, d=noop: _count(d.predict_iter(ps))
        if (m, w, "model") in detectors:
            runs[f"scores {label}"] = lambda ps, d=detectors[m, w, "model"], k=label: _keep(records, k, d.predict_iter(ps))
    return runs


def warmup_paths(paths: list[str], distinct: int, batch_size: int) -> list[str]:
    """The head of the list a warm-up pass runs: every distinct file once (at least two batches),
    in whole batches, plus as many as the pass's last, partial batch holds, so the model meets
    both batch shapes of a timed pass before it is timed (a new shape compiles on first sight)."""
    whole = -(-max(distinct, 2 * batch_size) // batch_size) * batch_size
    return paths[:min(len(paths), whole + len(paths) % batch_size)]


def with_parent_cpu(run, paths, seconds: list | None):
    """A pass over ``paths`` without arguments (for time_interleaved) that appends this process's
    CPU seconds for it to ``seconds`` (all threads of this process; not its child processes)."""
    def one_pass():
        t = time.process_time()
        n = run(paths)
        if seconds is not None:
            seconds.append(time.process_time() - t)
        return n
    return one_pass


def _count(records) -> int:
    return sum(1 for _ in records)


def _keep(store: dict, key: str, records) -> int:
    store[key] = list(records)
    return len(store[key])


# --------------------------------------------------------------------------------------------
# Stage breakdown: one image at a time, in this process


def stage_breakdown(files, spec, runner, batch_size: int, gpu: bool) -> list[dict]:
    """Median ms per image of each stage on up to STAGE_SAMPLE distinct files, single-threaded:
    read, decode, resize, to array; with a runner the copy to the device and the engine on one
    decoded batch; with ``gpu`` nvJPEG decode + resize of a batch."""
    from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS, apply_policy, open_image, to_tiles

    tiles = spec.policy == "tiles"  # policy tiles cuts the image into arrays: that is its "to array"
    seconds = {"read": [], "decode": [], "resize": [], "to array": []}
    datas, arrays = [], []
    for repeat in range(STAGE_REPEATS):
        for f in files[:STAGE_SAMPLE]:
            t0 = time.perf_counter()
            data = Path(f).read_bytes()
            t1 = time.perf_counter()
            img = open_image(data, DEFAULT_MAX_PIXELS)
            t2 = time.perf_counter()
            img = img if tiles else apply_policy(img, spec.policy, spec.size)
            t3 = time.perf_counter()
            a = to_tiles(img, spec.size) if tiles else np.asarray(img, dtype=np.uint8)[None]
            t4 = time.perf_counter()
            for stage, dt in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                seconds[stage].append(dt)
            if repeat == 0:
                datas.append(data)
                arrays.append(a)
    notes = {"read": "file bytes (page cache warm)", "decode": "Pillow open + load + RGB (preprocess.open_image)",
             "resize": f"policy {spec.policy} to {spec.size} (apply_policy)" + (": none, tiles are cut next" if tiles else ""),
             "to array": "to_tiles" if tiles else "uint8 HxWx3 array"}
    rows = [stage_row(stage, float(np.median(s)), "one core", notes[stage]) for stage, s in seconds.items()]
    if gpu:
        rows.append(gpu_decode_row(datas, spec))
    if runner is not None:
        batch = decoded_batch(arrays, batch_size)
        rows += [copy_row(runner, batch), engine_row(runner, spec, batch)]
    return rows


def stage_row(stage: str, seconds_per_image: float | None, of: str | None, note: str) -> dict:
    ms = None if seconds_per_image is None else seconds_per_image * 1e3
    return {"stage": stage, "ms_per_image": None if ms is None else round(ms, 4),
            "images_per_s": None if not ms else round(1e3 / ms, 1), "of": of, "note": note}


def decoded_batch(arrays: list[np.ndarray], batch_size: int) -> np.ndarray:
    """batch_size decoded images of one shape (the sample's first), cycled."""
    same = [a for a in arrays if a.shape == arrays[0].shape]
    return np.ascontiguousarray(np.concatenate([same[i % len(same)] for i in range(batch_size)])[:batch_size])


def _median_seconds(fn, calls: int = ENGINE_CALLS) -> float:
    """fn once untimed (warm-up), then the median wall time of ``calls`` calls."""
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def engine_row(runner, spec, batch: np.ndarray) -> dict:
    from lfm.runtime.preprocess import normalize

    feed = ({"pixels": batch} if spec.input == "uint8" else {"image": normalize(batch, spec.mean, spec.std)})
    s = _median_seconds(lambda: runner.infer(feed)) / len(batch)
    return stage_row("engine", s, "the engine", f"runner.infer on one decoded batch of {len(batch)} ({runner.describe()}"
                     + ("; its own staging copy included" if engine_place(runner) != "host" else "") + ")")


def copy_row(runner, batch: np.ndarray) -> dict:
    """Host uint8 batch -> device through the staging ring, synchronised (a torch CUDA runner)."""
    place = engine_place(runner)
    if place == "host":
        return stage_row("stage/copy", None, None, "n/a (host backend)")
    if place != "torch-cuda":
        return stage_row("stage/copy", None, None, f"n/a ({place} stages its input itself: in the engine row)")
    import torch

    from lfm.runtime.gpu_input import StagingRing

    ring = StagingRing(runner.device, slots=2)
    try:
        def stage():
            ring.stage(batch)
            torch.cuda.synchronize(runner.device)
        s = _median_seconds(stage) / len(batch)
    finally:
        ring.close()
    return stage_row("stage/copy", s, "the copy engine", f"StagingRing (pinned, 2 slots) to {runner.device}, "
                     f"batch of {len(batch)}, synchronised")


def gpu_decode_row(datas: list[bytes], spec) -> dict:
    """nvJPEG decode + the spec's policy on the device + copy back, of a batch as GpuDecoder runs
    it (torch.cuda.synchronize around it)."""
    import torch

    from lfm.runtime.gpu_decode import DECODE_BATCH, GpuDecoder, gpu_jpeg_size
    from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MAX_TILES

    jpegs = [(d, size) for d in datas if (size := gpu_jpeg_size(d, DEFAULT_MAX_PIXELS)) is not None]
    if not jpegs:
        return stage_row("gpu decode + resize", None, None, "n/a: no file of the sample goes to nvJPEG")
    batch = [jpegs[i % len(jpegs)] for i in range(DECODE_BATCH)]
    dec = GpuDecoder(spec, DEFAULT_MAX_PIXELS, DEFAULT_MAX_TILES)

    def decode():
        decoded = dec._decode_all([d for d, _ in batch])
        out = dec._to_host([dec._prepare(chw, w, h) for chw, (_, (w, h)) in zip(decoded, batch)])
        torch.cuda.synchronize()
        return out
    s = _median_seconds(decode) / len(batch)
    return stage_row("gpu decode + resize", s, "the GPU", f"nvJPEG + policy {spec.policy} kernel + copy back, "
                     f"batch of {len(batch)}, synchronised")


# --------------------------------------------------------------------------------------------
# Rates, decisions, the report


def rate_rows(times: dict, cpu: dict, cases, images: int, place: str | None) -> dict:
    """name -> images/s and latency of a pass, its case, and for pipeline/scores the parent cost."""
    by_label = {case_label(m, w): (m, w) for m, w in cases}
    rates = {}
    for name, t in times.items():
        kind, label = name.split(" ", 1)
        m, w = by_label[label]
        rates[name] = {"kind": kind, "mode": m, "workers": None if m == "gpu" else w, **summarize(t, images)}
        if name in cpu:
            rates[name].update(parent_cost(cpu[name], images, m, host_engine=kind == "scores" and place == "host"))
    return rates


def parent_cost(seconds: list[float], images: int, mode: str, host_engine: bool) -> dict:
    """This process's CPU us per image (median pass) and, where the decoding and the engine run
    elsewhere (processes, gpu; a device engine), the images/s one such process can feed at most."""
    us = float(np.median(seconds)) / images * 1e6
    ceiling = mode != "threads" and not host_engine and us > 0
    return {"parent_cpu_us_per_image": round(us, 1),
            "parent_ceiling_images_per_s": round(1e6 / us, 1) if ceiling else None,
            "parent_cpu_covers": PARENT_COVERS[mode] + ("; the engine's threads too" if host_engine else "")}


def compare_records(reference: list, other: list) -> dict:
    """Decisions of one case against the reference case's, record by record (same input order)."""
    both = [(a, b) for a, b in zip(reference, other) if a.error is None and b.error is None]
    flips = sum(a.label != b.label for a, b in both)
    dlogit = max((abs(a.logit - b.logit) for a, b in both), default=0.0)
    errors = sum(a.error != b.error for a, b in zip(reference, other))
    paths = sum(a.path != b.path for a, b in zip(reference, other)) + abs(len(reference) - len(other))
    return {"records": len(other), "flips": flips, "max_abs_dlogit": dlogit, "errors_differ": errors,
            "paths_differ": paths, "identical": flips == errors == paths == 0 and dlogit == 0.0}


def decisions(records: dict, cases) -> dict | None:
    """Every scores case against the first one that decodes on the CPU; None without a model or
    a CPU-decoding case."""
    reference = next((case_label(m, w) for m, w in cases if m in CPU_MODES), None)
    if not records or reference is None:
        return None
    ref = records[reference]
    return {"reference": reference, "reference_records": len(ref), "reference_errors": sum(r.error is not None for r in ref),
            "cases": {label: compare_records(ref, got) for label, got in records.items() if label != reference}}


def _ratios(rates, cases) -> dict:
    ips = {name: r["images_per_s"] for name, r in rates.items()}
    out = {}
    for m, w in cases:
        label = case_label(m, w)
        out[f"pipeline / decode, {label}"] = round(ips[f"pipeline {label}"] / ips[f"decode {label}"], 3)
        if f"scores {label}" in ips:
            out[f"scores / pipeline, {label}"] = round(ips[f"scores {label}"] / ips[f"pipeline {label}"], 3)
    for mode in CPU_MODES:
        counts = [w for m, w in cases if m == mode]
        for w in counts[1:]:
            out[f"decode {mode}: x{w} / x{counts[0]}"] = round(ips[f"decode {mode} x{w}"] / ips[f"decode {mode} x{counts[0]}"], 3)
    for kind in ("decode", "scores"):  # the GPU-decode target: >= 2x the best CPU decoding
        cpu = [ips[f"{kind} {case_label(m, w)}"] for m, w in cases if m in CPU_MODES and f"{kind} {case_label(m, w)}" in ips]
        if f"{kind} gpu" in ips and cpu:
            out[f"{kind} gpu / best CPU {kind}"] = round(ips[f"{kind} gpu"] / max(cpu), 3)
    return out


def _markdown(doc) -> str:
    r, m, model = doc["rates"], doc["machine"], doc["model"]
    gpus = ", ".join(g["name"] for g in m["gpus"])
    lines = [f"# Files to scores: decode stage, pipeline ceiling{', scores' if model else ''} "
             f"({cpu_text(m)}, {m['usable_cpus']} usable CPUs{', ' + gpus if gpus else ''})", "",
             f"{doc['images_per_pass']} files per pass from {doc['source']} ({doc['distinct_files']} distinct); "
             f"policy {doc['policy']} to {doc['size']}, batch {doc['batch_size']}; median of "
             f"{r[next(iter(r))]['runs']} passes per case"
             + (f"; model {model['path']} on {model['runner']}." if model else "."), ""]
    lines += _rate_table(doc, "decode", "decode images/s", None)
    lines += _rate_table(doc, "pipeline", "pipeline (no-op engine) images/s", "decode")
    if model:
        lines += _rate_table(doc, "scores", "files to scores images/s", "pipeline")
    lines += ["Parent CPU: this process's CPU time per image (median pass). With decode processes or gpu it is the "
              "parent's own cost and the ceiling is the images/s one parent can feed; with threads (*) it includes "
              "the decoding threads (no ceiling), as it includes a host engine's threads in the scores rows.", ""]
    scaling = [f"{k} = {v:.2f}" for k, v in doc["ratios"].items() if ": x" in k or " / best CPU " in k]
    if scaling:
        lines += ["Scaling: " + "; ".join(scaling), ""]
    lines += ["## Stages (one image at a time, this process)", "", "| stage | ms/image | images/s | of | what |",
              "|---|---|---|---|---|"]
    for s in doc["stages"]:
        ms, ips = (f"{s['ms_per_image']:.3f}", f"{s['images_per_s']:.0f}") if s["ms_per_image"] is not None else ("n/a",) * 2
        lines.append(f"| {s['stage']} | {ms} | {ips} | {s['of'] or ''} | {s['note']} |")
    lines.append("")
    if doc["decisions"]:
        d = doc["decisions"]
        lines += [f"## Decisions against {d['reference']} (CPU decoding; {d['reference_errors']} of its "
                  f"{d['reference_records']} records are errors)", "",
                  "| case | records | flips | max abs dlogit | errors or paths differ | verdict |", "|---|---|---|---|---|---|"]
        for label, c in d["cases"].items():
            verdict = "identical" if c["identical"] else ("expected to differ slightly (nvJPEG)" if label == "gpu" else "DIFFERS")
            lines.append(f"| {label} | {c['records']} | {c['flips']} | {c['max_abs_dlogit']:.4g} | "
                         f"{c['errors_differ'] + c['paths_differ']} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def _rate_table(doc, kind: str, title: str, versus: str | None) -> list[str]:
    with_parent = kind != "decode"
    head = f"| mode | workers | {title} |" + (f" / {versus} |" if versus else "")
    head += " parent CPU us/image | parent ceiling images/s |" if with_parent else ""
    lines = [f"## {kind.capitalize()}", "", head, "|" + "---|" * head.count(" |")]
    for name, x in doc["rates"].items():
        if x["kind"] != kind:
            continue
        label = name.split(" ", 1)[1]
        row = f"| {x['mode']} | {x['workers'] or 'n/a (nvJPEG)'} | {x['images_per_s']:.0f} |"
        if versus:
            row += f" {x['images_per_s'] / doc['rates'][f'{versus} {label}']['images_per_s']:.2f} |"
        if with_parent:
            ceiling = x["parent_ceiling_images_per_s"]
            star = "*" if x["mode"] == "threads" else ""
            row += f" {x['parent_cpu_us_per_image']:.0f}{star} | {f'{ceiling:.0f}' if ceiling else 'n/a'} |"
        lines.append(row)
    return lines + [""]


if __name__ == "__main__":
    run_main(main)
