"""CPU inference speed and agreement of every backend, side by side in one process.

    python benchmarks/bench_cpu.py [--quick] [--output-dir DIR (default: ./bench-results)]
                                   [--threads N] [--extra NAME=MODEL.onnx ...] [--no-compile]

At 224 x 224 (resize policy), batch 1 and batch 8: torch eager (the upstream checkpoint in our
model), torch.compile, ONNX Runtime fp32 (float and uint8 inputs), ONNX Runtime INT8 (our QDQ
model, export/quantize.py), OpenVINO on the fp32 ONNX (its default precision hint, and f32
forced) and on our INT8 QDQ model (static input shapes, as runtime's OpenVinoRunner compiles them). Each backend is warmed up, then timed in rounds: each round runs
every backend for a short block of calls (the first, which wakes its thread pool, not counted),
in a rotated order, so drifts of a shared machine spread over all of them.
Reported per backend and batch: median images/s (batch / median latency), p50/p90/p99 latency
and the ratio to torch eager measured in the same run. Timed is the model call on an input
already in its own format (uint8 NHWC bytes or normalised float NCHW); the numpy normalisation
a float-input backend needs on top is timed separately and listed as a note.

Accuracy comes with speed: every backend scores the 102 cnndetection reference JPEGs (and, when
not --quick, synthetic held-out images) and its decisions (score > threshold) are compared with
torch eager's. Targets checked (PASS/FAIL in the output): ONNX Runtime fp32 >= 2x torch eager at
batch 1; INT8 >= 300 images/s at batch 8 with >= 99 % decision agreement.

Writes bench_cpu.json (machine, settings, results, agreement, targets) and bench_cpu.md to
--output-dir (the committed ones in benchmarks/results/ only when it names that folder); the
models go to a temp folder, removed at the end (also on an error or Ctrl-C), unless --work-dir.
--quick (< 2 min): fewer calibration images and timed runs, no torch.compile, no synthetic set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
SIZE = 224
BATCHES = (1, 8)
TARGET_FP32_RATIO = 2.0
TARGET_INT8_IPS = 300.0
TARGET_AGREEMENT = 0.99
# Pause before each timed call: ONNX Runtime's (and OpenVINO's) worker threads spin for a while
# after a run, and would steal the cores from whichever backend runs next.
GAP_S = 0.03

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_OUTPUT_DIR, OUTPUT_DIR_HELP, T0, log, machine, run_main, summarize,  # noqa: E402
                    time_interleaved, work_folder, write_report)


# --------------------------------------------------------------------------------------------
# Backends: name, input format, run(x) -> logits


class Backend:
    def __init__(self, name, label, input_kind, precision, setup, note=""):
        self.name, self.label, self.input_kind, self.precision = name, label, input_kind, precision
        self.setup, self.note = setup, note
        self.fns = {}  # batch -> callable
        self.error = None

    def prepare(self, batch):
        if self.error is None and batch not in self.fns:
            try:
                self.fns[batch] = self.setup(batch)
            except Exception as e:  # noqa: BLE001  (a backend that fails is reported, not fatal)
                self.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
                log(f"  {self.name}: unavailable ({self.error})")
        return self.error is None


def ort_backend(path, threads):
    import onnxruntime as ort

    def setup(batch):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(["logit"], {name: x})[0]

    return setup


def openvino_backend(path, threads, precision=None):
    def setup(batch):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        dims = [batch, SIZE, SIZE, 3] if model.inputs[0].get_element_type() == ov.Type.u8 else [batch, 3, SIZE, SIZE]
        model.reshape({model.inputs[0].get_any_name(): dims})  # static shapes: OpenVINO's fast path
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision:
            cfg["INFERENCE_PRECISION_HINT"] = precision
        compiled = core.compile_model(model, "CPU", cfg)
        req = compiled.create_infer_request()
        out = compiled.output("logit")
        return lambda x: req.infer([x])[out].copy()

    return setup


def torch_backend(model, threads, compile_mode=None):
    import torch

    torch.set_num_threads(threads)

    def setup(batch):
        model.eval()
        net = model
        if compile_mode:
            net = torch.compile(model, mode=compile_mode if compile_mode != "default" else None, dynamic=False)

        def run(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()

        return run

    return setup


# --------------------------------------------------------------------------------------------
# Timing


def time_all(backends, inputs, batch, warmup, rounds, log_every=None, block=3):
    """Warm every backend up, then time them interleaved (common.time_interleaved)."""
    live = [b for b in backends if b.prepare(batch)]
    for b in live:
        x = inputs[b.input_kind]
        t = time.perf_counter()
        for _ in range(warmup):
            b.fns[batch](x)
        log(f"  batch {batch}: {b.name} warm ({warmup} runs, {time.perf_counter() - t:.1f}s)")
    fns = {b.name: (lambda f=b.fns[batch], x=inputs[b.input_kind]: f(x)) for b in live}
    return time_interleaved(fns, rounds, block=block, gap_s=GAP_S,
                            on_round=lambda r: log(f"  batch {batch}: round {r}/{rounds}") if log_every and r % log_every == 0 else None)


# --------------------------------------------------------------------------------------------
# Data and models


def reference_set(spec):
    tsv = REFERENCE / "cnndetection" / "labels_and_upstream_logits.tsv"
    if not tsv.is_file():
        return None, None
    rows = [line.rstrip("\n").split("\t") for line in open(tsv) if line.strip() and not line.startswith("#")]
    return [str(REFERENCE / "cnndetection" / r[0]) for r in rows], [int(r[1]) for r in rows]


def load(files, spec):
    from lfm.runtime.preprocess import load_array

    return np.stack([load_array(f, spec) for f in files])


def logits_of(backend, x_u8, spec, batch=8):
    """Logits of a backend over an array of images, in batches of ``batch`` (last one padded)."""
    from lfm.runtime.preprocess import normalize

    out = []
    fn = backend.fns[batch]
    for i in range(0, len(x_u8), batch):
        chunk = x_u8[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        x = chunk if backend.input_kind == "uint8" else normalize(chunk, spec.mean, spec.std)
        out.append(np.asarray(fn(x)).reshape(-1)[:n])
    return np.concatenate(out).astype(np.float64)


def build_models(work: Path, ckpt, spec, calib_files, log_fn):
    from lfm.export.onnx_export import check, metadata, save_atomic, set_metadata, simplify, torch_to_onnx
    from lfm.export.quantize import quantize_int8

    paths = {}
    for variant in ("float", "uint8"):
        s = spec.replace(input=variant)
        t = time.perf_counter()
        proto = check(simplify(torch_to_onnx(ckpt.model, s, variant)))
        set_metadata(proto, metadata(s, precision="fp32", source=None, source_sha256=None))
        paths[f"fp32_{variant}"] = work / f"lfm_fp32_{variant}.onnx"
        save_atomic(proto, paths[f"fp32_{variant}"])
        log_fn(f"exported fp32 {variant} ONNX ({time.perf_counter() - t:.1f}s)")
    paths["int8_uint8"] = work / "lfm_int8_uint8.onnx"
    info = quantize_int8(paths["fp32_uint8"], paths["int8_uint8"], calib_files, spec.replace(input="uint8"))
    log_fn(f"quantised INT8 ({info['count']} calibration images, {info['method']}, profile {info['profile']}, "
           f"{info['seconds']['total']:.1f}s)")
    return paths, info


def conv_macs(model, size: int) -> dict[str, int]:
    """Multiply-accumulates per image of every Conv2d at size x size (module name -> MACs)."""
    import torch

    macs, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            def hook(m, _inp, out, name=name):
                k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
                macs[name] = int(out[0].numel()) * k
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return macs


def int8_roofline(model_path, macs: dict[str, int], threads: int, batch: int = 8, runs: int = 10) -> dict:
    """Where the INT8 time goes, from ONNX Runtime's own profiler: per-conv ms and GMAC/s at
    `batch`, and the images/s ceiling if every convolution ran at the best rate measured and
    nothing else took any time. This is what bounds the INT8 target on a given machine."""
    import collections

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.gettempdir()) / "lfm_bench_profile")
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    Path(sess.end_profiling()).unlink(missing_ok=True)  # drop the warm-up events (and their file)
    so.enable_profiling = True
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, {name: x})
    t = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {name: x})
    wall_ms = (time.perf_counter() - t) / runs * 1000
    profile = Path(sess.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()  # read: nothing left in the temp folder
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[(e["args"].get("op_name", "?"), e["name"][: -len("_kernel_time")])] += e["dur"] / 1000 / (runs + 3)
    convs = []
    for (op, node), ms in per_op.items():
        if "Conv" not in op:
            continue
        last = node.split("/Conv")[0].rsplit("/", 1)[-1]  # '/snet/layer2/layer2.0/Conv_token_5' -> 'layer2.0'
        module = next((m for m in macs if m == last or m.endswith("." + last)), None)
        if module:
            convs.append({"module": module, "ms": round(ms, 3), "gmac": round(macs[module] * batch / 1e9, 3),
                          "gmac_per_s": round(macs[module] * batch / 1e6 / ms, 1)})
    convs.sort(key=lambda c: c["module"])
    best = max(c["gmac_per_s"] for c in convs)
    total_gmac = sum(macs.values()) * batch / 1e9
    conv_ms, all_ms = sum(c["ms"] for c in convs), sum(per_op.values())
    return {"batch": batch, "wall_ms": round(wall_ms, 2), "ops_ms": round(all_ms, 2), "conv_ms": round(conv_ms, 2),
            "gmac_per_image": round(sum(macs.values()) / 1e9, 3), "convs": convs, "best_gmac_per_s": best,
            "ceiling_images_per_s": round(batch / (total_gmac / best), 1),
            "top_ops": [{"op": op, "node": node, "ms": round(ms, 3)} for (op, node), ms in per_op.most_common(12)]}


# --------------------------------------------------------------------------------------------
# Report


def fmt_row(r):
    return f"{r['images_per_s']:7.1f} img/s  p50 {r['p50_ms']:7.2f}  p90 {r['p90_ms']:7.2f}  p99 {r['p99_ms']:7.2f} ms"


def markdown(doc) -> str:
    m = doc["machine"]
    lines = [f"# CPU benchmark ({'quick' if doc['quick'] else 'full'})", "",
             f"`{doc['command']}`", "",
             f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['threads']} threads; ISA {', '.join(m['isa']) or '-'}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             f"Input {SIZE}x{SIZE}, resize policy. Images/s = batch / median latency; ratios against torch eager "
             "measured in the same run, backends interleaved.", ""]
    agree_sets = [s for s in doc["agreement_sets"]]
    head = "| backend | input | precision | b1 img/s | b1 p50/p90/p99 ms | b1 x eager | b8 img/s | b8 p50/p90/p99 ms | b8 x eager |"
    sep = "|---|---|---|---:|---|---:|---:|---|---:|"
    for s in agree_sets:
        head += f" agree {s} | max abs dlogit {s} |"
        sep += "---:|---:|"
    lines += [head, sep]
    for b in doc["backends"]:
        cells = [b["label"], b["input"], b["precision"]]
        if b.get("error"):
            cells += [f"unavailable: {b['error']}"] + [""] * 5
        else:
            for batch in BATCHES:
                r = next((x for x in doc["results"] if x["backend"] == b["name"] and x["batch"] == batch), None)
                if r is None:
                    cells += ["-", "-", "-"]
                else:
                    cells += [f"{r['images_per_s']:.1f}", f"{r['p50_ms']:.1f} / {r['p90_ms']:.1f} / {r['p99_ms']:.1f}",
                              f"{r['ratio_vs_torch_eager']:.2f}x" if r.get("ratio_vs_torch_eager") else "-"]
        for s in agree_sets:
            a = next((x for x in doc["agreement"] if x["backend"] == b["name"] and x["set"] == s), None)
            cells += ([f"{100 * a['agreement']:.1f} % ({a['n'] - a['disagreements']}/{a['n']}); "
                       f"{100 * a['agreement_confident']:.1f} % of {a['n_confident']} with abs logit >= 1",
                       f"{a['max_abs_logit_diff']:.3f}"]
                      if a else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets:", ""]
    lines += [f"- **{t['status']}** {t['target']}: {t['measured']}" for t in doc["targets"]]
    rf = doc.get("int8_roofline")
    if rf:
        lines += ["", f"Where the ONNX Runtime INT8 time goes at batch {rf['batch']} (ONNX Runtime's profiler, "
                  f"{rf['wall_ms']:.1f} ms per call, {rf['ops_ms']:.1f} ms in kernels, {rf['conv_ms']:.1f} ms of it in convolutions; "
                  f"{rf['gmac_per_image']:.2f} GMAC per image):", "",
                  "| convolution | GMAC per batch | ms | GMAC/s |", "|---|---:|---:|---:|"]
        lines += [f"| {c['module']} | {c['gmac']:.3f} | {c['ms']:.2f} | {c['gmac_per_s']:.0f} |" for c in rf["convs"]]
        lines += ["", f"Ceiling: if every convolution ran at the best rate measured here ({rf['best_gmac_per_s']:.0f} GMAC/s) "
                  f"and nothing else took time, batch {rf['batch']} would run at {rf['ceiling_images_per_s']:.0f} images/s."]
    if doc.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (< 2 min): fewer runs, no torch.compile")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=OUTPUT_DIR_HELP)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    p.add_argument("--checkpoint", default=str(REFERENCE / "lfm_upstream.pth"))
    p.add_argument("--extra", action="append", default=[], metavar="NAME=MODEL.onnx",
                   help="another ONNX model to time with ONNX Runtime (e.g. a ModelOpt QDQ model)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--work-dir", default=None, help="where the models are written (default: a temp folder)")
    args = p.parse_args(argv)
    with work_folder(args.work_dir, "lfm-bench-cpu-") as work:
        return measure(args, work)


def measure(args, work: Path) -> int:
    import torch

    from lfm.runtime.preprocess import normalize
    from lfm.train.checkpoint import load_checkpoint
    from lfm.train.make_synthetic import make_synthetic
    from lfm.export.quantize import compare_logits

    torch.set_num_threads(args.threads)
    quick = args.quick
    warmup = 3 if quick else 5
    rounds = {1: 8, 8: 3} if quick else {1: 25, 8: 8}
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = []

    log(f"machine: {args.threads} threads; loading {args.checkpoint}")
    ckpt = load_checkpoint(args.checkpoint)
    ckpt.model.eval()
    spec = ckpt.spec.replace(size=SIZE, policy="resize")

    # Calibration: synthetic train images (+ reference/images); agreement: cnndetection (+ synthetic val).
    n_syn = 60 if quick else 600
    make_synthetic(work / "synthetic", n=n_syn, size=256, seed=0, val_fraction=0.0 if quick else 0.5, force=True, jobs=1)
    from lfm.train.data import find_samples

    train = find_samples(work / "synthetic" / "train", check=False)
    calib_files = [s.path for s in train][:: max(1, len(train) // (32 if quick else 128))]
    if (REFERENCE / "images").is_dir():
        calib_files += sorted(str(f) for f in (REFERENCE / "images").glob("*.png"))
    sets = {}
    files, labels = reference_set(spec)
    if files:
        sets["cnndetection"] = (files, labels)
    else:
        notes.append(f"reference images not found at {REFERENCE}: no cnndetection agreement")
    if not quick:
        val = find_samples(work / "synthetic" / "val", check=False)
        sets["synthetic-val"] = ([s.path for s in val], [s.label for s in val])
    log(f"{len(calib_files)} calibration images; agreement sets: "
        + ", ".join(f"{k} ({len(v[0])})" for k, v in sets.items()))
    paths, qinfo = build_models(work, ckpt, spec, calib_files, log)
    ckpt.model.eval()  # torch.onnx.export restores the wrapper's (training) mode on the way out

    backends = [Backend("torch_eager", "torch eager (upstream checkpoint)", "float", "fp32", torch_backend(ckpt.model, args.threads))]
    if not (quick or args.no_compile):
        backends.append(Backend("torch_compile", "torch.compile (inductor)", "float", "fp32",
                                torch_backend(ckpt.model, args.threads, "default")))
    backends += [
        Backend("ort_fp32_float", "ONNX Runtime fp32", "float", "fp32", ort_backend(paths["fp32_float"], args.threads)),
        Backend("ort_fp32_uint8", "ONNX Runtime fp32", "uint8", "fp32", ort_backend(paths["fp32_uint8"], args.threads)),
        Backend("ort_int8", "ONNX Runtime INT8 QDQ (ours)", "uint8", "int8", ort_backend(paths["int8_uint8"], args.threads)),
    ]
    try:
        import openvino  # noqa: F401

        backends += [
            Backend("ov_fp32_default", "OpenVINO fp32 ONNX, default hint", "uint8", "default hint",
                    openvino_backend(paths["fp32_uint8"], args.threads)),
            Backend("ov_fp32_f32", "OpenVINO fp32 ONNX, f32 forced", "uint8", "f32",
                    openvino_backend(paths["fp32_uint8"], args.threads, "f32")),
            Backend("ov_int8", "OpenVINO on our INT8 QDQ", "uint8", "int8", openvino_backend(paths["int8_uint8"], args.threads)),
        ]
    except ImportError:
        notes.append("OpenVINO not installed (pip install openvino): its rows are missing")
    for spec_str in args.extra:
        name, _, path = spec_str.partition("=")
        import onnx

        kind = "uint8" if onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8 else "float"
        backends.append(Backend(f"extra_{name}", f"ONNX Runtime: {name}", kind, "extra", ort_backend(path, args.threads)))

    # Inputs for timing: real images, tiled to the batch.
    base = load(sets["cnndetection"][0][:8], spec) if "cnndetection" in sets else \
        np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    results = []
    for batch in BATCHES:
        x8 = np.ascontiguousarray(np.resize(base, (batch, SIZE, SIZE, 3)))
        inputs = {"uint8": x8, "float": normalize(x8, spec.mean, spec.std)}
        t = time.perf_counter()
        for b in backends:
            if b.name == "torch_compile" and b.prepare(batch):
                t1 = time.perf_counter()
                b.fns[batch](inputs["float"])
                log(f"  torch.compile: first call at batch {batch} took {time.perf_counter() - t1:.1f}s")
        log(f"batch {batch}: timing {len(backends)} backends, {rounds[batch]} interleaved rounds")
        times = time_all(backends, inputs, batch, warmup, rounds[batch], log_every=max(1, rounds[batch] // 3), block=3)
        eager = None
        for b in backends:
            if b.name not in times:
                continue
            row = {"backend": b.name, "label": b.label, "input": b.input_kind, "precision": b.precision,
                   "batch": batch, **summarize(times[b.name], batch)}
            if b.name == "torch_eager":
                eager = row["images_per_s"]
            results.append(row)
        for row in results:
            if row["batch"] == batch and eager:
                row["ratio_vs_torch_eager"] = round(row["images_per_s"] / eager, 2)
        for row in results:
            if row["batch"] == batch:
                log(f"  {row['backend']:16s} b{batch}: {fmt_row(row)}  x{row.get('ratio_vs_torch_eager', 0):.2f}")
        reps = 20
        t1 = time.perf_counter()
        for _ in range(reps):
            normalize(x8, spec.mean, spec.std)
        norm = (time.perf_counter() - t1) / reps * 1000
        notes.append(f"numpy normalisation of a uint8 batch of {batch} (float-input backends need it on top): {norm:.2f} ms")
        log(f"batch {batch} done in {time.perf_counter() - t:.1f}s")

    # Agreement with torch eager.
    agreement = []
    eager_b = backends[0]
    for set_name, (files, labels) in sets.items():
        x = load(files, spec)
        t = time.perf_counter()
        ref = logits_of(eager_b, x, spec)
        for b in backends:
            if b.error or 8 not in b.fns:
                continue
            test = ref if b is eager_b else logits_of(b, x, spec)
            c = compare_logits(ref, test, spec.threshold, labels)
            agreement.append({"backend": b.name, "set": set_name, "n": c["n"], "agreement": c["agreement"],
                              "disagreements": c["disagreements"], "n_confident": c["n_confident"],
                              "agreement_confident": c["agreement_confident"], "max_abs_logit_diff": round(c["max_abs_logit_diff"], 4),
                              "mean_abs_logit_diff": round(c["mean_abs_logit_diff"], 4),
                              "fake_rate": round(c["fake_rate_test"], 4), "ap": round(c["ap_test"], 4) if "ap_test" in c else None})
        log(f"agreement on {set_name} ({len(files)} images) in {time.perf_counter() - t:.1f}s")
        fr = float(np.mean(ref > 0))
        if fr < 0.05 or fr > 0.95:
            notes.append(f"{set_name}: torch eager calls {100 * fr:.1f} % of the images fake, so agreement there "
                         "tests few decisions near the boundary")

    # Targets.
    def res(name, batch):
        return next((r for r in results if r["backend"] == name and r["batch"] == batch), None)

    def agr(name):
        rows = [a for a in agreement if a["backend"] == name]
        return min((a["agreement"] for a in rows), default=None), rows

    targets = []
    fp32 = [(n, res(n, 1)) for n in ("ort_fp32_float", "ort_fp32_uint8")]
    fp32 = [(n, r) for n, r in fp32 if r and r.get("ratio_vs_torch_eager")]
    if fp32:
        best = max(fp32, key=lambda nr: nr[1]["ratio_vs_torch_eager"])
        targets.append({"target": f"ONNX Runtime fp32 >= {TARGET_FP32_RATIO:g}x torch eager at batch 1",
                        "status": "PASS" if best[1]["ratio_vs_torch_eager"] >= TARGET_FP32_RATIO else "FAIL",
                        "measured": "; ".join(f"{n}: {r['ratio_vs_torch_eager']:.2f}x ({r['images_per_s']:.1f} img/s)" for n, r in fp32)})
    for name in ("ort_int8", "ov_int8"):
        r = res(name, 8)
        if r is None:
            continue
        a, rows = agr(name)
        ok = r["images_per_s"] >= TARGET_INT8_IPS and a is not None and a >= TARGET_AGREEMENT
        targets.append({"target": f"{name}: INT8 >= {TARGET_INT8_IPS:g} img/s at batch 8 with >= {100 * TARGET_AGREEMENT:g} % agreement",
                        "status": "PASS" if ok else "FAIL",
                        "measured": f"{r['images_per_s']:.1f} img/s; agreement "
                                    + (", ".join(f"{x['set']} {100 * x['agreement']:.1f} %" for x in rows) or "not measured")})
    roofline = None
    try:
        roofline = int8_roofline(paths["int8_uint8"], conv_macs(ckpt.model, SIZE), args.threads)
        log(f"INT8 roofline: best conv {roofline['best_gmac_per_s']:.0f} GMAC/s, ceiling {roofline['ceiling_images_per_s']:.0f} img/s at b8")
    except Exception as e:  # a profiler format change must not lose the timed results above
        notes.append(f"INT8 roofline not measured: {type(e).__name__}: {e}")
    log("targets: " + "; ".join(f"{t['status']} {t['target']} ({t['measured']})" for t in targets))

    doc = {"benchmark": "bench_cpu", "command": "python benchmarks/bench_cpu.py" + (" --quick" if quick else "")
           + "".join(f" --extra {e}" for e in args.extra),
           "quick": quick, "machine": machine(args.threads),
           "settings": {"size": SIZE, "policy": "resize", "batches": list(BATCHES), "warmup": warmup, "rounds": rounds,
                        "timed": "one model call on an input already in the backend's format; per round 1 + 3 calls per backend, the first not counted",
                        "ort": "CPUExecutionProvider, ORT_ENABLE_ALL, sequential, intra_op_num_threads=threads",
                        "openvino": "CPU, PERFORMANCE_HINT=LATENCY, INFERENCE_NUM_THREADS=threads, static input shape per batch",
                        "calibration_images": len(calib_files)},
           "quantization": {k: qinfo[k] for k in ("count", "method", "percentile", "profile", "activations", "weights",
                                                  "equalization", "exact_first_layer", "excluded", "tensorrt_compatible")},
           "backends": [{"name": b.name, "label": b.label, "input": b.input_kind, "precision": b.precision,
                         **({"error": b.error} if b.error else {})} for b in backends],
           "agreement_sets": list(sets), "results": results, "agreement": agreement, "targets": targets,
           "int8_roofline": roofline, "notes": notes, "seconds": round(time.perf_counter() - T0, 1)}
    write_report(out_dir, "bench_cpu", doc, markdown(doc))
    log(f"wrote {out_dir / 'bench_cpu.json'} and {out_dir / 'bench_cpu.md'} in {doc['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    run_main(main)
