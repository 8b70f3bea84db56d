"""Train LFM. One file, one loop; the same script runs on one CPU, one GPU, or under torchrun.

    python train/train.py --data DIR [--out runs/lfm] [options]
    torchrun --nproc_per_node=N train/train.py --data DIR ...      # DistributedDataParallel

DIR holds ``train/`` and ``val/`` in the ForenSynths layout (``<subset>/{0_real,1_fake}/*``),
or is itself such a folder, in which case ``--val-split`` of it is held out for validation.
Recipe as upstream: Adam (lr 1e-4, betas 0.9/0.999), BCE-with-logits plus ``--random-k-weight``
times the Random-K auxiliary loss, lr x0.9 every ``--delr-freq`` epochs, validation every epoch,
early stop after ``--patience`` epochs without a better validation accuracy.

Writes OUT/best.pt, OUT/last.pt (atomically) and OUT/metrics.jsonl (one line per epoch).
"""
from __future__ import annotations

import gc
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: don't let train/'s modules shadow libraries
    sys.path.pop(0)

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from lfm.runtime.cli import ArgumentParser, run, stop_status, stop_word  # noqa: E402
from lfm.runtime.files import overwrite_refusal, same_file
from lfm.runtime.spec import ModelSpec
from lfm.train.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_atomic
from lfm.train.data import (
    BadFileLog,
    DatasetError,
    EvalTransform,
    ImageDataset,
    TrainTransform,
    balanced_weights,
    collate_skip_bad,
    find_samples,
)
from lfm.train.evaluate import format_table, plain_warnings, predict, subset_metrics
from lfm.train.model import LFMConfig, build_model, check_input_size


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    a = p.add_argument
    a("--data", required=True, help="dataset root (see above)")
    a("--out", default="runs/lfm", help="output folder for checkpoints and the metrics log")
    a("--classes", default=None, help="comma-separated subsets to train and validate on (default: all)")
    a("--val-split", type=float, default=0.1, help="fraction held out when DATA has no train/ and val/")
    # model
    a("--top-k", type=int, default=16)
    a("--pooling", choices=("topk", "gap"), default="topk")
    a("--dropout", choices=("linear", "constant", "none"), default="linear",
      help="rank-based linear dropout (paper), upstream's constant rate, or none")
    a("--drop-min", type=float, default=0.1)
    a("--drop-max", type=float, default=0.3)
    a("--random-k-weight", type=float, default=0.02, help="weight of the Random-K auxiliary loss (0 disables it)")
    a("--init", default=None, help="start from these weights (ours or upstream's .pth)")
    # optimisation
    a("--epochs", type=int, default=100)
    a("--batch-size", type=int, default=32, help="per process")
    a("--lr", type=float, default=1e-4)
    a("--beta1", type=float, default=0.9)
    a("--delr-freq", type=int, default=10, help="multiply the learning rate by 0.9 every N epochs")
    a("--patience", type=int, default=5, help="stop after N epochs without a better validation accuracy")
    a("--max-minutes", type=float, default=None, help="stop training after this wall time (then validate and save)")
    a("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    a("--steps-per-epoch", type=int, default=None, help="default: one pass over the training set")
    # data
    a("--load-size", type=int, default=256, help="resize to this square before cropping (0: no resize)")
    a("--crop-size", type=int, default=224)
    a("--no-flip", action="store_true")
    a("--blur-prob", type=float, default=0.0)
    a("--blur-sig", type=float, nargs=2, default=(0.0, 3.0))
    a("--jpg-prob", type=float, default=0.0)
    a("--jpg-qual", type=int, nargs=2, default=(30, 100))
    a("--eval-policy", choices=("resize", "center-crop", "none"), default="resize")
    a("--eval-size", type=int, default=256)
    a("--workers", type=int, default=2, help="data-loading processes per training process")
    # run
    a("--seed", type=int, default=0)
    a("--device", default="auto", help="auto | cpu | cuda")
    a("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    a("--resume", nargs="?", const="auto", default=None, help="resume from a checkpoint (default OUT/last.pt)")
    a("--threads", type=int, default=None, help="torch intra-op threads per process (default: cores / processes)")
    a("--progress", choices=("auto", "bar", "none"), default="auto", help="progress bars (auto: on a terminal)")
    return p.parse_args(argv)


def log0(*msg):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*msg, flush=True)


def split_samples(root, classes, val_split, seed):
    """(train, val) samples: root/train + root/val if both exist, else a seeded hold-out."""
    if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val")):
        return find_samples(os.path.join(root, "train"), classes), find_samples(os.path.join(root, "val"), classes)
    samples = find_samples(root, classes)
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, int(round(len(samples) * val_split)))
    return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]


def overwrite_problem(out: str, init: str | None, resume: str | None, samples) -> str | None:
    """The shared guard on what training writes into --out (best.pt, last.pt, the metrics log and
    its .old): none may be --init, a data file, or a --resume checkpoint other than OUT/last.pt
    (the state a resumed run continues, loaded before it is replaced)."""
    last = os.path.join(out, "last.pt")
    written = [os.path.join(out, name) for name in ("best.pt", "metrics.jsonl", "metrics.jsonl.old")]
    if not (resume and same_file(resume, last)):
        written.append(last)
    inputs = [("the --init checkpoint", init), ("the --resume checkpoint", resume), *(s.path for s in samples)]
    return overwrite_refusal(written, inputs, "--out")


def epoch_indices(labels, n, seed, epoch, rank, world):
    """Class-balanced draws for one epoch (real and fake equally likely), the same on every
    process and then split between them: rank r takes draws r, r + world, ..."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    draws = torch.multinomial(balanced_weights(labels), n * world, replacement=True, generator=g)
    return draws[rank::world].tolist()


def average_bn_buffers(model, world):
    """Average BatchNorm running statistics over processes, so every rank holds identical weights."""
    if not dist.is_initialized():
        return
    for name, buf in model.named_buffers():
        if ("running_mean" in name or "running_var" in name) and buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world


def replicas_identical(model, world) -> bool:
    """True when every process holds bit-identical parameters and buffers (checked after training)."""
    flat = torch.cat([t.detach().double().flatten() for t in list(model.parameters()) + list(model.buffers())])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    return all(torch.equal(copies[0], c) for c in copies[1:])


def evaluate(model, loader, val_samples, device, amp, bad_log, world):
    indices, _, logits = predict(model, loader, device, amp=amp,
                                 on_bad=lambda i: bad_log.add_indices(loader.dataset, [i]))
    if dist.is_initialized():  # every rank scored a shard: gather all of them
        parts = [None] * world
        dist.all_gather_object(parts, (indices, logits))
        indices = np.concatenate([p[0] for p in parts])
        logits = np.concatenate([p[1] for p in parts])
    return subset_metrics(val_samples, indices, logits)


class SetupError(Exception):
    """A refusal before training starts (bad data, a bad checkpoint, an unwritable --out): one line, exit 2."""


@dataclass
class Processes:
    """This process's place in the run: rank ``rank`` of ``world`` (one without torchrun), its device, and
    whether it trains in mixed precision."""
    distributed: bool  # launched by torchrun (even with one process)
    world: int
    rank: int
    device: torch.device
    amp: bool


def setup_processes(args) -> Processes:
    """Join torchrun's process group, pick the device and the threads, seed every generator (per rank)."""
    distributed = "RANK" in os.environ
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    seed = args.seed + rank
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    return Processes(distributed, world, rank, device, amp=use_cuda and not args.no_amp)


@dataclass
class Data:
    """The training set (drawn afresh each epoch by ``epoch_loader``), this rank's share of the
    validation set, and the log of files that failed to decode in either."""
    train_set: ImageDataset
    labels: list[int]
    steps_per_epoch: int
    val_samples: list
    val_loader: DataLoader
    bad_log: BadFileLog = field(default_factory=BadFileLog)


def load_data(args, procs: Processes, resume: str | None) -> Data:
    """Find the samples, refuse outputs that would overwrite an input, create --out, build the datasets."""
    try:
        classes = args.classes.split(",") if args.classes else None
        train_samples, val_samples = split_samples(args.data, classes, args.val_split, args.seed)
        if args.crop_size:
            check_input_size(args.crop_size, args.crop_size, args.top_k)
    except (DatasetError, ValueError) as e:
        raise SetupError(e) from None
    problem = overwrite_problem(args.out, args.init, resume, train_samples + val_samples)
    if problem:
        raise SetupError(problem)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise SetupError(f"{args.out}: cannot create the output folder ({e.strerror})") from None
    train_tf = TrainTransform(load_size=args.load_size or None, crop_size=args.crop_size, flip=not args.no_flip,
                              blur_prob=args.blur_prob, blur_sigma=tuple(args.blur_sig),
                              jpeg_prob=args.jpg_prob, jpeg_quality=tuple(args.jpg_qual))
    train_set = ImageDataset(train_samples, train_tf, seed=args.seed)
    val_set = ImageDataset(val_samples, EvalTransform(args.eval_policy, args.eval_size))
    val_loader = DataLoader(val_set, batch_size=1 if args.eval_policy == "none" else args.batch_size,
                            sampler=list(range(procs.rank, len(val_set), procs.world)), num_workers=args.workers,
                            collate_fn=collate_skip_bad)
    steps_per_epoch = args.steps_per_epoch or max(1, math.ceil(len(train_samples) / (args.batch_size * procs.world)))
    labels = [s.label for s in train_samples]
    if len(set(labels)) < 2:
        raise SetupError(f"{args.data}: training needs both real (0_real) and generated (1_fake) images")
    return Data(train_set, labels, steps_per_epoch, val_samples, val_loader)


@dataclass
class Learner:
    """What training changes and a checkpoint keeps: the model, its optimiser and gradient scaler, the
    preprocessing spec, and the counters a resumed run continues from."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    spec: ModelSpec
    state: dict  # epoch, step, best, bad_epochs, elapsed


def adam(model, args) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.beta1, 0.999))


def build_learner(args, procs: Processes, resume: str | None) -> Learner:
    """A fresh model (from --init's weights if given), or the state of the --resume checkpoint, on the device."""
    config = LFMConfig(top_k=args.top_k, pooling=args.pooling, dropout=args.dropout, drop_min=args.drop_min,
                       drop_max=args.drop_max, random_k=args.random_k_weight > 0)
    model = build_model(config)
    learner = Learner(model, adam(model, args), torch.amp.GradScaler("cuda", enabled=procs.amp),
                      ModelSpec(policy=args.eval_policy, size=args.eval_size, top_k=args.top_k),
                      {"epoch": 0, "step": 0, "best": None, "bad_epochs": 0, "elapsed": 0.0})
    try:
        if args.init:
            init_weights(model, config, args.init)
        if resume:
            learner = resume_learner(learner, resume, args, procs.device)
    except CheckpointError as e:
        raise SetupError(e) from None
    learner.model.to(procs.device)
    return learner


def init_weights(model, config: LFMConfig, path: str) -> None:
    """Load --init's weights (ours or upstream's) into a model of the same pooling and K."""
    init = load_checkpoint(path)
    if init.model.config.pooling != config.pooling or init.model.config.top_k != config.top_k:
        raise CheckpointError(f"{path}: built with pooling={init.model.config.pooling}, "
                              f"top_k={init.model.config.top_k}; this run asks for "
                              f"pooling={config.pooling}, top_k={config.top_k}")
    model.load_state_dict(init.model.state_dict())
    log0(f"initialised from {path} ({init.source})")


def resume_learner(learner: Learner, path: str, args, device) -> Learner:
    """The model, optimiser, scaler, spec and counters a checkpoint of this script holds."""
    ckpt = load_checkpoint(path)
    if ckpt.source != "lfm-deploy" or "optimizer" not in ckpt.raw:
        raise CheckpointError(f"{path}: holds no training state to resume (use --init for weights only)")
    # The optimiser's state follows its parameters: build it on the training device.
    model = build_model(ckpt.model.config)
    model.load_state_dict(ckpt.model.state_dict())
    model.to(device)
    optimizer = adam(model, args)
    optimizer.load_state_dict(ckpt.raw["optimizer"])
    if "scaler" in ckpt.raw:
        learner.scaler.load_state_dict(ckpt.raw["scaler"])
    state = learner.state | {k: ckpt.raw[k] for k in learner.state if k in ckpt.raw}
    log0(f"resumed from {path} at epoch {state['epoch']}, step {state['step']}")
    return Learner(model, optimizer, learner.scaler, ckpt.spec, state)


def set_learning_rate(optimizer, args, epoch: int) -> None:
    """Upstream's schedule: --lr times 0.9 every --delr-freq epochs."""
    for group in optimizer.param_groups:
        group["lr"] = args.lr * 0.9 ** (epoch // args.delr_freq)


def epoch_loader(data: Data, args, procs: Processes, epoch: int) -> DataLoader:
    """This rank's class-balanced batches for one epoch, augmented with the epoch's seed."""
    data.train_set.set_epoch(epoch)
    sampler = epoch_indices(data.labels, data.steps_per_epoch * args.batch_size, args.seed, epoch,
                            procs.rank, procs.world)
    return DataLoader(data.train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                      collate_fn=collate_skip_bad, drop_last=True, persistent_workers=False)


def train_step(net, learner: Learner, images, y, args, procs: Processes) -> float:
    """One optimiser step on one batch (BCE plus the weighted Random-K loss); returns the loss."""
    images, y = images.to(procs.device, non_blocking=True), y.to(procs.device, non_blocking=True)
    with torch.autocast(device_type=procs.device.type, dtype=torch.float16, enabled=procs.amp):
        logit, aux = net(images, aux=True)
        loss = F.binary_cross_entropy_with_logits(logit.float(), y)
        if aux is not None:
            loss = loss + args.random_k_weight * F.binary_cross_entropy_with_logits(aux.float(), y)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.state["step"] += 1
    return loss.item()


def time_to_stop(args, step: int, t_start: float, procs: Processes) -> bool:
    """--max-minutes or --max-steps reached."""
    over_time = args.max_minutes is not None and time.perf_counter() - t_start > args.max_minutes * 60
    if procs.distributed:  # every rank must stop at the same step, or the collectives hang
        flag = torch.tensor([float(over_time)], device=procs.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        over_time = bool(flag.item())
    return over_time or (args.max_steps is not None and step >= args.max_steps)


def train_epoch(net, learner: Learner, loader, data: Data, args, procs: Processes, t_start: float, bar):
    """One pass over the epoch's batches, or fewer if time_to_stop: (losses, images seen, stop)."""
    net.train()
    losses, n_seen = [], 0
    for images, y, index, bad in loader:
        data.bad_log.add_indices(data.train_set, bad)
        if len(index) == 0:
            continue
        losses.append(train_step(net, learner, images, y, args, procs))
        n_seen += len(index)
        if bar is not None:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            bar.update()
        if time_to_stop(args, learner.state["step"], t_start, procs):
            return losses, n_seen, True
    return losses, n_seen, False


def update_best(state: dict, val: dict, epoch: int) -> bool:
    """Count this epoch against the best validation (accuracy, then AP); True when it is the new best."""
    score = (val["mean"]["acc"], val["mean"]["ap"])
    improved = state["best"] is None or score > tuple(state["best"]["score"])
    if improved:
        state["best"] = {"epoch": epoch, "score": list(score)}
        state["bad_epochs"] = 0
    else:
        state["bad_epochs"] += 1
    return improved


def log_epoch(log_path, epoch, learner: Learner, val, losses, n_seen, improved, data: Data, procs: Processes):
    """One line in metrics.jsonl (rank 0) and one on stdout."""
    state = learner.state
    record = {"epoch": epoch, "step": state["step"], "lr": learner.optimizer.param_groups[0]["lr"],
              "train_loss": float(np.mean(losses)) if losses else None, "train_images": n_seen * procs.world,
              "val_acc": val["mean"]["acc"], "val_ap": val["mean"]["ap"], "val_real_acc": val["mean"]["real_acc"],
              "val_fake_acc": val["mean"]["fake_acc"], "elapsed_s": round(state["elapsed"], 2),
              "skipped_files": data.bad_log.count}
    if procs.rank == 0:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    log0(f"epoch {epoch}: loss {record['train_loss'] or float('nan'):.4f}  val acc {100 * record['val_acc']:.2f}  "
         f"AP {100 * record['val_ap']:.2f}  lr {record['lr']:.2e}  {state['elapsed']:.0f}s"
         f"{'  (best)' if improved else ''}")


def save(name: str, learner: Learner, args, val, rank: int) -> None:
    """OUT/name, atomically, from rank 0: weights, optimiser and scaler state, arguments, counters."""
    if rank == 0:
        ckpt = make_checkpoint(learner.model, learner.spec, optimizer=learner.optimizer.state_dict(),
                               scaler=learner.scaler.state_dict(),
                               train_args=vars(args) | {"blur_sig": list(args.blur_sig), "jpg_qual": list(args.jpg_qual)},
                               val=val, **learner.state)
        save_atomic(ckpt, os.path.join(args.out, name))


def fit(net, learner: Learner, data: Data, args, procs: Processes, resume: str | None) -> None:
    """The loop: train an epoch, validate, log, save; until --epochs, the time or step budget, or
    --patience epochs without a better validation accuracy."""
    state = learner.state
    log_path = os.path.join(args.out, "metrics.jsonl")
    if procs.rank == 0 and not resume and os.path.exists(log_path):
        os.replace(log_path, log_path + ".old")  # a fresh run starts a fresh log; keep the last one
    show_bar = procs.rank == 0 and (args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty()))
    log0(f"training on {len(data.labels)} images, validating on {len(data.val_samples)}; {procs.world} process(es) "
         f"on {procs.device.type}{' with AMP' if procs.amp else ''}; {data.steps_per_epoch} steps of "
         f"{args.batch_size * procs.world} per epoch")
    t_start = time.perf_counter() - state["elapsed"]
    out_of_time = False
    val = None
    while state["epoch"] < args.epochs and not out_of_time:
        epoch = state["epoch"]
        set_learning_rate(learner.optimizer, args, epoch)
        loader = epoch_loader(data, args, procs, epoch)
        bar = None
        if show_bar:
            from tqdm import tqdm
            bar = tqdm(total=data.steps_per_epoch, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        losses, n_seen, out_of_time = train_epoch(net, learner, loader, data, args, procs, t_start, bar)
        if bar is not None:
            bar.close()
        average_bn_buffers(learner.model, procs.world)
        val = evaluate(learner.model, data.val_loader, data.val_samples, procs.device, procs.amp, data.bad_log,
                       procs.world)
        state["epoch"] = epoch + 1
        state["elapsed"] = time.perf_counter() - t_start
        improved = update_best(state, val, epoch)
        log_epoch(log_path, epoch, learner, val, losses, n_seen, improved, data, procs)
        if improved:
            save("best.pt", learner, args, val, procs.rank)
        save("last.pt", learner, args, val, procs.rank)
        if state["bad_epochs"] >= args.patience:
            log0(f"early stop: no better validation accuracy for {args.patience} epochs")
            break
    if procs.rank == 0:
        report(args, val, state, log_path, data.bad_log)


def report(args, val, state: dict, log_path: str, bad_log: BadFileLog) -> None:
    """The closing lines: the last validation table and the best epoch, or that there was nothing to do."""
    if val is None:
        log0(f"nothing to do: already trained for {state['epoch']} of {args.epochs} epochs")
        return
    best = state["best"]
    log0(format_table(val))
    log0(f"best epoch {best['epoch']}: val acc {100 * best['score'][0]:.2f}, AP {100 * best['score'][1]:.2f}; "
         f"wrote {os.path.join(args.out, 'best.pt')}, {os.path.join(args.out, 'last.pt')}, {log_path}")
    if bad_log.count:
        log0(bad_log.summary())


def train(argv=None) -> int:
    args = parse_args(argv)
    plain_warnings()
    procs = setup_processes(args)
    resume = os.path.join(args.out, "last.pt") if args.resume == "auto" else args.resume
    try:
        data = load_data(args, procs, resume)
        learner = build_learner(args, procs, resume)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device_ids = [procs.device.index] if procs.device.type == "cuda" else None
    net = DistributedDataParallel(learner.model, device_ids=device_ids) if procs.distributed else learner.model
    fit(net, learner, data, args, procs, resume)
    if not procs.distributed:
        return 0
    same = replicas_identical(learner.model, procs.world)
    log0(f"replicas identical across {procs.world} processes: {'yes' if same else 'NO'}")
    # Free DDP's reducer (its communication hooks) before the group goes, then let every rank
    # arrive: tearing gloo down with either still alive aborted ranks now and then.
    del net
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    return 0 if same else 3


def main(argv=None) -> int:
    try:
        return train(argv)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM; checkpoints are written atomically: whatever is on disk is whole
        print(f"{stop_word(stop)}: the checkpoints already written (last.pt, best.pt in --out) are complete; "
              "continue with --resume", file=sys.stderr)
        return stop_status(stop)


if __name__ == "__main__":
    sys.exit(run(main))
