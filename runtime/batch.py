"""Score a corpus with LFM on Ray Data: Parquet shards, resumable, every input exactly once.

    python runtime/batch.py MODEL INPUTS... --output DIR [--address auto|ray://HOST:10001]
    lfm batch lfm.onnx photos/ s3://bucket/crawl/ @more.txt --output scores/

MODEL is an exported model (lfm.onnx; a local path or a URI); it is sent to the workers through
Ray's object store, so they need the package installed but no copy of the model. INPUTS are
what infer.py takes (files, folders, globs, @LIST, -) plus URIs of any filesystem pyarrow reads
(s3://, gs://, hdfs://, file://): folders are listed recursively, globs expanded, on the driver.

Stages: image files are read and decoded by Ray tasks (--decode-cpus each; Ray Data sizes their
number to keep the scorers fed and memory bounded), and scored by a pool of --actors actors,
each holding one model (--gpus-per-actor GPUs when the cluster has GPUs, else the CPU backend
infer.py's auto picks, ONNX Runtime or OpenVINO, on --cpus-per-actor CPUs with --threads threads). Records go to DIR as shards of --shard-size
inputs (shard-000000.parquet, ...; --format jsonl for JSON lines): path, logit, score, label,
error, flags and model_sha256, the same records as infer.py --model gives, in input order.

Exactly once: input i belongs to shard i // --shard-size; a shard is written once, atomically,
when all its records are back, so each input appears once in DIR, failures as error records.
A worker that dies costs nothing: Ray Data restarts a dead actor and runs its unfinished tasks
again, and reruns a decoding task whose worker died (its defaults, kept).
Resumable: rerun the same command after a crash or Ctrl-C and only the missing shards are
scored; DIR/_manifest.json refuses a rerun with another model, listing or setting. DIR/_SUCCESS
appears when every shard is complete.

--address: a Ray started for this run on this machine (the default; RAY_ADDRESS, as set by
`ray job submit`, is used when present), `auto` (the cluster this machine belongs to) or
ray://HOST:10001 (Ray Client).

Exit status: 0 when every input was scored, 1 when any failed or the run could not finish,
2 for bad arguments or a model that could not be loaded, 130 when interrupted (143 on SIGTERM).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a script: runtime/ is sys.path[0]; import the installed package
    sys.path.pop(0)

from lfm.runtime.cli import (ArgumentParser, Progress, add_path_arguments, argtype, describe_os_error,  # noqa: E402
                             number, positive_int, run, stop_status, stop_word)
from lfm.runtime.files import first_line  # noqa: E402
from lfm.runtime.options import ModelArgs, OutputArgs, PipelineArgs, parse_and_check  # noqa: E402
from lfm.runtime.stderr_filter import drop_stderr_lines  # noqa: E402

CLUSTER_HINT = "pip install 'lfm-deploy[cluster]'"
FORMAT_VERSION = 2  # 2: shards carry the records' flags


PIPELINE = PipelineArgs(only=("threshold", "policy", "size", "tile_reduce", "max_tiles", "max_pixels", "batch_size",
                              "uncertain_band"),
                        help={"batch_size": "images per model call (and per decoding step)"})
BACKEND = ModelArgs(only=("threads",), help={"threads": "backend threads per actor (default: --cpus-per-actor, "
                                                        "at least 1)"})
OUTPUT = OutputArgs(("parquet", "jsonl"), defaults={"format": "parquet"}, required=True, metavar="DIR",
                    help={"output": "folder (or URI) for the shards", "format": "shard format"})
RESOURCE = argtype(number(0.0, math.inf, "a number"))  # CPUs or GPUs reserved: 0 or more, fractions allowed


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("model", metavar="MODEL", help="exported model (lfm.onnx), a local path or a URI")
    add_path_arguments(p, "inputs", "INPUT", "image files, folders, globs, URIs (s3://bucket/prefix/, ...)")
    ray = p.add_argument_group("Ray")
    ray.add_argument("--address", default=None,
                     help="Ray cluster: auto, ray://HOST:10001 or HOST:PORT (default: $RAY_ADDRESS if set, else a "
                          "Ray started on this machine for this run)")
    ray.add_argument("--actors", type=positive_int(1), default=None,
                     help="scoring actors, one model each (default: one per GPU, else half the CPUs)")
    ray.add_argument("--gpus-per-actor", type=RESOURCE, default=None,
                     help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    ray.add_argument("--cpus-per-actor", type=RESOURCE, default=1.0, help="CPUs reserved per actor")
    ray.add_argument("--decode-cpus", type=RESOURCE, default=1.0, help="CPUs reserved per decoding task")
    ray.add_argument("--shard-size", type=positive_int(1), default=10000,
                     help="inputs per output shard: the unit written at once and skipped on a rerun")
    for group in (BACKEND, PIPELINE, OUTPUT):
        group.add_to(p)
    return parse_and_check(p, argv, BACKEND, PIPELINE, OUTPUT)


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = output_problem(args.output) or overwrite_problem(args.output, [
        ("the model", args.model), ("the model's sidecar", args.model + ".json")])
    if problem:
        return fail(problem)
    local_ray_auth(args.address)  # before Ray is imported: it reads the mode once
    try:  # Ray (and pyarrow, which it brings) only now: the rest of the runtime never imports them
        import ray
        import ray.data  # noqa: F401
        import pyarrow  # noqa: F401
    except ModuleNotFoundError as e:
        return fail(f"{prog()} needs the Python package {(e.name or 'ray').split('.')[0]!r} (the [cluster] extra), "
                    f"which is not installed: {CLUSTER_HINT}")
    except ImportError as e:  # installed but broken, e.g. a pyarrow built for another numpy
        return fail(f"{prog()} cannot import Ray Data ({first_line(e)}); reinstall it: {CLUSTER_HINT}")
    from lfm.runtime.batch_inputs import list_inputs, listing_sha256, shard_count, shard_range
    from lfm.runtime.batch_shards import OutputFolder

    try:  # the model first: a bad one is one line now, not after listing a corpus
        model = load_model(args)
    except OSError as e:
        return fail(f"{args.model}: {describe_os_error(e) if e.errno else first_line(e)}")
    except (ValueError, RuntimeError) as e:  # the runtime's BackendError and friends name the file already
        return fail(first_line(e))
    listing = list_inputs(args.inputs, null=args.null)
    for note in listing.notes:
        print(f"note: {note}", file=sys.stderr)
    if not listing.inputs:
        return fail("no inputs: the lists given hold no paths")
    problem = overwrite_problem(args.output, listing.inputs)
    if problem:
        return fail(problem)

    n, size = len(listing.inputs), args.shard_size
    expected = {s: len(shard_range(s, n, size)) for s in range(shard_count(n, size))}
    manifest = {"format_version": FORMAT_VERSION, "model_sha256": model.sha256, "inputs": n,
                "listing_sha256": listing_sha256(listing.inputs), "shard_size": size, "format": args.format,
                "settings": model.settings}
    try:
        out = OutputFolder(args.output, args.format)
        problem = check_manifest(out, manifest)
        if problem:
            return fail(problem)
        out.remove_stale()
        done = out.complete_shards(expected)
    except OSError as e:
        return fail(f"{args.output}: {first_line(e)}")
    todo = [s for s in expected if s not in done]
    job = Job(args, listing, model, out, expected, done)
    if todo:
        code = job.score(todo)
        if code is not None:
            return code
    return job.finish()


# -- the model --------------------------------------------------------------------------------------

@dataclass
class Model:
    """The model's bytes (and its sidecar's), checksum and the effective preprocessing settings."""

    name: str  # the file's name, kept on the workers (its extension picks the backend)
    path: str | None  # the driver's local file (None for a URI): workers that see it load it
    files: dict[str, bytes]
    sha256: str
    settings: dict
    describe: str
    spec: object = None  # the effective ModelSpec (overrides applied): how the decoding tasks prepare inputs


def load_model(args) -> Model:
    """Read MODEL (local or URI), load it once here to check it and read its spec: a bad model
    is one line now rather than a failure on every worker later."""
    from lfm.runtime.batch_inputs import is_uri, read_uri_bytes
    from lfm.runtime.batch_stages import materialize
    from lfm.runtime.detector import Detector

    def read(path: str) -> bytes:
        if is_uri(path):
            return read_uri_bytes(path)
        with open(path, "rb") as f:
            return f.read()

    name = os.path.basename(args.model.rstrip("/"))
    files = {name: read(args.model)}
    try:  # a TensorRT engine's sidecar (PLAN.json) travels with it
        files[name + ".json"] = read(args.model + ".json")
    except OSError:
        pass
    sha256 = hashlib.sha256(files[name]).hexdigest()
    local = args.model if not is_uri(args.model) else materialize(files, sha256)[name]
    with Detector(local, PIPELINE.options(args)) as det:
        spec, describe, band = det.spec, det.runner.describe(), det.uncertain_band
    settings = {"threshold": spec.threshold, "policy": spec.policy, "size": spec.size, "tile_reduce": args.tile_reduce,
                "max_tiles": args.max_tiles, "max_pixels": args.max_pixels, "uncertain_band": band}
    return Model(name, None if is_uri(args.model) else os.path.abspath(args.model), files, sha256, settings, describe,
                 spec)


# -- the output folder ------------------------------------------------------------------------------

def output_problem(output: str) -> str | None:
    """Why DIR cannot hold the shards (checked before any work), or None."""
    if "://" in output:
        return None  # a URI: its filesystem answers when it is opened
    if os.path.exists(output) and not os.path.isdir(output):
        return f"{output}: is a file; --output names a folder for the shards"
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    target = output if os.path.isdir(output) else parent
    if not os.access(target, os.W_OK):
        return f"{output}: folder {target} is not writable"
    return None


def overwrite_problem(output: str, inputs) -> str | None:
    """The shared guard: a file in the output folder that a run may replace or remove (a shard,
    the manifest, _SUCCESS) must not be the model or an input. (Other files there are refused by
    check_manifest.)"""
    from lfm.runtime.batch_shards import written_by_a_run
    from lfm.runtime.files import overwrite_refusal

    if "://" in output or not os.path.isdir(output):
        return None
    return overwrite_refusal([os.path.join(output, n) for n in os.listdir(output) if written_by_a_run(n)], inputs)


def check_manifest(out, manifest: dict) -> str | None:
    """A folder is resumed only by the run that started it; a new folder gets the manifest."""
    earlier = out.read_manifest()
    if earlier is None:
        mine = {"_manifest.json", "_SUCCESS"}
        others = [n for n in out.names() if n not in mine and not n.startswith(".")]
        if others:
            return (f"{out.where}: holds files ({others[0]}, ...) but no _manifest.json of a batch run; "
                    "choose an empty or new folder for --output")
        out.write_manifest(manifest)
        return None
    differ = [k for k in manifest if earlier.get(k) != manifest[k]]
    if differ:
        detail = "; ".join(f"{k}: {earlier.get(k)} then, {manifest[k]} now" for k in differ[:2])
        return (f"{out.where}: holds the shards of another run ({detail}); rerun that command to resume it, "
                "or choose a new --output")
    return None


# -- the run ----------------------------------------------------------------------------------------

class Job:
    def __init__(self, args, listing, model: Model, out, expected: dict[int, int], done: dict[int, tuple[int, int]]):
        self.args, self.listing, self.model, self.out = args, listing, model, out
        self.expected, self.done = expected, dict(done)
        self.skipped = len(done)
        self.scored_now = 0
        self.seconds = 0.0
        self.duplicates = 0
        self.plan = None  # actors and their resources, once scoring started

    def score(self, todo: list[int]) -> int | None:
        """Score the shards in ``todo`` on Ray; None when it went through, else the exit status."""
        import ray

        started = connect(self.args.address)
        if isinstance(started, str):
            return fail(started)
        try:
            plan = size_pools(self.args, ray.cluster_resources(), started)
            if isinstance(plan, str):
                return fail(plan)
            self.plan = plan
            total = sum(self.expected[s] for s in todo)
            rows = block_rows(total, float(ray.cluster_resources().get("CPU", 1)), self.args.batch_size)
            with drop_stderr_lines(RAY_FALSE_ALARMS, prefix=b"["):
                return self.stream(self.dataset(todo, plan, rows), total)
        finally:
            if started:
                ray.shutdown()

    def dataset(self, todo: list[int], plan: dict, rows: int):
        """Inputs (blocks of ``rows``) -> decode (tasks) -> score (actor pool, --batch-size per call)."""
        import ray.data

        from lfm.runtime.batch_stages import Scorer, decode_batch

        quiet_ray_data()
        blocks = input_blocks(self.listing, todo, self.args.shard_size, rows)
        spec, step = self.model.settings, self.args.batch_size
        ds = ray.data.from_arrow(blocks)
        # Decoding: stateless tasks, which reserve the memory their block of pixels takes. That
        # request also keeps Ray Data from fusing them into the scorers (it fuses stages whose
        # resource requests are equal): each stage is sized on its own.
        ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=step, num_cpus=self.args.decode_cpus,
                            memory=decode_memory(rows, spec["policy"], spec["size"], self.args.max_tiles),
                            fn_kwargs=dict(spec=self.model.spec, max_pixels=self.args.max_pixels,
                                           max_tiles=self.args.max_tiles))
        # the driver's resolved spec, so every actor runs as the manifest says; one decoding worker: the
        # actors get arrays decoded by the Ray tasks
        options = PIPELINE.options(self.args, threshold=spec["threshold"], policy=spec["policy"], size=spec["size"],
                                   uncertain_band=spec["uncertain_band"], workers=1)
        return ds.map_batches(
            Scorer, batch_format="pyarrow", batch_size=step, compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
            fn_constructor_args=(self.model.files, self.model.name, self.model.sha256, self.model.path, plan["threads"],
                                 options), num_cpus=plan["cpus_per_actor"], num_gpus=plan["gpus_per_actor"] or None)

    def stream(self, ds, total: int) -> int | None:
        """Collect records as they come back; write each shard as soon as it is whole."""
        shard_size, inputs = self.args.shard_size, self.listing.inputs
        pending: dict[int, dict[int, tuple]] = {}
        bar = Progress(total, enabled={"auto": None, "on": True, "off": False}[self.args.progress])
        t0 = time.perf_counter()
        try:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                columns = [table.column(c).to_pylist() for c in ("index", "logit", "score", "label", "error", "flags")]
                for i, logit, score, label, error, flags in zip(*columns):
                    shard = i // shard_size
                    got = pending.setdefault(shard, {}) if shard not in self.done else None
                    if got is None or i in got:  # a retried task's second answer: exactly once
                        self.duplicates += 1
                        continue
                    got[i] = (inputs[i], logit, score, label, error, flags)
                    bar.update(error is None)
                    if len(got) == self.expected[shard]:
                        self.done[shard] = self.out.write_shard(shard, [got[k] for k in sorted(got)], self.model.sha256)
                        self.scored_now += len(got)
                        del pending[shard]
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM
            bar.close()
            print(f"{stop_word(stop)}: {len(self.done)} of {len(self.expected)} shards complete in {self.args.output}; "
                  "run the same command again to score the rest", file=sys.stderr)
            return stop_status(stop)
        except OSError as e:  # writing a shard failed (disk full, no permission): not Ray's doing
            bar.close()
            return fail(f"cannot write to {self.args.output}: {first_line(e)}; {len(self.done)} of "
                        f"{len(self.expected)} shards are complete there", status=1)
        except Exception as e:  # the cluster gave up (retries spent, nodes lost): keep what is complete
            bar.close()
            return fail(f"the Ray job failed ({type(e).__name__}: {first_line(e)}); {len(self.done)} of "
                        f"{len(self.expected)} shards are complete in {self.args.output}: rerun to score the rest",
                        status=1)
        finally:
            self.seconds = time.perf_counter() - t0
        bar.close()
        incomplete = [s for s in self.expected if s not in self.done]
        if incomplete:  # cannot happen unless Ray lost rows silently; say so rather than write a short shard
            missing = sum(self.expected[s] - len(pending.get(s, ())) for s in incomplete)
            return fail(f"{missing} inputs never came back from the cluster; {len(self.done)} of "
                        f"{len(self.expected)} shards are complete in {self.args.output}: rerun to score the rest",
                        status=1)
        return None

    def finish(self) -> int:
        n = len(self.listing.inputs)
        failed = sum(f for _, f in self.done.values())
        self.out.write_success({"inputs": n, "scored": n - failed, "failed": failed, "shards": len(self.expected),
                                "model_sha256": self.model.sha256})
        rate = self.scored_now / self.seconds if self.seconds else 0.0
        how = f"{self.plan['actors']} actor(s) x {self.model.describe}" if self.plan else "nothing left to score"
        print(f"scored {n - failed} of {n} inputs, {failed} failed; this run: {self.scored_now} in {self.seconds:.2f} s "
              f"({rate:.1f} images/s), {len(self.expected) - self.skipped} shard(s) written, {self.skipped} already "
              f"complete -> {self.args.output}; {how}", file=sys.stderr)
        if self.duplicates:
            print(f"note: {self.duplicates} record(s) delivered twice by retried tasks were dropped", file=sys.stderr)
        return 1 if failed else 0


def block_rows(inputs: int, cpus: float, batch_size: int) -> int:
    """Inputs per block, one decoding task's work: about four blocks per CPU, so that both
    stages are balanced on a short run, and at most ~1024, so that the driver puts few objects
    (Ray takes a few ms each) and a task's output stays well under Ray Data's 128 MB blocks;
    a whole number of batches."""
    rows = max(batch_size, min(1024, math.ceil(inputs / (4 * max(cpus, 1.0)))))
    return math.ceil(rows / batch_size) * batch_size


def input_blocks(listing, todo: list[int], shard_size: int, rows: int) -> list:
    """The shards to score as pyarrow blocks of ``rows`` inputs: index (the input's position),
    path (bytes: a file name need not be UTF-8) and the error found while listing, if any.
    A block is one decoding task's work, so blocks never straddle shards."""
    import pyarrow as pa

    from lfm.runtime.batch_inputs import shard_range

    inputs, errors, blocks = listing.inputs, listing.errors, []
    for shard in todo:
        positions = shard_range(shard, len(inputs), shard_size)
        for start in range(positions.start, positions.stop, rows):
            index = range(start, min(start + rows, positions.stop))
            blocks.append(pa.table({"index": pa.array(index, pa.int64()),
                                    "path": pa.array([os.fsencode(inputs[i]) for i in index], pa.binary()),
                                    "error": pa.array([errors.get(inputs[i]) for i in index], pa.string())}))
    return blocks


def quiet_ray_data() -> None:
    """Our one progress line (on a terminal) and summary instead of Ray Data's bars and logs."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": as meant


def decode_memory(rows: int, policy: str, size: int, max_tiles: int) -> int:
    """Memory a decoding task needs: its worker process (Python, numpy, Pillow, pyarrow: about
    110 MB measured) and its output, a block of prepared pixels (Ray Data cuts blocks at 128 MB),
    twice (numpy's and the Arrow copy); an image's tiles counted at max_tiles full tiles, a
    native-size image (policy none) at 2048 x 2048."""
    from lfm.runtime.options import DEFAULT_MAX_MODEL_PIXELS

    pixels = {"resize": size * size, "center-crop": size * size, "tiles": max_tiles * size * size}.get(
        policy, DEFAULT_MAX_MODEL_PIXELS)
    return 160 * 2**20 + min(rows * pixels * 3, 128 * 2**20) * 2


# -- Ray --------------------------------------------------------------------------------------------

# Ray's error-level line that is no error here, dropped from stderr while the scorers run (the
# only one; docs/batch.md says so): Ray Data creates each pool actor with ObjectRefs of its own
# (its context, the UDF) as constructor arguments and max_restarts=-1, which Ray core flags once
# per process (ray-project/ray#53727: a restart fails if those objects are gone). Ray Data holds
# them while the dataset runs, so a restarted Scorer finds them: test_a_killed_actor_costs_no_record.
RAY_FALSE_ALARMS = (rb"\[[^\]]* E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: "
                    rb"'MapWorker\(MapBatches\(Scorer\)\)' and ID: '[0-9a-f]+' "
                    rb"has constructor arguments in the object store and max_restarts > 0\.")


def ray_address(address: str | None) -> str:
    """The cluster to join: --address, else RAY_ADDRESS (as `ray job submit` sets it), else
    "local": a Ray started on this machine for this run."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def local_ray_auth(address: str | None) -> None:
    """A Ray this run starts gets token authentication, as Ray (2.52+) gives a new local cluster
    by default, without Ray's warning that it did so: RAY_AUTH_MODE=token, unless the user set a
    mode. Only before Ray is first imported (it reads the mode once); a cluster joined by address
    keeps its own mode."""
    if ray_address(address) == "local" and "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str | None) -> bool | str:
    """Join (or start) Ray: True when this run started the connection (and ends it), False when
    the process was already connected (a notebook, a test), else the problem in one line."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_address(address)
    kwargs = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        return (f"cannot reach the Ray cluster at {address} ({first_line(e)}); start one with `ray start --head`, "
                "or leave out --address for a Ray on this machine")
    return True


def size_pools(args, resources: dict, local: bool) -> dict | str:
    """Actors and their resources, from the flags and the cluster; a plan that cannot run on a
    cluster this run started itself (nothing left for decoding) is refused in one line."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    gpus_per_actor = args.gpus_per_actor if args.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if args.actors:
        actors = args.actors
    elif gpus_per_actor:
        actors = max(1, int(gpus // gpus_per_actor))
    else:
        actors = max(1, int(cpus // 2 // max(args.cpus_per_actor, 1e-9)))
    threads = args.threads or max(1, int(args.cpus_per_actor))
    plan = {"actors": actors, "gpus_per_actor": gpus_per_actor, "cpus_per_actor": args.cpus_per_actor,
            "threads": threads}
    need = actors * args.cpus_per_actor + args.decode_cpus
    if need > cpus + 1e-9:
        message = (f"--actors {actors} x --cpus-per-actor {args.cpus_per_actor:g} + --decode-cpus {args.decode_cpus:g} "
                   f"need {need:g} CPUs; the cluster has {cpus:g}: lower them (fractions are fine, e.g. 0.5)")
        if local:
            return message
        print(f"note: {message}, or Ray waits for the autoscaler to add nodes", file=sys.stderr)
    if gpus_per_actor and actors * gpus_per_actor > gpus and local:
        return f"--actors {actors} x --gpus-per-actor {gpus_per_actor:g} need more GPUs than this machine's {gpus:g}"
    return plan


# -- messages ---------------------------------------------------------------------------------------

def prog() -> str:
    return os.path.basename(sys.argv[0] or "batch.py")


def fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(run(main))
