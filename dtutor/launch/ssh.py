"""The same training jobs on machines you reach by ssh, without a scheduler: the commands, per launcher.

``training_commands(("host1", "host2"), gpus_per_node=4, strategy="ddp")`` gives what you would type on the
first machine. Without Slurm, nobody tells the processes where the others are: you name the hosts and the
first machine's address yourself, start a launcher on every machine (torchrun, TensorFlow workers: one ssh
each) or let the launcher ssh into the others (``deepspeed`` through pdsh, ``horovodrun``); every machine
needs the same folder and environment, and password-less ssh between them. Checked like the Slurm recipe
(``dtutor.launch.recipes.training_plan``). Importing this module imports no framework.
"""

from __future__ import annotations

import shlex
from typing import Any

from dtutor.launch.arguments import worker_arguments
from dtutor.launch.commands import COMMAND_WIDTH, horovodrun_command, shell_command, tf_worker_words, torchrun_command
from dtutor.launch.recipes import training_plan

PORT = 29500  # the first machine's rendezvous port (any port free on it)
SETUP = "cd $PWD && source .venv/bin/activate"  # on every machine: the same folder and environment


def _remote(host: str, setup: str, words: list[str]) -> str:
    """``ssh HOST "setup && command" &``, wrapped (``$PWD`` in ``setup`` is expanded here, on the first machine).

    ``words`` are shell words already quoted; inside the double quotes a `` \\`` at a line's end joins the lines.
    """
    inner = shell_command([setup, "&&", *words], COMMAND_WIDTH - 4, quote=str)  # setup whole: never cut inside it
    return shell_command(["ssh", host, '"' + inner.replace('"', '\\"') + '"', "&"], quote=str)


def training_commands(hosts: tuple[str, ...] = ("host1", "host2"), *, gpus_per_node: int = 0,
                      procs_per_node: int | None = None, launcher: str | None = None, port: int = PORT,
                      setup: str = SETUP, **fields: Any) -> str:
    """The commands that train with ``fields`` on the machines ``hosts``, started from the first of them.

    ``port`` is a free port on the first machine; ``setup`` what each ssh session runs first. Long commands
    are wrapped with `` \\`` continuations (``dtutor.launch.shell_command``).
    """
    plan = training_plan(len(hosts), gpus_per_node, procs_per_node, launcher, **fields)
    procs, head, arguments = plan.procs_per_node, hosts[0], plan.arguments
    if plan.launcher == "torchrun":
        command = torchrun_command(plan.entry, procs, arguments, nnodes=len(hosts), endpoint=f"{head}:{port}",
                                   job_id="job1")
        lines = [f"# one torchrun per machine, started over ssh; they meet at {head}:{port}",
                 *(_remote(host, setup, [shlex.quote(word) for word in command]) for host in hosts), "wait"]
    elif plan.launcher == "deepspeed":
        slots = "\\n".join(f"{host} slots={procs}" for host in hosts)
        command = ["deepspeed", "--hostfile=hostfile", f"--master_addr={head}", f"--master_port={port}",
                   "--no_local_rank", "--module", *worker_arguments(plan.entry, arguments)[1:]]
        lines = ["# the hostfile: every machine and its slots (GPUs)", f"printf '{slots}\\n' > hostfile",
                 "# deepspeed starts every machine's ranks itself, over ssh (pdsh)", shell_command(command)]
    elif plan.launcher == "horovodrun":
        hosts_slots = ",".join(f"{host}:{procs}" for host in hosts)
        command = horovodrun_command(plan.entry, len(hosts) * procs, arguments, hosts=hosts_slots)
        lines = ["# horovodrun starts every machine's ranks itself, over ssh", shell_command(command)]
    else:
        addresses = [f"{host}:{port}" for host in hosts]
        lines = ["# one TensorFlow worker per machine, started over ssh; TF_CONFIG: every worker, and its index",
                 *(_remote(host, setup, tf_worker_words(plan.entry, arguments, addresses, i))
                   for i, host in enumerate(hosts)), "wait"]
    return "\n".join(lines) + "\n"
