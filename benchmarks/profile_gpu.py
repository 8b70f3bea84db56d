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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--checkpoint", default=None, help="default: a random-weight model (timing only)")
    p.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    return p.parse_args(argv)


def bytes_of(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def conv_flop(conv, out) -> float:
    return 2.0 * out.numel() * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]


class Stages:
    """The profile's rows: each stage runs once for its output (the next stage's input), then is
    timed alone; its FLOPs and fewest bytes moved give the rates it reached."""

    def __init__(self):
        self.rows = []

    def __call__(self, pipeline: str, name: str, fn, inputs, flop: float = 0.0):
        import torch

        with torch.inference_mode():
            out = fn()
            ms = timed(fn)
        moved = bytes_of(*inputs) + bytes_of(out)
        self.rows.append({"pipeline": pipeline, "stage": name, "ms": ms, "gflop": flop / 1e9, "mb": moved / 1e6,
                          "tflop_per_s": flop / ms / 1e9, "gb_per_s": moved / ms / 1e6})
        log(f"{pipeline:6s} {name:28s} {ms:8.3f} ms")
        return out


def load_models(checkpoint: str | None):
    """(the PyTorch model, its TritonLFM), on the GPU, in eval mode; random weights (seed 0) by default."""
    import torch

    from lfm.kernels.triton_lfm import TritonLFM
    from lfm.train.model import build_model

    if checkpoint:
        from lfm.train.checkpoint import load_checkpoint

        model = load_checkpoint(checkpoint).model
    else:
        torch.manual_seed(0)
        model = build_model()
    model = model.eval().cuda()
    return model, TritonLFM(model).cuda().eval()


def folded_conv1(model):
    """conv1 with BatchNorm folded, fp16 channels-last: the cudnn pipeline's first convolution."""
    import torch

    from lfm.train.model import FusedSNet

    conv1 = torch.nn.Conv2d(3, 64, 2).cuda().half().to(memory_format=torch.channels_last)
    conv1.load_state_dict(FusedSNet.from_snet(model.snet).convs[0].state_dict())
    return conv1


def cudnn_head(stage: Stages, x, conv1):
    """The cudnn pipeline up to layer 2: the Triton NPR kernel, conv1, max-pool, ReLU."""
    import torch.nn.functional as F

    from lfm.kernels.npr import npr

    scale = tuple(1.0 / (255.0 * s) for s in (0.229, 0.224, 0.225))
    r = stage("cudnn", "npr (Triton, fp16 NHWC)",
              lambda: npr(x, scale, out_dtype="float16", out_layout="NHWC").permute(0, 3, 1, 2), [x])
    y = conv1(r)
    y = stage("cudnn", "conv1 3->64 (cuDNN)", lambda: conv1(r), [r, conv1.weight], conv_flop(conv1, y))
    y = stage("cudnn", "max-pool 1", lambda: F.max_pool2d(y, 2, 2), [y])
    return stage("cudnn", "relu 1", lambda: F.relu(y), [y])


def triton_head(stage: Stages, x, triton_model):
    """The triton pipeline up to layer 2: the fused stem (NPR + conv1 + pool + ReLU)."""
    from lfm.kernels.npr_stem import npr_stem

    b, n = x.shape[0], x.shape[1]
    return stage("triton", "stem (Triton: NPR+conv1+pool+relu)",
                 lambda: npr_stem(x, triton_model.stem_weight, triton_model.stem_bias).permute(0, 3, 1, 2),
                 [x], 2.0 * 255 * 255 * 64 * 9 * b * (n / 256) ** 2)


def shared_tail(stage: Stages, triton_model, h) -> None:
    """Layers 2-4 (cuDNN convolutions; pool and ReLU each pipeline's way), salience, Top-K, fc."""
    import torch.nn.functional as F

    from lfm.kernels.max_pool_relu import max_pool_relu
    from lfm.kernels.top_k_pool import top_k_pool

    convs = triton_model.snet.convs
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
    salience = triton_model.salience
    maps = stage("shared", "salience 512->64 (cuDNN)", lambda: salience(h), [h, salience.weight],
                 conv_flop(salience, salience(h)))
    feats = stage("shared", "top_k_pool (Triton)", lambda: top_k_pool(maps, triton_model.k), [maps])
    stage("shared", "fc 1024->1", lambda: triton_model.fc(feats), [feats, triton_model.fc.weight], 2.0 * feats.numel())


def write_report(doc: dict, output_dir: Path) -> None:
    """profile_gpu.json and profile_gpu.md in --output-dir; the table on stdout."""
    rows, total, whole = doc["rows"], doc["sum_of_stages_ms"], doc["triton_pipeline_whole_ms"]
    b, n = doc["batch"], doc["size"]
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "profile_gpu.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# Where the GPU time goes (`python benchmarks/profile_gpu.py`)", "",
             f"{doc['gpu']}, torch {doc['torch']}, batch {b}, {n} x {n}, float16 channels-last; {doc['date']}.", "",
             "| pipeline | stage | ms | GFLOP | MB moved (min) | TFLOP/s | GB/s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pipeline']} | {r['stage']} | {r['ms']:.3f} | {r['gflop']:.0f} | {r['mb']:.0f} | "
                     f"{r['tflop_per_s']:.0f} | {r['gb_per_s']:.0f} |")
    lines += ["", f"Sum of stages: cudnn pipeline {total['cudnn']:.2f} ms, triton pipeline {total['triton']:.2f} ms; "
                  f"the triton pipeline as one call (TritonLFM, no CUDA graph): {whole:.2f} ms = "
                  f"{doc['triton_pipeline_images_per_s']:,.0f} images/s."]
    (output_dir / "profile_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("profile_gpu: no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    model, triton_model = load_models(args.checkpoint)
    conv1 = folded_conv1(model)
    b, n = args.batch, args.size
    x = torch.randint(0, 256, (b, n, n, 3), dtype=torch.uint8, device="cuda")
    stage = Stages()
    with torch.inference_mode():
        cudnn_out = cudnn_head(stage, x, conv1)
        h = triton_head(stage, x, triton_model)
        assert h.shape == cudnn_out.shape, (h.shape, cudnn_out.shape)
        shared_tail(stage, triton_model, h)
        whole = timed(lambda: triton_model(x))
    total = {p: sum(r["ms"] for r in stage.rows if r["pipeline"] in (p, "shared")) for p in ("cudnn", "triton")}
    write_report({"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": torch.cuda.get_device_name(0),
                  "torch": torch.__version__, "batch": b, "size": n, "rows": stage.rows, "sum_of_stages_ms": total,
                  "triton_pipeline_whole_ms": whole, "triton_pipeline_images_per_s": b / whole * 1e3},
                 args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
