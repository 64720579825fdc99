"""The job queue of ``bctbench run-all``: every (method, seed) of a benchmark as its own ``bctbench run``
subprocess, ``jobs`` at a time.

* **Parallelism.** ``jobs`` defaults to the number of GPUs when the accelerator resolves to a GPU, else to
  the number of CPU cores, capped by the number of jobs to run. Each job gets ``OMP_NUM_THREADS`` = max(1,
  cores // jobs) and, on GPUs, its own ``CUDA_VISIBLE_DEVICES`` (slot ``i`` uses GPU ``i mod #GPUs``).
* **Shared inputs first.** Before any job starts, this process generates the dataset, loads (or trains) the
  old model of every requested seed, and computes the caches that every job of a seed would otherwise write
  at the same moment: the old model's eval-set features and the old-model artefacts the requested methods
  declare (with the jobs' thread count, so the values are those a job would have computed).
* **Skip.** A job whose result file exists with the current spec sha256, old-model identity and dataset
  sha256 is skipped (``force``: run anyway). Its label, hence its result path, comes from the ``--set``
  hyperparameters exactly as :func:`bctbench.pipeline.run` computes it.
* **Resume.** A job whose ``<run dir>.partial`` folder holds a checkpoint of this very run (same provenance,
  :func:`bctbench.resume.check_resume`) is started with ``--resume``; so after an interruption the same
  command finishes the remaining jobs and continues interrupted ones from their last epoch.
* **Output.** Each job's stdout and stderr go to ``<cache root>/queue/<benchmark>/<label>-seed<k>.log``
  (appended, one header line per attempt); the user sees plain progress lines only.
* **Interruption.** SIGINT / SIGTERM stop the running jobs (their process groups) and raise
  :class:`QueueInterrupted`; jobs die with the queue even on ``kill -9`` (Linux: parent-death signal). One
  queue per (cache root, benchmark) at a time (a lock file beside the logs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bctbench.errors import BCTBenchError, ConfigError

__all__ = [
    "Job",
    "QueueInterrupted",
    "check_jobs",
    "default_jobs",
    "job_log_path",
    "plan_jobs",
    "result_is_current",
    "run_queue",
]

_POLL_SECONDS = 0.1
_STOP_GRACE_SECONDS = 10.0


class QueueInterrupted(KeyboardInterrupt):
    """The queue was stopped by SIGINT / SIGTERM after terminating its running jobs (the CLI exits 130)."""


@dataclass
class Job:
    """One (method, seed) run of the queue; ``index`` is 1-based in queue order."""

    index: int
    method: str
    seed: int
    digest: str = "default"
    error: str | None = None  # the method or its --set options cannot run: fails without starting
    resume: bool = False
    argument: str = ""  # the method as given (a registered name or ``module:Class``), for ``bctbench run -m``
    preset: str | None = None

    @property
    def label(self) -> str:
        from bctbench.results import run_label

        return run_label(self.method, self.digest, self.preset)

    @property
    def name(self) -> str:
        """``<label>/seed<k>``, as :func:`bctbench.pipeline.run_all` names failed runs."""
        return f"{self.label}/seed{self.seed}"

    @property
    def title(self) -> str:
        return f"{self.label} seed {self.seed}"


# ------------------------------------------------------------------------------------------- options
def check_jobs(value: Any, label: str = "--jobs") -> int | None:
    """``None`` / ``"auto"`` / ``""`` -> None (automatic), a positive integer (or its text) -> itself;
    anything else is a one-line :class:`ConfigError` naming ``label``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{label}: expected a positive integer or auto, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if text.lower() in ("", "auto"):
            return None
        try:
            number = int(text, 10)
        except ValueError:
            raise ConfigError(f"{label}: expected a positive integer or auto, got {str(value)!r}") from None
    if number < 1:
        raise ConfigError(f"{label}: expected a positive integer or auto, got {number}")
    return number


def _on_gpu(runtime) -> bool:
    import torch

    return runtime.accelerator in ("gpu", "cuda") or (
        runtime.accelerator == "auto" and torch.cuda.is_available()
    )


def _gpu_count() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def default_jobs(runtime, n_jobs: int) -> int:
    """Jobs at a time by default: the number of GPUs when ``runtime`` runs on GPUs, else the number of CPU
    cores this process may use (:func:`bctbench.pipeline.context.cpu_cores`); at most ``n_jobs`` and at least 1."""
    from bctbench.pipeline.context import cpu_cores

    slots = _gpu_count() if _on_gpu(runtime) else cpu_cores()
    return max(1, min(slots, n_jobs))


def cpu_job_resources(cores: int, slots: int, workers: int, workers_given: bool) -> tuple[int, int]:
    """``(torch threads, loader workers)`` of each of ``slots`` CPU jobs sharing ``cores`` cores, where a job
    would use ``workers`` loader workers (``workers_given``: the user chose them with ``--num-workers``).

    When every core already trains a job (several jobs, or one core) the job loads its data in-process
    (workers 0) unless the user chose otherwise: worker processes only contend with the training threads (two
    synth jobs, one worker each: fit 68-73 s per run; without workers 50-61 s). In-process loading gives the
    same batches (order and augmentation come from seed, epoch and index). A job with cores to spare keeps its
    workers and gives its training threads the cores they leave (threads and a worker on one core slow every
    step)."""
    per_job = max(1, cores // max(1, slots))
    if not workers_given and (slots > 1 or per_job == 1):
        return per_job, 0
    return max(1, per_job - workers), workers


def _runtime_options(overrides: list[str] | None) -> dict[str, Any]:
    """The runtime keys of the ``--set`` options (checked); ``seed`` is refused (``--seeds`` says it)."""
    from bctbench.config import RUNTIME_KEYS, check_runtime_option, parse_set_options

    opts = parse_set_options(overrides)
    if "seed" in opts:
        raise ConfigError("--set seed: run-all takes its seeds from --seeds")
    return {k: check_runtime_option(k, opts.text.get(k, v)) for k, v in opts.items() if k in RUNTIME_KEYS}


# -------------------------------------------------------------------------------------------- plan
def plan_jobs(
    methods: list[str] | None,
    seeds: list[int],
    overrides: list[str] | None,
    spec: Any = None,
    preset: str | None = None,
) -> list[Job]:
    """The jobs of ``methods`` (default: every registered method) x ``seeds``, method-major.

    Each job's hyperparameter digest is computed as :func:`bctbench.pipeline.run` does (non-default values of
    the coerced ``--set`` hyperparameters, or of ``preset`` on ``spec``). A method that cannot be loaded,
    refuses the options or lacks the preset gets jobs with ``error`` set (they fail without starting; the
    others still run)."""
    from bctbench import pipeline, presets
    from bctbench.config import method_annotations, parse_set_options, split_overrides
    from bctbench.registry import get_method, list_methods

    opts = parse_set_options(overrides)
    jobs: list[Job] = []
    for name in methods or list_methods():
        method, digest, error = name, "default", None
        try:
            cls = get_method(name)
            params = pipeline.method_parameters(cls)
            method_kw, _ = split_overrides(opts, params, cls.name, method_annotations(cls))
            method = cls.name
            if preset is not None:
                if method_kw:
                    raise ConfigError(
                        f"--preset {preset} cannot be combined with hyperparameter --set options"
                    )
                method_kw = presets.resolve(spec, cls, preset)
            digest = pipeline.method_hparams_digest(cls, {**params, **method_kw})
        except BCTBenchError as exc:
            error = str(exc)
        for seed in seeds:
            jobs.append(Job(len(jobs) + 1, method, int(seed), digest, error, argument=name, preset=preset))
    return jobs


def job_log_path(ctx, job: Job) -> Path:
    """``<cache root>/queue/<benchmark>/<label>-seed<k>.log``."""
    return _queue_dir(ctx) / f"{job.label}-seed{job.seed}.log"


def _queue_dir(ctx) -> Path:
    return Path(ctx.cache_root) / "queue" / ctx.spec.name


def result_is_current(ctx, job: Job, old_identity: str | None, dataset_sha256: str | None) -> bool:
    """True when the job's result file exists, reads, and records the current spec sha256, the seed's
    old-model identity (the pinned one when the spec pins the seed) and the dataset sha256."""
    from bctbench.results import ResultFileError, read_result, result_path

    path = result_path(ctx.results_root, ctx.spec.name, job.method, job.seed, job.digest, job.preset)
    if not path.is_file():
        return False
    try:
        result = read_result(path)
    except ResultFileError:
        return False
    pinned = ctx.spec.old_model.pinned.get(job.seed)
    return (
        result.benchmark_sha256 == ctx.spec.sha256
        and (pinned is None or result.old_identity == pinned)
        and (old_identity is None or result.old_identity == old_identity)
        and (result.eval_variants or {}).get("dataset_sha256") == dataset_sha256
    )


def _can_resume(ctx, job: Job, provenance: dict[str, Any]) -> bool:
    """True when the job's ``.partial`` run folder holds a readable checkpoint of this very run."""
    from bctbench.pipeline import partial_dir
    from bctbench.resume import check_resume, latest_checkpoint

    if ctx.spec.sequential_steps > 1:  # generations resume from their own keyed folders (--resume by hand)
        return False
    last = latest_checkpoint(partial_dir(ctx.run_dir(job.method, job.seed, job.digest, job.preset)))
    if last is None:
        return False
    try:
        check_resume(
            last, {**provenance, "method": job.method, "seed": job.seed, "hparams_digest": job.digest}
        )
    except BCTBenchError:
        return False  # another run's checkpoint: the job starts afresh (and replaces it)
    return True


# ------------------------------------------------------------------------------------------ warm-up
@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Only warnings from bctbench's loggers inside the block (the user sees progress lines)."""
    logger = logging.getLogger("bctbench")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _warm_caches(ctx, runtime, jobs: list[Job], refs: dict[int, Any], eval_sets: list, threads: int | None):
    """Compute, once, the caches every job of a seed shares (old eval features, declared old-model artefacts),
    so that parallel jobs read them instead of writing the same files at the same time."""
    from types import SimpleNamespace

    from bctbench import pipeline
    from bctbench.method import Encoder
    from bctbench.old_model import load_old_model
    from bctbench.registry import get_method

    spec = ctx.spec
    step = 0 if spec.sequential_steps > 1 else None
    with _torch_threads(threads), pipeline.isolated_rng():
        for seed in sorted({j.seed for j in jobs}):
            ref = refs[seed]
            old = load_old_model(ref.path, ref.identity, expect_backbone=spec.models.old_backbone)
            evaluator = pipeline.build_evaluator(ctx, runtime, eval_sets=eval_sets)
            encoder = Encoder(old.model.embedder, f"old:{ref.identity}").eval()
            for es in eval_sets:
                for part in ("query", "gallery"):
                    evaluator.features(encoder, es, part)
            kinds: set[str] = set()
            for job in jobs:
                if job.seed == seed:
                    kinds |= set(getattr(get_method(job.method), "required_artifacts", ()) or ())
            if kinds:
                dm = pipeline.build_datamodule(ctx, "new", runtime, seed, step=step)
                dm.prepare_data()
                dm.setup("fit")
                store = pipeline.artifact_store(ctx, SimpleNamespace(old=old), dm, runtime)
                for kind in sorted(kinds):
                    store.get(kind)


# ------------------------------------------------------------------------------------------ children
def _parent_death_hook():
    """A ``preexec_fn`` that makes the job die with the queue (Linux ``PR_SET_PDEATHSIG``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the queue died before the hook ran
            os._exit(1)

    return hook


def _devices_text(devices: Any) -> str:
    if isinstance(devices, list):
        return ",".join(str(d) for d in devices) + ("," if len(devices) == 1 else "")
    return str(devices)


def _command(ctx, job: Job, runtime, overrides: list[str], benchmark: str) -> list[str]:
    """``python -m bctbench.cli run ...`` of ``job`` with the queue's roots and options."""
    from bctbench.paths import is_reference_root

    argv = [sys.executable, "-m", "bctbench.cli", "run", "-b", benchmark, "-m", job.argument or job.method]
    argv += ["--seed", str(job.seed)]
    if job.preset is not None:
        argv += ["--preset", job.preset]
    argv += [
        "--data-root",
        str(Path(ctx.data_root).resolve()),
        "--cache-root",
        str(Path(ctx.cache_root).resolve()),
    ]
    if is_reference_root(ctx.results_root):
        argv.append("--reference")
    else:
        argv += ["--results-root", str(Path(ctx.results_root).resolve())]
    for item in overrides:
        argv += ["--set", item]
    argv += ["--accelerator", str(runtime.accelerator), "--devices", _devices_text(runtime.devices)]
    argv += ["--num-nodes", str(runtime.num_nodes), "--strategy", str(runtime.strategy)]
    if runtime.num_workers is not None:
        argv += ["--num-workers", str(runtime.num_workers)]
    if not runtime.wandb:
        argv.append("--no-wandb")
    if runtime.resume or job.resume:
        argv.append("--resume")
    argv.append("--quiet")
    return argv


def _last_error_line(log: Path, offset: int) -> str:
    """The last ``error: ...`` line this attempt wrote to ``log`` (else its last non-empty line)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith("error: ")]
    line = errors[-1][len("error: ") :] if errors else (lines[-1] if lines else "(no output)")
    return line if len(line) <= 300 else line[:297] + "..."


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    log: IO[bytes]
    offset: int
    slot: int
    start: float


@contextlib.contextmanager
def _queue_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: one queue per (cache root, benchmark) at a time."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            other = fh.read().strip() or "?"
            raise ConfigError(
                f"{path}: another run-all of this benchmark is using this cache root (pid {other})"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt like SIGINT (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the job's process group (the job and its data-loader workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        else:  # pragma: no cover - not POSIX
            proc.send_signal(sig)


def _stop(running: list[_Running]) -> None:
    """Terminate the running jobs' process groups; kill what is left after a grace period."""
    for r in running:
        _signal_group(r.proc, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    for r in running:
        try:
            r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for r in running:
        _signal_group(r.proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            r.proc.wait(timeout=5)
        r.log.close()


# ---------------------------------------------------------------------------------------------- queue
def _spec_argument(ctx) -> str:
    """The spec file the jobs load; refuses a spec in memory that differs from its file."""
    from bctbench.config import load_benchmark

    source = ctx.spec.source
    if not source:
        return ctx.spec.name
    path = str(Path(source).resolve())
    try:
        on_disk = load_benchmark(path).sha256
    except BCTBenchError:
        on_disk = None
    if on_disk != ctx.spec.sha256:
        raise ConfigError(
            f"{source}: the jobs read the spec from this file, which differs from the spec being run "
            "(edited since it was loaded?)"
        )
    return path


def run_queue(
    ctx,
    *,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    runtime=None,
    jobs: int | None = None,
    force: bool = False,
    out: IO[str] | None = None,
    preset: str | None = None,
) -> list[str]:
    """Run every (method, seed) of ``ctx``'s benchmark as a ``bctbench run`` subprocess, ``jobs`` at a time
    (None: :func:`default_jobs`); see the module docstring. Prints progress lines to ``out`` (default
    stdout) and returns the names (``<label>/seed<k>``) of the failed jobs.

    Raises :class:`ConfigError` for a bad ``jobs``, ``--set`` or spec before anything starts, and
    :class:`QueueInterrupted` after SIGINT / SIGTERM (running jobs stopped; run again to resume them)."""
    from bctbench import pipeline

    out = out if out is not None else sys.stdout
    jobs = check_jobs(jobs)
    base_runtime = runtime or pipeline.Runtime()
    overrides = list(overrides or [])
    runtime = base_runtime.apply(_runtime_options(overrides))
    seeds = [int(s) for s in (seeds if seeds is not None else ctx.spec.seeds)]
    benchmark = _spec_argument(ctx)
    on_gpu = _on_gpu(runtime)
    pin_gpus = on_gpu and runtime.devices in ("auto", 1)
    if on_gpu and not pin_gpus and jobs not in (None, 1):
        raise ConfigError(
            f"--devices {_devices_text(runtime.devices)} with --jobs {jobs}: each job gets one GPU; "
            "drop --devices, or use --jobs 1 for multi-GPU runs"
        )
    pipeline.check_writable(ctx.results_root, ctx.cache_root)

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    queue_dir = _queue_dir(ctx)
    with _queue_lock(queue_dir / ".lock"):
        plan = plan_jobs(methods, seeds, overrides, ctx.spec, preset)
        total = len(plan)
        failed: list[str] = []
        # shared inputs, before any job: the dataset and every needed old model (then the jobs only read them)
        pipeline.ensure_dataset(ctx)
        dataset_sha256 = pipeline.dataset_fingerprint(ctx)
        eval_sets = pipeline.load_eval_sets(ctx)
        needed = sorted({j.seed for j in plan if j.error is None})
        refs = {seed: pipeline.ensure_old_model(ctx, runtime, seed=seed) for seed in needed}
        split = pipeline.split_sha256(ctx) if needed else None

        todo: list[Job] = []
        skipped = 0
        for job in plan:
            if job.error is not None:
                say(f"[{job.index}/{total}] {job.title} failed: {job.error}")
                failed.append(job.name)
                continue
            ref = refs[job.seed]
            if not force and result_is_current(ctx, job, ref.identity, dataset_sha256):
                say(f"[{job.index}/{total}] {job.title} skipped (result exists)")
                skipped += 1
                continue
            provenance = {
                "old_identity": ref.identity,
                "benchmark_sha256": ctx.spec.sha256,
                "dataset_sha256": dataset_sha256,
                "split_sha256": split,
            }
            job.resume = _can_resume(ctx, job, provenance)
            todo.append(job)

        start = time.time()
        slots = min(jobs, len(todo)) if jobs is not None else default_jobs(runtime, len(todo))
        slots = max(1, slots)
        from bctbench.pipeline.context import _workers, cpu_cores

        threads = max(1, cpu_cores() // slots)
        done = 0
        if todo:
            job_runtime = base_runtime
            if not on_gpu:
                given = base_runtime.num_workers is not None
                threads, workers = cpu_job_resources(cpu_cores(), slots, _workers(ctx, base_runtime), given)
                if not given:  # the job's loader workers, explicit on its command line
                    job_runtime = dataclasses.replace(base_runtime, num_workers=workers)
            where = f"{_gpu_count()} GPU(s)" if pin_gpus else f"{threads} thread(s) each"
            say(f"run-all {ctx.spec.name}: {len(todo)} job(s) to run, {slots} at a time ({where})")
            say(f"logs: {queue_dir}")
            # the jobs' shared caches, with their thread count (a CPU job computes with `threads` threads)
            with _quiet_logs():
                _warm_caches(ctx, runtime, todo, refs, eval_sets, None if on_gpu else threads)
            done, failed_now = _execute(
                ctx, todo, total, slots, threads, pin_gpus, job_runtime, overrides, benchmark, say
            )
            failed += failed_now
        say(
            f"run-all {ctx.spec.name}: {done} done, {skipped} skipped, {len(failed)} failed "
            f"in {time.time() - start:.0f} s"
        )
        return failed


def _visible_gpus() -> list[str]:
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in range(max(1, torch.cuda.device_count()))]


def _execute(ctx, todo, total, slots, threads, pin_gpus, runtime, overrides, benchmark, say):
    """Start and watch the jobs, ``slots`` at a time; returns (number done, names of failed jobs)."""
    gpus = _visible_gpus() if pin_gpus else []
    pending = list(todo)
    running: list[_Running] = []
    free = list(range(slots))
    done = 0
    failed: list[str] = []
    hook = _parent_death_hook()
    try:
        with _sigterm_as_interrupt():
            while pending or running:
                while pending and free:
                    job = pending.pop(0)
                    slot = free.pop(0)
                    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
                    if gpus:
                        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                    argv = _command(ctx, job, runtime, overrides, benchmark)
                    log_path = job_log_path(ctx, job)
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    log = open(log_path, "ab")  # noqa: SIM115 - closed when the job ends
                    header = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": argv[1:]}
                    log.write(f"=== bctbench run-all job {json.dumps(header)}\n".encode())
                    log.flush()
                    offset = log.tell()
                    try:
                        proc = subprocess.Popen(
                            argv,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=env,
                            start_new_session=True,
                            preexec_fn=hook,  # noqa: PLW1509 - only prctl + getppid
                        )
                    except OSError as exc:
                        log.close()
                        free.append(slot)
                        say(f"[{job.index}/{total}] {job.title} failed: cannot start ({exc.strerror or exc})")
                        failed.append(job.name)
                        continue
                    running.append(_Running(job, proc, log, offset, slot, time.time()))
                    resumed = " (resuming)" if job.resume or runtime.resume else ""
                    say(f"[{job.index}/{total}] {job.title} started{resumed}")
                time.sleep(_POLL_SECONDS)
                for r in list(running):
                    code = r.proc.poll()
                    if code is None:
                        continue
                    running.remove(r)
                    r.log.close()
                    free.append(r.slot)
                    free.sort()
                    seconds = time.time() - r.start
                    if code == 0:
                        done += 1
                        say(f"[{r.job.index}/{total}] {r.job.title} done in {seconds:.0f} s")
                    else:
                        why = f"exit {code}" if code > 0 else f"signal {-code}"
                        last = _last_error_line(job_log_path(ctx, r.job), r.offset)
                        say(f"[{r.job.index}/{total}] {r.job.title} failed ({why}): {last}")
                        failed.append(r.job.name)
    except KeyboardInterrupt:
        names = ", ".join(r.job.title for r in running)
        _stop(running)
        stopped = f"stopped {len(running)} running job(s) ({names}); " if running else ""
        raise QueueInterrupted(
            f"run-all interrupted: {stopped}run the same command again to finish the remaining jobs"
        ) from None
    return done, failed
