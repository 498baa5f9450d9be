"""Batch scripts for Slurm (``sbatch``), generated for every launcher, with a comment explaining each line.

``training_sbatch(nodes=2, gpus_per_node=4, strategy="ddp", global_batch=256)`` checks the ``TrainConfig``
for the job's world size, takes the strategy's launcher from ``dtutor.strategies`` and returns the script;
``sbatch_script(entry, launcher, ...)`` does the same for any entry point. The launchers:

- ``torchrun``: ``srun`` starts one torchrun per node; they meet at a c10d rendezvous on the first node;
- ``deepspeed``: a hostfile from ``SLURM_JOB_NODELIST``; ``srun`` starts one ``deepspeed --no_ssh
  --node_rank=$SLURM_NODEID`` per node (no ssh or pdsh between the nodes);
- ``horovodrun``: one ``horovodrun -H`` on the first node, hosts from the job's nodes (it starts the other
  nodes' ranks over ssh, as on a plain set of machines; hosts that share an address are merged);
- ``tf_workers``: ``srun`` starts one worker per node, each with a ``TF_CONFIG`` built from the job's nodes.

Node names need not resolve: every address comes from ``scontrol show node NAME`` (``NodeAddr``). Each rank
pickles its result into ``DTUTOR_RESULT_DIR``, as under ``dtutor.launch``. Submit with ``sbatch FILE``, or
from Python with ``dtutor.launch.slurm.run_script``. Importing this module imports no framework.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dtutor.config import ConfigError, TrainConfig, check_world
from dtutor.launch.arguments import worker_arguments
from dtutor.launch.commands import (
    COMMAND_WIDTH,
    DRIVERS,
    TF_WORKER_ENV,
    check_count,
    horovodrun_command,
    shell_command,
    torchrun_command,
)
from dtutor.strategies import STRATEGIES

LAUNCHERS = ("torchrun", "deepspeed", "horovodrun", "tf_workers")
SETUP = "source .venv/bin/activate  # the course's environment (or: module load ..., conda activate ...)"

PROLOGUE = [
    ("stop at the first command that fails (the job then ends FAILED)", "set -eo pipefail"),
    ("the job's nodes, by name (the names need not resolve)",
     'nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))'),
    ("a node's address, as Slurm knows it (NodeAddr)",
     "node_addr() { scontrol show node \"$1\" | sed -n 's/.* NodeAddr=\\([^ ]*\\).*/\\1/p'; }"),
    ("the first node hosts the rendezvous; a port that differs from job to job",
     'export HEAD_ADDR=$(node_addr "${nodes[0]}") PORT=$((20000 + SLURM_JOB_ID % 20000))'),
    ("every rank pickles its result here (a folder all nodes see); dtutor.launch.slurm reads it",
     'export DTUTOR_RESULT_DIR=${DTUTOR_RESULT_DIR:-$SLURM_SUBMIT_DIR/dtutor-results/$SLURM_JOB_ID}'),
    ("", 'mkdir -p "$DTUTOR_RESULT_DIR"'),
]
SRUN = "srun --ntasks-per-node=1 --kill-on-bad-exit=1"
SRUN_WHY = "one task per node; if one fails, Slurm ends the others at once"


def _shell_word(word: str) -> str:
    """One word for the shell: ``$VARIABLES`` in double quotes (the shell expands them), the rest as needed."""
    if "$" in word and re.fullmatch(r"[\w$:{}./=@-]+", word):
        option, equals, value = word.rpartition("=") if word.startswith("-") else ("", "", word)
        return f'{option}{equals}"{value}"'
    return shlex.quote(word)


def srun_command(words: list[str], quote: Callable[[str], str] = _shell_word) -> str:
    """``srun`` (one task per node, all ended when one fails) with ``words``, wrapped by ``shell_command``."""
    return shell_command([*SRUN.split(), *map(quote, words)], quote=str)


def bash_c(words: list[str], prefix: str = "") -> list[str]:
    """``bash -c 'exec ...'`` for words the task must expand itself, as shell words; the inner command is wrapped
    too (a `` \\`` inside the single quotes continues the line for the inner bash). ``prefix``: before ``exec``."""
    first, *rest = map(_shell_word, words)
    inner = shell_command([f"{prefix} exec {first}".strip(), *rest], quote=str)
    return ["bash", "-c", shlex.quote(inner)]


def comment(why: str, width: int = COMMAND_WIDTH) -> list[str]:
    """``why`` as ``#`` comment lines of at most ``width`` characters."""
    return textwrap.wrap(why, width - 2, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def _sbatch_lines(launcher: str, nodes: int, procs: int, gpus: int, cpus: int, time: str, name: str) -> list[str]:
    """The ``#SBATCH`` header, each option under a comment saying why."""
    per_rank_tasks = launcher == "horovodrun"  # horovodrun reads its slots from the job's tasks
    options = [
        ("the job's name in squeue; also names the output file", f"--job-name={name}"),
        ("machines", f"--nodes={nodes}"),
        (f"{procs} rank(s) per node, one task each: horovodrun's slots" if per_rank_tasks else
         "one task per node: the launcher, which starts the node's ranks",
         f"--ntasks-per-node={procs if per_rank_tasks else 1}"),
    ]
    if gpus:
        options.append(("GPUs on each node: one per rank", f"--gpus-per-node={gpus}"))
    options += [
        ("CPU cores for each task (threads and data loading)", f"--cpus-per-task={cpus}"),
        ("wall-clock limit: Slurm ends the job (state TIMEOUT) when it passes", f"--time={time}"),
        ("stdout and stderr of every rank, in the folder sbatch was called from (%x name, %j job id)",
         "--output=%x-%j.out"),
    ]
    return ["#!/bin/bash"] + [line for why, option in options for line in (*comment(why), f"#SBATCH {option}")]


Lines = list[tuple[str, str]]  # (why, command) pairs: the comment line, then the command


def _torchrun(entry: str, kwargs: dict[str, Any], nodes: int, procs: int) -> Lines:
    command = torchrun_command(entry, procs, kwargs, nnodes=nodes, endpoint="$HEAD_ADDR:$PORT", job_id="$SLURM_JOB_ID")
    return [(f"{SRUN_WHY}; the torchruns meet at the first node and start {procs} rank(s) each",
             srun_command(command))]


def _deepspeed(entry: str, kwargs: dict[str, Any], nodes: int, procs: int) -> Lines:
    inner = ["deepspeed", "--hostfile=$HOSTFILE", "--no_ssh", "--node_rank=$SLURM_NODEID", "--master_addr=$HEAD_ADDR",
             "--master_port=$PORT", "--no_local_rank", "--module", *worker_arguments(entry, kwargs)[1:]]
    return [
        ("DeepSpeed's hostfile: one line per node, 'name slots=ranks'",
         "export HOSTFILE=$DTUTOR_RESULT_DIR/hostfile"),
        ("", f'for node in "${{nodes[@]}}"; do echo "$node slots={procs}"; done > "$HOSTFILE"'),
        (f"{SRUN_WHY}; each deepspeed starts its node's ranks itself (--no_ssh), its place given by "
         "$SLURM_NODEID, expanded in the task (hence bash -c); the ranks read LOCAL_RANK from the "
         "environment (--no_local_rank)", srun_command(bash_c(inner), quote=str)),
    ]


def _horovodrun(entry: str, kwargs: dict[str, Any], nodes: int, procs: int) -> Lines:
    command = horovodrun_command(entry, nodes * procs, kwargs, hosts="$HOSTS")
    return [
        ("horovodrun's -H list, address:slots per node; nodes that share an address are merged",
         f'HOSTS=$(for node in "${{nodes[@]}}"; do node_addr "$node"; done | sort | uniq -c \\\n'
         f"    | awk -v slots={procs} '{{printf \"%s%s:%d\", sep, $2, $1 * slots; sep = \",\"}}')"),
        ("one horovodrun, on this (the first) node; it starts the other hosts' ranks over ssh (one address: here)",
         shell_command(command, quote=_shell_word)),
    ]


def _tf_workers(entry: str, kwargs: dict[str, Any], nodes: int, procs: int) -> Lines:
    workers = ('WORKERS=$(i=0; for node in "${nodes[@]}"; do echo "\\"$(node_addr "$node"):$((PORT + i))\\""; \\\n'
               "    i=$((i + 1)); done | paste -sd,)")
    config = r'{\"cluster\": {\"worker\": [$WORKERS]}, \"task\": {\"type\": \"worker\", \"index\": $SLURM_PROCID}}'
    return [
        ("every worker's address:port, in node order, as JSON strings", workers),
        ("", "export WORKERS"),
        (f"{SRUN_WHY}; each worker's TF_CONFIG: every worker, and its own index ($SLURM_PROCID, "
         "expanded in the task, hence bash -c)",
         srun_command(bash_c(["python", *worker_arguments(entry, kwargs)], f'TF_CONFIG="{config}"'), quote=str)),
    ]


BODIES = {"torchrun": _torchrun, "deepspeed": _deepspeed, "horovodrun": _horovodrun, "tf_workers": _tf_workers}


def ranks_per_node(launcher: str, procs_per_node: int | None, gpus_per_node: int) -> int:
    """Ranks on each node: as asked, else one per GPU (one TensorFlow worker per node), else one."""
    return procs_per_node or (1 if launcher == "tf_workers" else gpus_per_node) or 1


def _check_placement(launcher: str, nodes: int, procs: int, gpus: int) -> None:
    """Refuse placements the launcher cannot give (``ValueError`` naming the argument)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher: must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    check_count("nodes", nodes)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise ValueError(f"gpus_per_node must be a whole number >= 0, got {gpus!r}")
    check_count("procs_per_node", procs)
    if gpus and procs != gpus and launcher != "tf_workers":
        raise ValueError(f"procs_per_node: one rank per GPU, so {gpus} with gpus_per_node={gpus}, got {procs}")
    if launcher == "tf_workers" and procs != 1:
        raise ValueError(f"procs_per_node: TensorFlow runs one worker per node (it uses the node's GPUs), "
                         f"got {procs}")


def sbatch_script(
    entry: str,
    launcher: str = "torchrun",
    *,
    nodes: int = 2,
    gpus_per_node: int = 0,
    procs_per_node: int | None = None,
    cpus_per_rank: int = 1,
    time: str = "00:30:00",
    job_name: str = "dtutor",
    setup: str = SETUP,
    **kwargs: Any,
) -> str:
    """The sbatch script that runs ``entry`` ("module:function") with ``launcher`` on ``nodes`` nodes.

    ``procs_per_node`` ranks per node (default: ``ranks_per_node``); ``cpus_per_rank`` cores
    each; ``time`` the wall-clock limit ("HH:MM:SS"); ``setup`` the line that makes the environment's
    ``python`` (and launchers) found; ``kwargs`` go to the entry point as ``key=value`` (Python literals).
    """
    procs = ranks_per_node(launcher, procs_per_node, gpus_per_node)
    _check_placement(launcher, nodes, procs, gpus_per_node)
    if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", time):
        raise ValueError(f"time must look like 'HH:MM:SS' (or 'D-HH:MM:SS'), got {time!r}")
    cpus = cpus_per_rank * (1 if launcher == "horovodrun" else procs)
    lines = _sbatch_lines(launcher, nodes, procs, gpus_per_node, cpus, time, job_name)
    environment = [("the Python environment with dtutor and the launchers", setup),
                   ("threads per rank", f"export OMP_NUM_THREADS={cpus_per_rank}")]
    if launcher in ("tf_workers", "horovodrun"):
        environment.append(("Keras 2 (Horovod's Keras needs it), quiet TensorFlow start-up",
                            "export " + " ".join(f"{k}={v}" for k, v in TF_WORKER_ENV.items())))
    if launcher == "deepspeed" and not gpus_per_node:
        environment.append(("DeepSpeed on CPUs", "export DS_ACCELERATOR=cpu"))
    for why, line in [*environment, *PROLOGUE, *BODIES[launcher](entry, kwargs, nodes, procs)]:
        lines += comment(why) + [line]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TrainingPlan:
    """A checked training job: the driver to run, its launcher, ranks per node and ``key=value`` arguments."""

    entry: str
    launcher: str
    procs_per_node: int
    arguments: dict[str, Any]
    name: str


def training_plan(nodes: int, gpus_per_node: int = 0, procs_per_node: int | None = None,
                  launcher: str | None = None, **fields: Any) -> TrainingPlan:
    """Check ``fields`` (``TrainConfig``) for ``nodes`` x ranks per node and pick the launcher and backend.

    The launcher is the strategy's own (``dtutor.strategies``) unless ``launcher`` names another that starts
    the same kind of processes (``deepspeed`` can start any torchrun strategy). The backend ``auto``
    becomes nccl with GPUs, gloo without. Errors name the field or argument at fault.
    """
    config = TrainConfig.from_kwargs(**fields)
    info = STRATEGIES[config.strategy]
    launcher = launcher or info.launcher
    if info.launcher == "inprocess":
        raise ValueError(f"strategy: {config.strategy!r} runs in one process ({info.summary}); a multi-node job "
                         "needs a strategy with a launcher, e.g. 'ddp'")
    procs = ranks_per_node(launcher, procs_per_node, gpus_per_node)
    _check_placement(launcher, nodes, procs, gpus_per_node)
    if launcher != info.launcher and {launcher, info.launcher} != {"torchrun", "deepspeed"}:
        raise ValueError(f"launcher: {config.strategy!r} is started by {info.launcher}, not {launcher}")
    check_world(config, nodes * procs)
    if info.framework == "torch":
        if config.backend == "nccl" and not gpus_per_node:
            raise ConfigError("backend: nccl needs GPUs; set gpus_per_node, or use backend='gloo'")
        if config.backend == "auto":
            config = config.replace(backend="nccl" if gpus_per_node else "gloo")
    name = f"dtutor-{config.strategy}".replace("_", "-")
    return TrainingPlan(DRIVERS[info.framework], launcher, procs, config.as_arguments(), name)


def training_sbatch(
    nodes: int = 2,
    *,
    gpus_per_node: int = 0,
    procs_per_node: int | None = None,
    launcher: str | None = None,
    cpus_per_rank: int = 1,
    time: str = "00:30:00",
    setup: str = SETUP,
    **fields: Any,
) -> str:
    """The sbatch script that trains with ``fields`` (``TrainConfig`` fields) on ``nodes`` nodes.

    Everything is checked here, before anything is submitted (see ``training_plan``).
    """
    plan = training_plan(nodes, gpus_per_node, procs_per_node, launcher, **fields)
    return sbatch_script(plan.entry, plan.launcher, nodes=nodes, gpus_per_node=gpus_per_node,
                         procs_per_node=plan.procs_per_node, cpus_per_rank=cpus_per_rank, time=time,
                         job_name=plan.name, setup=setup, **plan.arguments)


def launcher_lines(script: str) -> str:
    """The part of a generated script that differs from launcher to launcher (after the shared prologue)."""
    return script.partition(PROLOGUE[-1][1] + "\n")[2]


def sbatch_options(script: str) -> dict[str, str]:
    """The ``#SBATCH --name=value`` options of a script, as {name: value}."""
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script, re.M))


def check_recipe(script: str, *, nodes: int, gpus_per_node: int, backend: str) -> list[str]:
    """What is wrong with ``script`` for ``nodes`` x ``gpus_per_node`` GPUs and ``backend`` (empty: nothing)."""
    options, problems = sbatch_options(script), []
    if options.get("nodes") != str(nodes):
        problems.append(f"#SBATCH --nodes should be {nodes}, is {options.get('nodes')}")
    if options.get("gpus-per-node") != (str(gpus_per_node) if gpus_per_node else None):
        problems.append(f"#SBATCH --gpus-per-node should be {gpus_per_node}, is {options.get('gpus-per-node')}")
    if f"backend={backend}" not in script:
        problems.append(f"the ranks should get backend={backend}")
    if "--nproc-per-node" in script and f"--nproc-per-node={gpus_per_node or 1}" not in script:
        problems.append(f"torchrun should start {gpus_per_node or 1} rank(s) per node (one per GPU)")
    return problems
