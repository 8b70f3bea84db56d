"""Load test of runtime/serve.py: Triton Inference Server (PyTriton) under closed-loop clients.

    python benchmarks/bench_serve.py [--model lfm.onnx] [--images DIR] [--concurrency 1,8,32,64]
                                     [--duration 10] [--max-requests 20000] [--protocol grpc|http]
                                     [--quick] [--output-dir benchmarks/results]

Starts serve.py on free loopback ports (nothing else is contacted), then for each concurrency
level runs that many client threads for --duration seconds (after a 1 s warm-up that is not
counted), each sending one image file per request and waiting for the answer (a closed loop),
bounded by --max-requests per level. Every answer is checked against the offline runtime (the
Detector in this process, same model, same files): zero failed requests and identical scores
are the pass condition. Reported per level: requests/s (= images/s), p50/p90/p99 latency as
the client sees it, and from Triton's Prometheus counters the mean batch the dynamic batcher
formed and the mean queue and compute time per request. The offline Detector's own
throughput on the same files is measured first, for scale.

Client and server share this machine's cores, and other work on a shared machine moves the
figures: the load average at start and end is recorded beside them.

Default model: upstream's checkpoint (../shared/reference) exported to the uint8 fp32 graph (a
temp folder); default images: the 102 reference JPEGs, else generated ones. --quick: levels 1
and 8, 2 s each. Writes bench_serve.json and bench_serve.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import numpy
    import onnxruntime

    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__}
    for mod in ("tritonclient", "pytriton"):
        try:
            from importlib.metadata import version

            versions[mod] = version({"pytriton": "nvidia-pytriton"}.get(mod, mod))
        except Exception:
            pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "versions": versions}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def default_model(work: Path) -> str:
    ckpt = REFERENCE / "lfm_upstream.pth"
    out = work / "upstream_uint8.onnx"
    if ckpt.exists():
        cmd = [sys.executable, str(ROOT / "export" / "to_onnx.py"), str(ckpt), "-o", str(out), "--input", "uint8"]
        log("exporting: " + " ".join(cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return str(out)
    log(f"no {ckpt}: exporting a random-weight LFM (same speed, meaningless scores)")
    import torch

    from lfm.export.onnx_export import check, metadata, save_atomic, set_metadata, simplify, torch_to_onnx
    from lfm.runtime.spec import ModelSpec
    from lfm.train.model import build_model

    torch.manual_seed(0)
    proto = check(simplify(torch_to_onnx(build_model().eval(), ModelSpec(input="uint8", layout="NHWC"), "uint8")))
    set_metadata(proto, metadata(ModelSpec(input="uint8", layout="NHWC"), precision="fp32", source=None,
                                 source_sha256=None))
    save_atomic(proto, out)
    return str(out)


def default_images(work: Path) -> list[Path]:
    ref = REFERENCE / "cnndetection"
    if ref.is_dir():
        files = sorted(p for p in ref.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            return files
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(32):
        p = work / f"synthetic_{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(p)
    return out


def metrics(port: int) -> dict[str, float]:
    """Triton's cumulative counters for model lfm."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("nv_inference") and 'model="lfm"' in line:
            name = line.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def run_level(url: str, concurrency: int, duration: float, max_requests: int, blobs, expected, warmup: float):
    from lfm.runtime.client import LfmClient, ServerError

    lat, failures, mismatches = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    t_begin = [0.0]
    sent = [0]

    def worker(k):
        rng = np.random.default_rng(k)
        with LfmClient(url, timeout=120) as c:
            c.output_names()
            start.wait()
            while True:
                now = time.perf_counter()
                if now >= t_begin[0] + duration:
                    return
                with lock:
                    if now >= t_begin[0] and sent[0] >= max_requests:
                        return
                    counted = now >= t_begin[0]
                    sent[0] += counted
                i = int(rng.integers(len(blobs)))
                name, blob = blobs[i]
                t = time.perf_counter()
                try:
                    (r,) = c.score_bytes([blob], [name])
                except ServerError as e:
                    r = None
                    err = str(e)
                dt = time.perf_counter() - t
                if not counted:
                    continue
                with lock:
                    if r is None:
                        failures.append(err)
                    elif not r.ok:
                        failures.append(r.error)
                    else:
                        lat.append(dt)
                        ref = expected[name]
                        if not (r.logit == ref.logit and r.score == ref.score and r.label == ref.label):
                            mismatches.append((name, r.logit, ref.logit))

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    t_begin[0] = time.perf_counter() + warmup
    start.wait()
    for t in threads:
        t.join(duration + warmup + 180)
    elapsed = min(time.perf_counter(), t_begin[0] + duration) - t_begin[0]
    return lat, failures, mismatches, elapsed


def render_md(result: dict) -> str:
    st, m = result["settings"], result["machine"]
    spec, srv = st["spec"], st["server"]
    load = result["load_average"]
    md = [
        "# bench_serve: LFM behind Triton Inference Server (PyTriton), loopback load test",
        "",
        f"`{result['command']}` on {m['cpu']}, {m['usable_cpus']} usable CPUs; load average {load['start']} at start, "
        f"{load['end']} at end (client threads and server share the cores; other work on a shared machine moves "
        "these figures).",
        "",
        f"Model: {st['model']} ({spec['input']}, {spec['policy']} {spec['size']}); {st['images']}, one encoded image "
        f"per request over {st['protocol']}; server: {srv['instances']} instances, max batch {srv['max_batch_size']}, "
        f"preferred {srv['preferred_batch_sizes']}, queue delay {srv['max_queue_delay_us']} us. "
        f"{st['seconds_per_level']:g} s per level after a {st['warmup_s']:g} s warm-up. Offline Detector on the same "
        f"files: {result['offline_detector_ips']:.1f} images/s.",
        "",
        "Latency as the client sees it; mean batch, queue and compute from Triton's counters (compute is that of the "
        "whole batch a request rode in).",
        "",
        "| clients | requests | failed | scores differing | req/s | p50 ms | p90 ms | p99 ms | mean batch | queue ms | batch compute ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["results"]:
        md.append(f"| {r['concurrency']} | {r['requests']} | {r['failed']} | {r['mismatched']} | {r['throughput_rps']} | "
                  f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['mean_batch']} | {r['server_queue_ms']} | "
                  f"{r['server_compute_ms']} |")
    md += ["", "Pass (no failed request, every score identical to the offline runtime): "
           f"**{'yes' if result['pass'] else 'no'}**.", ""]
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_serve.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="ONNX model to serve (default: upstream's, exported to a temp folder)")
    p.add_argument("--images", help="folder of images to send (default: the reference JPEGs)")
    p.add_argument("--concurrency", default=None, help="comma-separated client counts (default 1,8,32,64)")
    p.add_argument("--duration", type=float, default=None, help="seconds per level (default 10; --quick 2)")
    p.add_argument("--max-requests", type=int, default=20000, help="at most this many counted requests per level")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--preferred-batch-sizes", default="8,16")
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per instance (serve.py's default)")
    p.add_argument("--quick", action="store_true", help="levels 1 and 8, 2 s each")
    p.add_argument("--output-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    levels = [int(x) for x in (args.concurrency or ("1,8" if args.quick else "1,8,32,64")).split(",")]
    duration = args.duration or (2.0 if args.quick else 10.0)
    load_start = loadavg()

    from lfm.runtime.detector import Detector

    work = Path(tempfile.mkdtemp(prefix="lfm-bench-serve-"))
    model = args.model or default_model(work)
    files = (sorted(p for p in Path(args.images).iterdir() if p.is_file()) if args.images else default_images(work))
    blobs = [(str(f), f.read_bytes()) for f in files]

    # Offline reference: the same files through the Detector, and its throughput for scale.
    with Detector(model=model) as det:
        expected = {r.path: r for r in det.predict([name for name, _ in blobs])}
        bad = [r for r in expected.values() if not r.ok]
        if bad:
            log(f"error: {len(bad)} reference images fail offline, e.g. {bad[0]}")
            return 2
        t = time.perf_counter()
        rounds = 3 if args.quick else 5
        for _ in range(rounds):
            det.predict([name for name, _ in blobs])
        offline_ips = rounds * len(blobs) / (time.perf_counter() - t)
        spec = det.spec
    log(f"offline Detector: {offline_ips:.1f} images/s ({len(blobs)} files, batch 16, decoding included)")

    http, grpc, mport = free_ports(3)
    cmd = [sys.executable, str(ROOT / "runtime" / "serve.py"), "--model", model, "--host", "127.0.0.1",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(mport),
           "--instances", str(args.instances), "--max-batch-size", str(args.max_batch_size),
           "--preferred-batch-sizes", args.preferred_batch_sizes, "--max-queue-delay-us", str(args.max_queue_delay_us)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    server_log = work / "serve.log"
    log("starting: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=open(server_log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"grpc://127.0.0.1:{grpc}" if args.protocol == "grpc" else f"http://127.0.0.1:{http}"
    rows = []
    try:
        from lfm.runtime.client import LfmClient

        deadline = time.monotonic() + 180
        with LfmClient(f"http://127.0.0.1:{http}", timeout=5) as c:
            while not (c.ready() and "serving model" in server_log.read_text(errors="replace")):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log("error: server did not start:\n" + server_log.read_text(errors="replace")[-3000:])
                    return 1
                time.sleep(0.25)
        for n in levels:
            before = metrics(mport)
            lat, failures, mismatches, elapsed = run_level(url, n, duration, args.max_requests, blobs, expected,
                                                           warmup=1.0)
            after = metrics(mport)
            d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            lat_ms = np.array(lat) * 1e3
            executions = d.get("nv_inference_exec_count", 0.0)
            requests = d.get("nv_inference_request_success", 0.0)
            row = {
                "concurrency": n, "seconds": round(elapsed, 2), "requests": len(lat) + len(failures),
                "failed": len(failures), "mismatched": len(mismatches),
                "throughput_rps": round(len(lat) / elapsed, 2) if elapsed > 0 else 0.0,
                "p50_ms": round(float(np.percentile(lat_ms, 50)), 2) if len(lat) else None,
                "p90_ms": round(float(np.percentile(lat_ms, 90)), 2) if len(lat) else None,
                "p99_ms": round(float(np.percentile(lat_ms, 99)), 2) if len(lat) else None,
                "mean_batch": round(d.get("nv_inference_count", 0.0) / executions, 2) if executions else None,
                "server_queue_ms": round(d.get("nv_inference_queue_duration_us", 0.0) / requests / 1e3, 2) if requests else None,
                "server_compute_ms": round(d.get("nv_inference_compute_infer_duration_us", 0.0) / requests / 1e3, 2)
                if requests else None,
                "first_failures": failures[:3], "first_mismatches": [list(m) for m in mismatches[:3]],
            }
            rows.append(row)
            log(f"concurrency {n:3d}: {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                f"batch {row['mean_batch']}  failed {row['failed']}  mismatched {row['mismatched']}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log(f"server exited with {proc.returncode}")

    ok = bool(rows) and all(r["failed"] == 0 and r["mismatched"] == 0 for r in rows)
    result = {
        "benchmark": "bench_serve",
        "command": "python benchmarks/bench_serve.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "quick": args.quick,
        "machine": machine(),
        "load_average": {"start": load_start, "end": loadavg()},
        "settings": {
            "model": "upstream checkpoint, uint8 fp32 graph" if not args.model else os.path.basename(model),
            "spec": {"input": spec.input, "policy": spec.policy, "size": spec.size},
            "images": f"{len(blobs)} files" + (" (reference cnndetection JPEGs)" if not args.images else ""),
            "protocol": args.protocol, "levels": levels, "seconds_per_level": duration, "warmup_s": 1.0,
            "max_requests_per_level": args.max_requests, "images_per_request": 1,
            "server": {"instances": args.instances, "max_batch_size": args.max_batch_size,
                       "preferred_batch_sizes": args.preferred_batch_sizes,
                       "max_queue_delay_us": args.max_queue_delay_us, "threads_per_instance": args.threads or "cores / instances"},
            "loopback": "127.0.0.1 only; client and server on the same cores",
        },
        "offline_detector_ips": round(offline_ips, 2),
        "results": rows,
        "pass": ok,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serve.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench_serve.md").write_text(render_md(result))
    log(f"wrote {out / 'bench_serve.json'} and {out / 'bench_serve.md'}; pass: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
