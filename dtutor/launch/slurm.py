"""Run a generated batch script under Slurm and collect the ranks' results, as ``dtutor.launch`` does.

``train(2, strategy="ddp", global_batch=64)`` writes the recipe (``dtutor.launch.recipes.training_sbatch``),
submits it with ``sbatch``, waits for it with a bounded timeout while printing the job's state changes and
its output as it grows, and returns every rank's ``RunResult`` (pickled by the ranks into the job's
``DTUTOR_RESULT_DIR``). ``run_script`` does the same for any script. A job that ends badly raises
``SlurmJobError`` (a ``LaunchError``): the rank that failed and its traceback, read from the job's output;
or the time limit Slurm enforced (state ``TIMEOUT``). A job still running at the timeout, or when the
caller is interrupted, is cancelled with ``scancel``.

Job states come from ``scontrol show job``, which needs no accounting database (``sacct`` would). The job's
folder (``workdir``, default ``./slurm-jobs``) must be one every node sees, as your home folder is on most
clusters; the script and its output file stay there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtutor.launch.hang_finder import HangReport, find_hang
from dtutor.launch.recipes import training_sbatch
from dtutor.launch.supervisor import NOISE, TAIL_LINES, LaunchError, first_failure, read_results
from dtutor.launch.worker import RESULT_DIR_ENV

if TYPE_CHECKING:
    from dtutor.result import RunResult

ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}
COMMAND_TIMEOUT = 30.0  # seconds for one sbatch/scontrol/scancel call
HEARTBEAT = 30.0  # seconds without a printed line after which wait says the job's state again
RANK_LINE = re.compile(r"\[rank (\d+)\] (.*)$")


@dataclass
class Job:
    """A submitted job as last seen: its id, state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ...)."""

    job_id: int
    output: Path
    state: str = "PENDING"
    reason: str = ""
    exit_code: str = ""
    time_limit: str = ""
    nodes: str = ""
    submitted: float = field(default_factory=time.monotonic)  # time.monotonic() when it was submitted
    seconds: float = 0.0  # from submission to the last look, measured here

    @property
    def ended(self) -> bool:
        """Whether Slurm has finished with the job."""
        return self.state in ENDED

    def summary(self) -> str:
        """One line, e.g. ``job 7 COMPLETED on n[1-2] after 9.2 s (exit code 0:0)``."""
        where = f" on {self.nodes}" if self.nodes and self.nodes != "(null)" else ""
        why = f", {self.reason}" if self.reason and self.reason != "None" else ""
        return f"job {self.job_id} {self.state}{where} after {self.seconds:.1f} s (exit code {self.exit_code}{why})"


class SlurmJobError(LaunchError):
    """A Slurm job that did not complete: ``job`` says how it ended; ``rank`` and ``remote_traceback`` which
    rank failed first, when one did (read from the job's output)."""

    def __init__(self, message: str, job: Job, rank: int | None = None, remote_traceback: str = "",
                 hang: HangReport | None = None):
        super().__init__(message, rank=rank, remote_traceback=remote_traceback, hang=hang)
        self.job = job


def _slurm(*arguments: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run one Slurm command; its output, or ``RuntimeError`` when it is missing or hangs."""
    if shutil.which(arguments[0]) is None:
        raise RuntimeError(f"{arguments[0]} not found: Slurm's client commands are not installed here")
    try:
        return subprocess.run(arguments, capture_output=True, text=True, env=env, cwd=cwd, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{shlex.join(arguments)} did not answer within {COMMAND_TIMEOUT:g} s") from error


def submit(script: str, workdir: Path, env: dict[str, str] | None = None) -> Job:
    """Write ``script`` into ``workdir`` and submit it with ``sbatch`` (run there, with ``env``); the new job."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"job-{uuid.uuid4().hex[:8]}.sbatch"
    path.write_text(script)
    done = _slurm("sbatch", "--parsable", str(path), env=env, cwd=workdir)  # SLURM_SUBMIT_DIR: workdir
    if done.returncode != 0:
        raise RuntimeError(f"sbatch refused {path}: {done.stderr.strip()}")
    job_id = int(done.stdout.strip().split(";")[0])
    name = re.search(r"^#SBATCH --job-name=(\S+)", script, re.M)
    output = workdir / f"{name.group(1) if name else path.name}-{job_id}.out"
    return Job(job_id, output)


def job_fields(job_id: int) -> dict[str, str] | None:
    """``scontrol show job``'s ``Key=Value`` fields (None once Slurm has forgotten the job: ``MinJobAge``)."""
    done = _slurm("scontrol", "show", "job", "--oneliner", str(job_id))
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return None
        raise RuntimeError(f"scontrol show job {job_id} failed: {done.stderr.strip()}")
    return dict(re.findall(r"(\w+)=(\S*)", done.stdout))


def refresh(job: Job) -> Job:
    """Update ``job`` from ``scontrol show job`` (a forgotten job keeps its last state)."""
    fields = job_fields(job.job_id)
    job.seconds = time.monotonic() - job.submitted
    if fields is not None:
        job.state = fields.get("JobState", job.state)
        job.reason, job.exit_code = fields.get("Reason", ""), fields.get("ExitCode", "")
        job.time_limit, job.nodes = fields.get("TimeLimit", ""), fields.get("NodeList", "")
    return job


def cancel(job: Job, grace: float = 30.0) -> None:
    """``scancel`` the job and wait (at most ``grace`` seconds) until Slurm says it has ended."""
    _slurm("scancel", str(job.job_id))
    deadline = time.monotonic() + grace
    while not refresh(job).ended and time.monotonic() < deadline:
        time.sleep(0.2)


class _Progress:
    """What ``wait`` prints: the job's state changes, the ranks' new lines (``[rank N] ...``) as its output file
    grows, and a line every ``HEARTBEAT`` seconds of silence. The launchers' own lines stay in the file, whose
    tail ``verdict`` shows when the job fails."""

    def __init__(self, job: Job, quiet: bool):
        self.job, self.quiet, self.offset, self.partial, self.state = job, quiet, 0, "", ""
        self.last = time.monotonic()

    def say(self, line: str) -> None:
        print(line)
        self.last = time.monotonic()

    def poll(self) -> None:
        """Print what is new since the last call."""
        if self.quiet:
            return
        job = self.job
        if job.state != self.state or time.monotonic() - self.last > HEARTBEAT:
            self.state = job.state
            why = f" ({job.reason})" if job.state == "PENDING" and job.reason not in ("", "None") else ""
            self.say(f"[slurm] job {job.job_id} {job.state}{why} at {job.seconds:.1f} s")
        if self.job.output.exists():
            with self.job.output.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
            self.offset += len(data)
            done, _, self.partial = (self.partial + data.decode(errors="replace")).rpartition("\n")
            for line in done.split("\n") if done else []:
                found = RANK_LINE.search(line)
                if found and not any(noise in line for noise in NOISE):
                    self.say(found.group(0))


def wait(job: Job, timeout: float, *, quiet: bool = False, poll: float = 0.5, result_dir: Path | None = None) -> Job:
    """Wait until ``job`` ends, printing its progress (unless ``quiet``; see ``_Progress``).

    At most ``timeout`` seconds: then, or on an interruption, the job is cancelled; a timeout raises
    ``SlurmJobError``, which says where each rank waited (``hang_finder``, from the ranks' ``result_dir``; the
    stacks of ranks on this machine) before the job was cancelled.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    deadline, progress = time.monotonic() + timeout, _Progress(job, quiet)
    try:
        while not refresh(job).ended:
            progress.poll()
            if time.monotonic() > deadline:
                hang = find_hang(result_dir) if result_dir is not None and result_dir.is_dir() else HangReport()
                cancel(job)
                headline = f"job {job.job_id} did not finish within {timeout:g} s; it was cancelled ({job.state})"
                raise SlurmJobError(hang.explain(headline), job, hang=hang)
            time.sleep(poll)
    except KeyboardInterrupt:
        cancel(job)
        raise
    progress.state = job.state  # the summary says it
    progress.poll()
    if not quiet:
        print(f"[slurm] {job.summary()}")
    return job


def rank_failures(output: str) -> dict[int, str]:
    """Each failed rank's traceback in a job's output (lines ``[rank N] ...``), in the order they appear."""
    found: dict[int, list[str]] = {}
    for line in output.splitlines():
        match = RANK_LINE.search(line)
        if match is None:
            continue
        rank, text = int(match.group(1)), match.group(2)
        if rank in found:
            found[rank].append(text)
        elif text.startswith("Traceback (most recent call last):"):
            found[rank] = [text]
    return {rank: "\n".join(lines) + "\n" for rank, lines in found.items()}


def verdict(job: Job, result_dir: Path) -> list[Any]:
    """The ranks' results in rank order, or ``SlurmJobError``: the time limit, the first failed rank, or why.

    The first failed rank is the one whose failure report (``rankN.err`` in ``result_dir``) is the earliest:
    the other ranks often fail after it, and the job's output interleaves the nodes. Its traceback is read
    from the job's output (from the report where the output has none).
    """
    output = job.output.read_text(errors="replace") if job.output.exists() else ""
    if job.state == "TIMEOUT":
        raise SlurmJobError(f"job {job.job_id} ran past its time limit ({job.time_limit}); Slurm ended it "
                            "(state TIMEOUT)", job)
    failures = rank_failures(output)
    first = first_failure(result_dir) if result_dir.is_dir() else None  # by the time each rank wrote it down
    if job.state != "COMPLETED" and (failures or first):
        rank, text = first or next(iter(failures.items()))
        text = failures.get(rank, text)
        raise SlurmJobError(f"rank {rank} of job {job.job_id} failed (job {job.state}):\n{text}", job, rank, text)
    results = read_results(result_dir) if result_dir.is_dir() else []
    if job.state != "COMPLETED" or not results:
        tail = "\n".join([line for line in output.splitlines() if not any(n in line for n in NOISE)][-TAIL_LINES:])
        why = "" if results else f"; no rank wrote a result into {result_dir} (a folder every node must see)"
        raise SlurmJobError(f"{job.summary()}{why}; last output:\n{tail}", job)
    return results


@dataclass
class Submission:
    """A job submitted by ``start``, whose ranks write their results into ``result_dir``."""

    job: Job
    result_dir: Path


def start(script: str, *, workdir: str | Path | None = None, quiet: bool = False) -> Submission:
    """Submit ``script`` (a generated recipe) and return at once; ``collect`` waits for it.

    The ranks pickle their results into a fresh folder under ``workdir`` (default ``./slurm-jobs``), named in
    ``DTUTOR_RESULT_DIR``, which the job inherits with the rest of this process's environment.
    """
    workdir = Path(workdir or Path.cwd() / "slurm-jobs").resolve()
    result_dir = workdir / f"results-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, RESULT_DIR_ENV: str(result_dir), "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1",
           "TQDM_DISABLE": "1"}  # a rank killed by a signal prints its Python stack into the job's output
    job = submit(script, workdir, env)
    if not quiet:
        shown = job.output.relative_to(Path.cwd()) if job.output.is_relative_to(Path.cwd()) else job.output
        print(f"[slurm] submitted job {job.job_id}; its output: {shown}")
    return Submission(job, result_dir)


def collect(submission: Submission, *, timeout: float = 300.0, quiet: bool = False) -> list[Any]:
    """Wait at most ``timeout`` seconds for a started job; each rank's result, or ``SlurmJobError`` (see
    ``verdict``). The results folder is removed once read."""
    try:
        return verdict(wait(submission.job, timeout, quiet=quiet, result_dir=submission.result_dir),
                       submission.result_dir)
    finally:
        shutil.rmtree(submission.result_dir, ignore_errors=True)


def run_script(script: str, *, timeout: float = 300.0, workdir: str | Path | None = None,
               quiet: bool = False) -> list[Any]:
    """Submit ``script``, wait at most ``timeout`` seconds and return each rank's result (``start``, then
    ``collect``)."""
    return collect(start(script, workdir=workdir, quiet=quiet), timeout=timeout, quiet=quiet)


def this_environment() -> str:
    """The recipe's setup line that puts this Python's environment (and its launchers) first on ``PATH``."""
    return f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"  # the Python that submitted the job'


def training_script(nodes: int = 2, **options: Any) -> str:
    """``training_sbatch(nodes, **options)`` for a job that runs this Python (``this_environment``)."""
    return training_sbatch(nodes, setup=this_environment(), **options)


def train(nodes: int = 2, *, timeout: float = 300.0, quiet: bool = False, workdir: str | Path | None = None,
          **options: Any) -> list[RunResult]:
    """Train under Slurm on ``nodes`` nodes with ``training_sbatch(nodes, **options)``; every rank's result.

    ``options`` are ``training_sbatch``'s (``gpus_per_node``, ``procs_per_node``, ``launcher``, ``time``, ...)
    and ``TrainConfig`` fields, all checked before anything is submitted. The job runs this Python.
    """
    return run_script(training_script(nodes, **options), timeout=timeout, workdir=workdir, quiet=quiet)
