"""Where the GPU time of one LFM forward pass goes, stage by stage (needs an NVIDIA GPU).

    python benchmarks/profile_gpu.py [--batch 256] [--size 256] [--output-dir benchmarks/results]

Two pipelines, both float16 and channels-last, BatchNorm folded, max-pool before ReLU:
  cudnn   the Triton NPR kernel (uint8 -> fp16 NHWC), then every convolution through cuDNN
  triton  the fused Triton stem (NPR + conv1 + pool + ReLU), then cuDNN convolutions from layer 2
          on, each followed by the Triton max_pool_relu
both ending with the salience conv, the Top-K kernel and the linear layer. Each stage runs on the
previous stage's real output and is timed alone with CUDA events (median of rounds of
back-to-back calls after a warm-up); beside each, its FLOPs and its fewest bytes (inputs read
once, output written once) give the rates it reached. Writes profile_gpu.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, time_cuda  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    """Median ms per call (CUDA events; benchmarks/common.py)."""
    return statistics.median(time_cuda(fn, rounds=15, inner=10, warmup=5))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--checkpoint", default=None, help="default: a random-weight model (timing only)")
    p.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("profile_gpu: no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    from lfm.kernels.max_pool_relu import max_pool_relu
    from lfm.kernels.npr import npr
    from lfm.kernels.npr_stem import npr_stem
    from lfm.kernels.triton_lfm import TritonLFM
    from lfm.kernels.top_k_pool import top_k_pool
    from lfm.train.model import build_model

    if args.checkpoint:
        from lfm.train.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint).model
    else:
        torch.manual_seed(0)
        model = build_model()
    model = model.eval().cuda()
    net = TritonLFM(model).cuda().eval()
    scale = tuple(1.0 / (255.0 * s) for s in (0.229, 0.224, 0.225))
    b, n = args.batch, args.size
    x = torch.randint(0, 256, (b, n, n, 3), dtype=torch.uint8, device="cuda")
    convs = net.snet.convs
    conv1 = torch.nn.Conv2d(3, 64, 2).cuda().half().to(memory_format=torch.channels_last)
    from lfm.train.model import FusedSNet

    conv1.load_state_dict(FusedSNet.from_snet(model.snet).convs[0].state_dict())  # the folded conv1 (cudnn path)

    def bytes_of(*ts):
        return sum(t.numel() * t.element_size() for t in ts)

    rows = []

    def stage(pipeline, name, fn, inputs, flop=0.0):
        with torch.inference_mode():
            out = fn()
            ms = timed(fn)
        moved = bytes_of(*inputs) + bytes_of(out)
        rows.append({"pipeline": pipeline, "stage": name, "ms": ms, "gflop": flop / 1e9, "mb": moved / 1e6,
                     "tflop_per_s": flop / ms / 1e9, "gb_per_s": moved / ms / 1e6})
        log(f"{pipeline:6s} {name:28s} {ms:8.3f} ms")
        return out

    def conv_flop(conv, out):
        return 2.0 * out.numel() * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]

    with torch.inference_mode():
        # cudnn pipeline
        r = stage("cudnn", "npr (Triton, fp16 NHWC)",
                  lambda: npr(x, scale, out_dtype="float16", out_layout="NHWC").permute(0, 3, 1, 2), [x])
        y = conv1(r)
        y = stage("cudnn", "conv1 3->64 (cuDNN)", lambda: conv1(r), [r, conv1.weight], conv_flop(conv1, y))
        y = stage("cudnn", "max-pool 1", lambda: F.max_pool2d(y, 2, 2), [y])
        h = stage("cudnn", "relu 1", lambda: F.relu(y), [y])
        cudnn_rest = h
        # triton pipeline
        h2 = stage("triton", "stem (Triton: NPR+conv1+pool+relu)",
                   lambda: npr_stem(x, net.stem_weight, net.stem_bias).permute(0, 3, 1, 2),
                   [x], 2.0 * 255 * 255 * 64 * 9 * b * (n / 256) ** 2)
        assert h2.shape == cudnn_rest.shape, (h2.shape, cudnn_rest.shape)
        # shared tail: layers 2-4, salience, top-k, fc
        h = h2
        for i in (1, 2, 3):
            conv = convs[i]
            y = conv(h)
            y = stage("shared", f"conv{i + 1} {conv.in_channels}->{conv.out_channels} (cuDNN)", lambda c=conv, t=h: c(t),
                      [h, conv.weight], conv_flop(conv, y))
            if i < 3:
                stage("triton", f"max_pool_relu {i + 1} (Triton)", lambda t=y: max_pool_relu(t), [y])
                y = stage("cudnn", f"max-pool {i + 1}", lambda t=y: F.max_pool2d(t, 2, 2), [y])
                h = stage("cudnn", f"relu {i + 1}", lambda t=y: F.relu(t), [y])
            else:
                h = stage("shared", f"relu {i + 1}", lambda t=y: F.relu(t), [y])
        maps = net.salience(h)
        maps = stage("shared", "salience 512->64 (cuDNN)", lambda: net.salience(h), [h, net.salience.weight],
                     conv_flop(net.salience, maps))
        feats = stage("shared", "top_k_pool (Triton)", lambda: top_k_pool(maps, net.k), [maps])
        stage("shared", "fc 1024->1", lambda: net.fc(feats), [feats, net.fc.weight], 2.0 * feats.numel())
        whole = timed(lambda: net(x))
    total = {p: sum(r["ms"] for r in rows if r["pipeline"] in (p, "shared")) for p in ("cudnn", "triton")}
    doc = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "batch": b, "size": n, "rows": rows, "sum_of_stages_ms": total,
           "triton_pipeline_whole_ms": whole, "triton_pipeline_images_per_s": b / whole * 1e3}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "profile_gpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# Where the GPU time goes (`python benchmarks/profile_gpu.py`)", "",
             f"{doc['gpu']}, torch {doc['torch']}, batch {b}, {n} x {n}, float16 channels-last; {doc['date']}.", "",
             "| pipeline | stage | ms | GFLOP | MB moved (min) | TFLOP/s | GB/s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pipeline']} | {r['stage']} | {r['ms']:.3f} | {r['gflop']:.0f} | {r['mb']:.0f} | "
                     f"{r['tflop_per_s']:.0f} | {r['gb_per_s']:.0f} |")
    lines += ["", f"Sum of stages: cudnn pipeline {total['cudnn']:.2f} ms, triton pipeline {total['triton']:.2f} ms; "
                  f"the triton pipeline as one call (TritonLFM, no CUDA graph): {whole:.2f} ms = "
                  f"{doc['triton_pipeline_images_per_s']:,.0f} images/s."]
    (args.output_dir / "profile_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
