"""Seeing what LFM looks at: Grad-CAM heat maps, the patches Top-K pooling kept, t-SNE of features.

    python train/visualize.py gradcam CKPT IMAGES... -o OUT/ [--layer snet.layer4]
    python train/visualize.py topk    CKPT IMAGES... -o OUT/ [--channels auto|all|0,5,...]
    python train/visualize.py tsne    CKPT --data DIR -o OUT/tsne.png [--gap-checkpoint CKPT]

Every image is prepared by the checkpoint's own preprocessing spec (policy, size, mean/std:
``lfm.runtime.preprocess``), so the pictures show exactly what the model scored; each image's
score (sigmoid of the logit) is printed and written to ``OUT/scores.jsonl`` in the runtime's
record format, and equals ``runtime/infer.py --checkpoint``'s.

gradcam  Grad-CAM (Selvaraju et al.): d logit / d A for the activations A of ``--layer``
         (``npr``, ``snet.layer1`` .. ``snet.layer4`` (default), ``salience``), channel weights
         w_c = mean over positions of the gradient, map = ReLU(sum_c w_c A_c), interpolated
         bilinearly onto the input pixels from the centre of each position's receptive field.
         Writes OUT/NNN_<name>.gradcam.png (image | overlay, colour bar), OUT/gradcam.png
         (contact sheet, with scores) and OUT/gradcam.npz (raw and upsampled maps, scores).
topk     The K positions Top-K pooling kept in each of the 64 salience maps, drawn where they
         come from in the input (``receptive_box``): a heat map counting how many of the 64 x K
         selections cover each pixel, and the boxes of a few channels' selections (``auto``:
         the 4 channels whose kept values moved the logit most). Writes OUT/NNN_<name>.topk.png,
         OUT/topk.png (contact sheet) and OUT/topk.npz (counts, selected rows/cols/values).
tsne     Pooled features (the 64 x K Top-K vector, or the 64 GAP values of a ``--pooling gap``
         checkpoint) of DIR's images (ForenSynths layout), standardised, embedded in 2-D with
         scikit-learn's t-SNE; colour = label, marker = subset. Each panel prints two
         separability figures: the silhouette score of real vs generated on the 2-D embedding,
         and the cross-validated accuracy of a logistic-regression probe on the raw features.
         ``--gap-checkpoint`` adds the GAP model's panel beside it. Writes OUT (PNG) and, beside
         it, the same name with .npz (embeddings, labels, subsets, separability figures).

Deterministic for a given ``--seed`` (PNG files are byte-identical across runs). Unreadable or
too-small images are skipped with a warning naming each; exit status 0 when something was drawn,
1 when nothing could be, 2 for an unusable checkpoint, data folder or argument.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import warnings

if __package__ in (None, ""):  # run as a script: don't let train/'s modules shadow libraries
    sys.path.pop(0)

import numpy as np
import torch
import torch.nn.functional as F

from lfm.runtime.cli import ArgumentParser, describe_os_error, run
from lfm.runtime.evidence import coverage, layer_geometry, receptive_box, upsample_map  # noqa: F401 (geometry)
from lfm.runtime.files import files_under, output_problem, overwrite_refusal
from lfm.runtime.inputs import expand_paths
from lfm.runtime.preprocess import ImageError, load_array, normalize
from lfm.runtime.records import Record, RecordWriter
from lfm.runtime.spec import ModelSpec, check_input_size, is_fake
from lfm.train.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from lfm.train.model import LFM, TopKPool, use_exact_fp32

# Figure geometry (inches at DPI); sizes in pixels are these products, which the tests check.
DPI = 100
IMAGE_FIG = (9.0, 4.4)  # per-image figure: two panels and a colour bar -> 900 x 440 px
SHEET_CELL = (2.6, 2.9)  # contact-sheet cell
SHEET_EXTRA = (1.0, 0.7)  # colour bar column, suptitle row
TSNE_PANEL = (6.4, 6.2)  # one t-SNE panel -> 640 x 620 px, two -> 1280 x 620 px
CMAP_GRADCAM, CMAP_COUNT = "inferno", "viridis"
ALPHA = 0.6  # heat maps over the grey image
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LABEL_COLOURS = ("tab:blue", "tab:red")  # real, generated


# Geometry (where a position of a layer comes from in the input: layer_geometry, receptive_box,
# upsample_map, coverage) lives in lfm.runtime.evidence, imported above: the review page
# (runtime/app.py) draws its maps with the same functions, without torch.


# ----------------------------------------------------------------------------------------------
# Model side: load, prepare, and the three measurements


def resolve_device(name: str) -> torch.device:
    dev = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if dev.type == "cuda":
        use_exact_fp32()
    return dev


def prepare(path: str, spec: ModelSpec) -> tuple[np.ndarray, torch.Tensor]:
    """An image file -> (uint8 HWC pixels as the model sees them, float32 [1, 3, H, W] input),
    by the spec's policy and mean/std, as the runtime does. Raises ImageError / ValueError."""
    pixels = load_array(path, spec)
    check_input_size(pixels.shape[0], pixels.shape[1], spec.top_k)
    return pixels, torch.from_numpy(normalize(pixels, spec.mean, spec.std))[None]


def gradcam_layers(model: LFM) -> list[str]:
    return ["npr"] + [f"snet.layer{i}" for i in range(1, model.snet.num_layers + 1)] + ["salience"]


def grad_cam(model: LFM, x: torch.Tensor, layer: str) -> tuple[np.ndarray, float]:
    """Grad-CAM of one image [1, 3, H, W] at ``layer`` -> (map [h, w] on the layer's grid, logit).

    The activations A come from a forward hook; the gradient is d logit / d A. Channel weights
    are the spatial means of the gradient, the map is ReLU(sum_c w_c A_c) (not normalised)."""
    module = dict(model.named_modules())[layer]
    store = {}
    handle = module.register_forward_hook(lambda mod, inp, out: store.__setitem__("a", out))
    try:
        with torch.enable_grad():
            logit = model(x)
            (grad,) = torch.autograd.grad(logit.sum(), store["a"])
    finally:
        handle.remove()
    a = store["a"].detach()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(1))[0]
    return cam.cpu().numpy().astype(np.float32), float(logit.detach()[0])


def gradcam_on_pixels(model: LFM, x: torch.Tensor, layer: str) -> tuple[np.ndarray, np.ndarray, float]:
    """``grad_cam`` of one image [1, 3, H, W], also mapped onto its input pixels: (map on the
    layer's grid, map [H, W] (``upsample_map``), logit). NPR drops an odd last row / column, which
    the model never sees: the map repeats its neighbour there."""
    cam, logit = grad_cam(model, x, layer)
    jump, size = layer_geometry(layer, model.snet.num_layers)
    h, w = x.shape[-2:]
    up = upsample_map(cam, jump, size, h - h % 2, w - w % 2)
    return cam, np.pad(up, ((0, h % 2), (0, w % 2)), mode="edge"), logit


def topk_selection(model: LFM, x: torch.Tensor) -> dict:
    """The Top-K positions of each salience map of one image: rows, cols, values [C, K] (rank 0 =
    largest), each channel's contribution to the logit [C] (sum_k fc_w[c, k] * value), logit, and
    ties [C]: maps whose K-th value equals the (K+1)-th (the choice among equals is torch.topk's)."""
    if not isinstance(model.pool, TopKPool):
        raise ValueError("the topk view needs a Top-K checkpoint; this one pools with gap")
    with torch.inference_mode():
        maps = model.salience_maps(x)  # [1, C, h, w]
        w = maps.shape[-1]
        flat, k = maps.flatten(2), model.pool.k
        values, idx = torch.topk(flat, k, dim=-1, largest=True, sorted=True)  # the call TopKPool makes
        if flat.shape[-1] > k:  # a tie at the K-th value: which of the equal positions were kept is arbitrary
            ties = (torch.topk(flat, k + 1, dim=-1).values[0, :, -1] == values[0, :, -1])
        else:
            ties = torch.zeros(flat.shape[1], dtype=torch.bool)
        logit = model.fc(model.features(maps)).squeeze(-1)
        contrib = (model.fc.weight.view(maps.shape[1], -1) * values[0]).sum(-1)
    return {"rows": (idx[0] // w).cpu().numpy(), "cols": (idx[0] % w).cpu().numpy(),
            "values": values[0].cpu().numpy(), "contrib": contrib.cpu().numpy(), "logit": float(logit[0]),
            "ties": ties.cpu().numpy()}


def pooled_features(model: LFM, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[B, 3, H, W] -> (the vectors the classifier reads [B, 64 x K Top-K values or 64 GAP values], logits [B])."""
    with torch.inference_mode():
        feats = model.features(model.salience_maps(x))
        logits = model.fc(feats).squeeze(-1)
    return feats.cpu().numpy(), logits.cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Plotting (matplotlib, Agg, no pyplot state)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return matplotlib, Figure


def make_folder(folder: str) -> None:
    """os.makedirs, failing with one line (a ValueError) instead of Python's "[Errno N] ..."."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:  # e.g. under /proc, where the checks before the work cannot tell
        raise ValueError(f"{folder}: cannot create the folder ({describe_os_error(e)}); "
                         "choose another -o") from None


def _save(fig, path: str) -> None:
    make_folder(os.path.dirname(os.path.abspath(path)))
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: same bytes across matplotlib patches


def sheet_size(n: int, ncols: int = 4) -> tuple[int, int]:
    """Pixel size of a contact sheet holding n images."""
    cols = min(n, ncols)
    rows = -(-n // cols)
    return round((cols * SHEET_CELL[0] + SHEET_EXTRA[0]) * DPI), round((rows * SHEET_CELL[1] + SHEET_EXTRA[1]) * DPI)


def _tail(path: str, parts: int = 3) -> str:
    """The last few components of a path (titles stay short, and the same wherever the files are)."""
    return _short("/".join(os.path.abspath(path).split(os.sep)[-parts:]), 60)


def _ckpt_name(path: str) -> str:
    """parent/file: enough to tell runs/topk/best.pt from runs/gap/best.pt."""
    return _tail(path, 2)


def _grey(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB -> luma (ITU-R 601): maps and boxes are drawn over a grey image, so their colours read."""
    return pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _masked(heat: np.ndarray):
    """Integer maps (Top-K counts): pixels no selection covers are left untinted."""
    return np.ma.masked_equal(heat, 0) if np.issubdtype(heat.dtype, np.integer) else heat


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else "..." + name[-(n - 3):]


def image_figure(pixels, heat, title: str, heat_label: str, cmap: str, vmax: float,
                 left_title: str, right_title: str, boxes=None):
    """Two panels and a colour bar: left, the model's input (or, with ``boxes``, a list of
    (box, colour, linewidth, legend label), those boxes over it in grey); right, ``heat`` over
    the input in grey."""
    _, Figure = _mpl()
    fig = Figure(figsize=IMAGE_FIG, dpi=DPI)
    fig.suptitle(title, fontsize=10)
    ax0 = fig.add_axes((0.02, 0.04, 0.40, 0.80))
    ax1 = fig.add_axes((0.46, 0.04, 0.40, 0.80))
    cax = fig.add_axes((0.88, 0.10, 0.02, 0.68))
    ax0.imshow(_grey(pixels) if boxes else pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax0.set_title(left_title, fontsize=8)
    ax1.imshow(_grey(pixels), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    im = ax1.imshow(_masked(heat), cmap=cmap, alpha=ALPHA, vmin=0, vmax=vmax, interpolation="nearest")
    ax1.set_title(right_title, fontsize=8)
    fig.colorbar(im, cax=cax).set_label(heat_label, fontsize=8)
    if boxes:
        from matplotlib.patches import Rectangle

        seen = set()
        for (t, l, b, r), colour, lw, label in boxes:
            ax0.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, edgecolor=colour, linewidth=lw,
                                    label=None if label in seen else label))
            seen.add(label)
        ax0.legend(loc="upper right", fontsize=6, framealpha=0.7, title="channel: logit share", title_fontsize=6)
    for ax in (ax0, ax1):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def contact_sheet(items, title: str, heat_label: str, cmap: str, vmax: float, ncols: int = 4):
    """items: (pixels, heat, caption) per image -> one figure, shared colour scale and bar."""
    _, Figure = _mpl()
    n = len(items)
    cols, rows = min(n, ncols), -(-n // min(n, ncols))
    w_in, h_in = cols * SHEET_CELL[0] + SHEET_EXTRA[0], rows * SHEET_CELL[1] + SHEET_EXTRA[1]
    fig = Figure(figsize=(w_in, h_in), dpi=DPI)
    fig.suptitle(title, fontsize=10, y=1 - 0.15 / h_in)
    im = None
    for i, (pixels, heat, caption) in enumerate(items):
        r, c = divmod(i, cols)
        left, bottom = c * SHEET_CELL[0] + 0.1, h_in - SHEET_EXTRA[1] - (r + 1) * SHEET_CELL[1] + 0.05
        ax = fig.add_axes((left / w_in, bottom / h_in, (SHEET_CELL[0] - 0.2) / w_in, (SHEET_CELL[1] - 0.55) / h_in))
        ax.imshow(_grey(pixels), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        im = ax.imshow(_masked(heat), cmap=cmap, alpha=ALPHA, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    cax = fig.add_axes(((cols * SHEET_CELL[0] + 0.25) / w_in, 0.15, 0.18 / w_in, 0.65))
    fig.colorbar(im, cax=cax).set_label(heat_label, fontsize=8)
    return fig


# ----------------------------------------------------------------------------------------------
# Commands


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _images(ckpt: LoadedCheckpoint, paths: list[str], writer: RecordWriter):
    """Yield (index, path, pixels, x) for each image that could be prepared; warn about and record the rest."""
    exp = expand_paths(paths)
    for note in exp.notes:
        _warn(note)
    for path in exp.inputs:
        problem = exp.errors.get(path)
        if problem is None:
            try:
                pixels, x = prepare(path, ckpt.spec)
            except (ImageError, ValueError) as e:
                problem = e.problem if isinstance(e, ImageError) else str(e)
        if problem is not None:
            _warn(f"skipped {path}: {problem}")
            writer.write(Record.failed(path, problem))
            continue
        yield path, pixels, x


def _out_name(i: int, path: str, kind: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{i:03d}_{stem}.{kind}.png"


def _caption(i: int, path: str, rec: Record, note: str = "") -> str:
    return f"{i:03d} {_short(_tail(path), 32)}\nscore {rec.score:.4f} ({rec.label}){note}"


def cmd_gradcam(args, ckpt: LoadedCheckpoint, device) -> int:
    model = ckpt.model.to(device)
    layers = gradcam_layers(model)
    layer = args.layer or f"snet.layer{model.snet.num_layers}"
    if layer not in layers:
        raise ValueError(f"--layer {layer!r} unknown; choose one of {', '.join(layers)}")
    make_folder(args.out)
    arrays, sheet, names = {}, [], []
    with open(os.path.join(args.out, "scores.jsonl"), "w") as f:
        writer = RecordWriter(f, "jsonl")
        for path, pixels, x in _images(ckpt, args.images, writer):
            i = len(names)
            cam, up, logit = gradcam_on_pixels(model, x.to(device), layer)
            rec = Record.from_logit(path, logit, ckpt.spec.threshold)
            writer.write(rec)
            peak = float(up.max())
            rel = up / peak if peak > 0 else up
            flat = "zero everywhere" if peak <= 0 else "constant" if np.ptp(cam) == 0 else ""
            note = {"zero everywhere": " -- zero everywhere: no positive evidence at this layer",
                    "constant": " -- constant: this layer sees nothing to tell apart"}.get(flat, "")
            fig = image_figure(pixels, rel, f"{_tail(path)}: score {rec.score:.4f} ({rec.label}), logit {logit:.3f}",
                               "Grad-CAM / its max", CMAP_GRADCAM, 1.0, "model input (checkpoint's preprocessing)",
                               f"Grad-CAM at {layer}{note}")
            _save(fig, os.path.join(args.out, _out_name(i, path, "gradcam")))
            arrays.update({f"cam_{i:03d}": cam, f"map_{i:03d}": up})
            sheet.append((pixels, rel, _caption(i, path, rec, f", map {flat}" if flat else "")))
            names.append((path, logit, rec.score))
            print(f"{i:03d}  score {rec.score:.6f}  logit {logit:+.4f}  {rec.label:<4}  {path}")
    if not names:
        print("error: no image could be drawn", file=sys.stderr)
        return 1
    _finish(args, "gradcam", arrays, names, sheet,
            f"Grad-CAM at {layer} ({_ckpt_name(ckpt.path)}), score = P(generated)",
            "Grad-CAM / its max (per image)", CMAP_GRADCAM, 1.0, layer=layer)
    return 0


def _parse_channels(text: str, contrib: np.ndarray) -> list[int]:
    n = len(contrib)
    if text == "auto":
        return [int(c) for c in np.argsort(-np.abs(contrib), kind="stable")[:4]]
    if text == "all":
        return list(range(n))
    chans = [int(c) for c in text.split(",") if c.strip()]
    bad = [c for c in chans if not 0 <= c < n]
    if bad:
        raise ValueError(f"--channels {bad} out of range: the model has {n} salience maps (0..{n - 1})")
    return chans


def cmd_topk(args, ckpt: LoadedCheckpoint, device) -> int:
    model = ckpt.model.to(device)
    if not isinstance(model.pool, TopKPool):
        raise ValueError(f"{ckpt.path}: the topk view needs a Top-K checkpoint; this one pools with gap")
    if args.channels not in ("auto", "all"):
        _parse_channels(args.channels, np.zeros(model.config.salience_channels))  # fail before any work
    jump, size = layer_geometry("salience", model.snet.num_layers)
    n_sel = model.config.salience_channels * model.pool.k
    make_folder(args.out)
    arrays, sheet, names = {}, [], []
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    with open(os.path.join(args.out, "scores.jsonl"), "w") as f:
        writer = RecordWriter(f, "jsonl")
        for path, pixels, x in _images(ckpt, args.images, writer):
            i = len(names)
            sel = topk_selection(model, x.to(device))
            h, w = pixels.shape[:2]
            count = coverage(sel["rows"], sel["cols"], h, w, jump, size)
            rec = Record.from_logit(path, sel["logit"], ckpt.spec.threshold)
            writer.write(rec)
            boxes = []
            chans = _parse_channels(args.channels, sel["contrib"])
            for j, c in enumerate(chans):
                colour = palette(j % 10)
                for k in range(len(sel["rows"][c]) - 1, -1, -1):  # rank 0 drawn last, thickest
                    box = receptive_box(int(sel["rows"][c, k]), int(sel["cols"][c, k]), jump, size)
                    boxes.append((box, colour, 2.0 if k == 0 else 0.8, f"{c}: {sel['contrib'][c]:+.2f}"))
            which = "4 largest |logit share|" if args.channels == "auto" else f"channels {args.channels}"
            n_ties = int(sel["ties"].sum())
            tie_note = (f"\n{n_ties} of {len(sel['ties'])} maps tie at the K-th value: which equal positions "
                        "were kept is arbitrary") if n_ties else ""
            title = f"{_tail(path)}: score {rec.score:.4f} ({rec.label}), logit {sel['logit']:.3f}{tie_note}"
            fig = image_figure(pixels, count, title,
                               f"selections covering the pixel (of {n_sel})", CMAP_COUNT, max(1, int(count.max())),
                               f"receptive fields of the K={model.pool.k} kept positions ({which})",
                               f"all {n_sel} selections ({model.config.salience_channels} maps x K={model.pool.k})",
                               boxes=boxes)
            _save(fig, os.path.join(args.out, _out_name(i, path, "topk")))
            arrays.update({f"{key}_{i:03d}": sel[key] for key in ("rows", "cols", "values", "contrib", "ties")})
            arrays[f"count_{i:03d}"] = count
            sheet.append((pixels, count, _caption(i, path, rec, f", {n_ties} maps tied" if n_ties else "")))
            names.append((path, sel["logit"], rec.score))
            print(f"{i:03d}  score {rec.score:.6f}  logit {sel['logit']:+.4f}  {rec.label:<4}  {path}")
    if not names:
        print("error: no image could be drawn", file=sys.stderr)
        return 1
    vmax = max(int(item[1].max()) for item in sheet)
    _finish(args, "topk", arrays, names, sheet,
            f"Top-K selections ({_ckpt_name(ckpt.path)}): pixels in the receptive fields of the kept positions",
            f"selections covering the pixel (of {n_sel})", CMAP_COUNT, max(1, vmax))
    return 0


def _finish(args, kind, arrays, names, sheet, title, heat_label, cmap, vmax, **extra) -> None:
    shown = sheet[: args.sheet_max]
    if len(sheet) > args.sheet_max:
        title += f" (first {args.sheet_max} of {len(sheet)})"
    fig = contact_sheet(shown, title, heat_label, cmap, vmax, args.sheet_cols)
    _save(fig, os.path.join(args.out, f"{kind}.png"))
    paths, logits, scores = zip(*names)
    np.savez(os.path.join(args.out, f"{kind}.npz"), paths=np.array(paths), logits=np.array(logits, np.float64),
             scores=np.array(scores, np.float64), **{k: np.asarray(v) for k, v in extra.items()}, **arrays)
    print(f"wrote {len(names)} figure(s), {kind}.png (contact sheet), {kind}.npz and scores.jsonl to {args.out}")


# t-SNE


def separability(features: np.ndarray, embedding: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """Silhouette score of the labels on the 2-D embedding; logistic-regression probe accuracy
    (stratified k-fold, k = min(5, smaller class), standardised features) on the raw features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {"silhouette": None, "probe_accuracy": None, "probe_std": None, "probe_folds": 0}
    smaller = int(min(np.sum(labels == 0), np.sum(labels == 1)))
    if smaller >= 1 and len(labels) > 2:
        out["silhouette"] = float(silhouette_score(embedding, labels))
    if smaller >= 2:
        k = min(5, smaller)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        acc = cross_val_score(probe, features, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
        out.update(probe_accuracy=float(acc.mean()), probe_std=float(acc.std()), probe_folds=k)
    return out


def embed(features: np.ndarray, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """Standardised features -> 2-D t-SNE (PCA initialisation, perplexity capped below n / 3)."""
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    n = len(features)
    z = StandardScaler().fit_transform(features.astype(np.float64))
    perplexity = float(min(perplexity, max(2.0, (n - 1) / 3.0)))
    return TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed).fit_transform(z)


def sample_dataset(root: str, per_group: int, seed: int):
    """find_samples, then at most ``per_group`` images per (subset, label), drawn with the seed."""
    from lfm.train.data import find_samples

    samples = find_samples(root)
    rng = np.random.default_rng(seed)
    groups = {}
    for s in samples:
        groups.setdefault((s.subset, s.label), []).append(s)
    keep = []
    for key in sorted(groups):
        g = groups[key]
        idx = np.sort(rng.permutation(len(g))[:per_group]) if len(g) > per_group else range(len(g))
        keep += [g[i] for i in idx]
    return keep


def model_features(ckpt: LoadedCheckpoint, samples, device, batch_size: int = 32):
    """Each sample through the checkpoint's own preprocessing -> (features [n, d], kept samples, logits)."""
    model = ckpt.model.to(device)
    feats, kept, logits, pending = [], [], [], []

    def flush():
        f, lg = pooled_features(model, torch.cat([x for _, x in pending]).to(device))
        feats.append(f)
        logits.append(lg)
        kept.extend(s for s, _ in pending)
        pending.clear()

    for s in samples:
        try:
            x = prepare(s.path, ckpt.spec)[1]
        except (ImageError, ValueError) as e:
            _warn(f"skipped {s.path}: {e.problem if isinstance(e, ImageError) else e}")
            continue
        if pending and (len(pending) == batch_size or pending[0][1].shape != x.shape):  # policy none: sizes differ
            flush()
        pending.append((s, x))
    if pending:
        flush()
    if not kept:
        return np.zeros((0, model.num_features), np.float32), [], np.zeros(0)
    return np.concatenate(feats), kept, np.concatenate(logits).astype(np.float64)


def tsne_panel(ax, emb, labels, subsets, sep, title):
    names = sorted(set(subsets))
    marker = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(names)}
    for lab in (0, 1):
        for s in names:
            m = (labels == lab) & (np.asarray(subsets) == s)
            if m.any():
                ax.scatter(emb[m, 0], emb[m, 1], s=18, c=LABEL_COLOURS[lab], marker=marker[s], alpha=0.75,
                           linewidths=0.3, edgecolors="white")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=LABEL_COLOURS[0], label="real"),
               Line2D([], [], ls="", marker="o", color=LABEL_COLOURS[1], label="generated")]
    handles += [Line2D([], [], ls="", marker=marker[s], color="0.35", label=s) for s in names]
    ax.legend(handles=handles, loc="best", fontsize=7, framealpha=0.8, title="colour: label, marker: subset",
              title_fontsize=7)

    def fmt(v, pct=False):
        return "n/a" if v is None else (f"{100 * v:.1f} %" if pct else f"{v:.3f}")

    probe = f"{fmt(sep['probe_accuracy'], True)} +- {100 * (sep['probe_std'] or 0):.1f} ({sep['probe_folds']}-fold)"
    ax.text(0.02, 0.02, f"silhouette (2-D, real vs generated): {fmt(sep['silhouette'])}\n"
                        f"linear probe on raw features: {probe}",
            transform=ax.transAxes, fontsize=8, va="bottom", ha="left",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.6"})
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("t-SNE 1", fontsize=8)
    ax.set_ylabel("t-SNE 2", fontsize=8)
    ax.tick_params(labelsize=7)


def cmd_tsne(args, ckpt: LoadedCheckpoint, device) -> int:
    from lfm.train.data import DatasetError

    models = [ckpt]
    if args.gap_checkpoint:
        gap = load_checkpoint(args.gap_checkpoint)
        if gap.model.config.pooling != "gap":
            raise ValueError(f"{args.gap_checkpoint}: --gap-checkpoint must be a --pooling gap checkpoint, "
                             f"this one pools with {gap.model.config.pooling}")
        models.append(gap)
    try:
        samples = sample_dataset(args.data, args.max_per_group, args.seed)
    except DatasetError as e:
        raise ValueError(str(e)) from None
    panels, saved = [], {}
    for j, c in enumerate(models):
        feats, kept, logits = model_features(c, samples, device)
        if len(kept) < 3:
            print(f"error: {c.path}: only {len(kept)} image(s) could be read from {args.data}; t-SNE needs 3 or more",
                  file=sys.stderr)
            return 1
        labels = np.array([s.label for s in kept])
        subsets = [s.subset for s in kept]
        emb = embed(feats, args.seed, args.perplexity)
        sep = separability(feats, emb, labels, args.seed)
        cfg = c.model.config
        what = f"Top-K pooling, K={cfg.top_k}" if cfg.pooling == "topk" else "global average pooling"
        title = f"{what} ({feats.shape[1]}-D) -- {_short(_ckpt_name(c.path), 36)}"
        panels.append((emb, labels, subsets, sep, title))
        acc = float(np.mean(is_fake(1 / (1 + np.exp(-logits)), c.spec.threshold) == (labels == 1)))
        print(f"{c.path}: {cfg.pooling}, {len(kept)} images, {feats.shape[1]}-D; silhouette {sep['silhouette']}, "
              f"probe accuracy {sep['probe_accuracy']} +- {sep['probe_std']}; classifier accuracy {acc:.4f}")
        saved.update({f"embedding_{j}": emb, f"labels_{j}": labels, f"subsets_{j}": np.array(subsets),
                      f"paths_{j}": np.array([s.path for s in kept]), f"logits_{j}": logits,
                      f"separability_{j}": np.array(json.dumps(sep)), f"checkpoint_{j}": np.array(c.path)})
    _, Figure = _mpl()
    fig = Figure(figsize=(TSNE_PANEL[0] * len(panels), TSNE_PANEL[1]), dpi=DPI)
    n = len(panels[0][1])
    head = f"t-SNE of pooled features: {_tail(args.data, 2)}, {n} images, seed {args.seed}"
    if len(panels) == 1:
        head += "\n(no --gap-checkpoint given: no global-average-pooling panel to compare with)"
    fig.suptitle(head, fontsize=9)
    for j, p in enumerate(panels):
        ax = fig.add_axes(((j + 0.1) / len(panels), 0.08, 0.85 / len(panels), 0.78))
        tsne_panel(ax, *p)
    _save(fig, args.out)
    np.savez(os.path.splitext(args.out)[0] + ".npz", **saved)
    print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.npz")
    return 0


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)

    def common(q):
        q.add_argument("checkpoint", metavar="CKPT", help="our checkpoint or upstream's .pth")
        q.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
        q.add_argument("--seed", type=int, default=0, help="random seed (t-SNE, subsampling)")

    for name, helptext in (("gradcam", "Grad-CAM heat maps over the inputs"),
                           ("topk", "receptive fields of the positions Top-K pooling kept")):
        q = sub.add_parser(name, help=helptext)
        common(q)
        q.add_argument("images", nargs="+", metavar="IMAGES", help="image files, directories or globs")
        q.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
        q.add_argument("--sheet-max", type=int, default=16, help="images on the contact sheet (default 16)")
        q.add_argument("--sheet-cols", type=int, default=4, help="columns of the contact sheet (default 4)")
        if name == "gradcam":
            q.add_argument("--layer", default=None, help="npr, snet.layer1..snet.layer4 (default: the last), salience")
        else:
            q.add_argument("--channels", default="auto",
                           help="salience maps whose boxes are drawn: auto (the 4 with the largest logit share), "
                                "all, or 0,5,...")
    q = sub.add_parser("tsne", help="t-SNE of pooled features, Top-K vs global average pooling")
    common(q)
    q.add_argument("--data", required=True, help="DIR/<subset>/{0_real,1_fake}/* or DIR/{0_real,1_fake}/*")
    q.add_argument("-o", "--out", required=True, metavar="OUT.png", help="output PNG (an .npz is written beside it)")
    q.add_argument("--gap-checkpoint", default=None, help="a --pooling gap checkpoint for the comparison panel")
    q.add_argument("--max-per-group", type=int, default=100, help="at most N images per (subset, label) (default 100)")
    q.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (capped below n / 3)")
    args = p.parse_args(argv)
    if getattr(args, "sheet_max", 1) < 1 or getattr(args, "sheet_cols", 1) < 1:
        p.error("--sheet-max and --sheet-cols must be >= 1")
    return args


def folder_problem(folder: str, given: str) -> str | None:
    """Why the output folder ``folder`` cannot be created (parents included) and written into, in
    one line naming ``given`` (the -o the user gave); None if it can. Creates nothing."""
    existing = os.path.abspath(folder)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "" if existing == os.path.abspath(given) else f" {existing}"
        return f"{given}:{where} is a file, not a folder; choose another -o"
    if not os.access(existing, os.W_OK):
        return f"{given}: folder {existing} is not writable; choose another -o"
    return None


def out_problem(args) -> str | None:
    """Why -o cannot be written, checked before the work: a folder for gradcam and topk, a PNG
    for tsne (its folder is created like theirs)."""
    if args.command != "tsne":
        return folder_problem(args.out, args.out)
    parent = os.path.dirname(os.path.abspath(args.out))
    problem = folder_problem(parent, args.out)
    if problem is None and os.path.isdir(parent):  # e.g. -o names a folder
        problem = output_problem(args.out, "tsne.png")
    return problem


def overwrite_problem(args) -> str | None:
    """Why -o would overwrite one of the inputs (the shared guard), or None. gradcam and topk write
    scores.jsonl, KIND.png, KIND.npz and NNN_STEM.KIND.png into the folder; tsne OUT.png and OUT.npz."""
    inputs = [("the checkpoint", args.checkpoint), ("the --gap-checkpoint", getattr(args, "gap_checkpoint", None))]
    if args.command == "tsne":
        outputs = [args.out, os.path.splitext(args.out)[0] + ".npz"]
        inputs += files_under(args.data)
    else:
        kind = args.command
        outputs = [os.path.join(args.out, name) for name in ("scores.jsonl", f"{kind}.png", f"{kind}.npz")]
        outputs += glob.glob(os.path.join(glob.escape(args.out), f"*.{kind}.png"))
        inputs += expand_paths(args.images).inputs
    return overwrite_refusal(outputs, inputs, "-o")


def file_problem(e: OSError) -> str:
    """An OSError as one line: the path and the system's reason (not Python's "[Errno N] ..."), and what to do."""
    path = e.filename if e.filename is not None else "a file"
    return f"{path}: {describe_os_error(e)}; check the path, its permissions and free space, then run again"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    problem = out_problem(args) or overwrite_problem(args)
    if problem:  # before loading anything
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        ckpt = load_checkpoint(args.checkpoint)
        if ckpt.spec.policy == "tiles":
            raise ValueError(f"{args.checkpoint}: its spec uses policy 'tiles', which the pictures do not support")
        device = resolve_device(args.device)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *a, **k: _warn(str(message))
            return {"gradcam": cmd_gradcam, "topk": cmd_topk, "tsne": cmd_tsne}[args.command](args, ckpt, device)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # reading the data folder, writing under -o
        print(f"error: {file_problem(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run(main))
