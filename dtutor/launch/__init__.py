"""Run an importable ``dtutor`` entry point on N processes, from a notebook or a script.

``run("dtutor.pytorch.driver:train", nprocs=2, strategy="ddp")`` starts PyTorch's elastic launcher (``torchrun``, i.e.
``python -m torch.distributed.run``) as a child process, exactly as you would in a terminal::

    torchrun --standalone --nproc-per-node 2 -m dtutor.launch dtutor.pytorch.driver:train strategy=ddp

Each worker imports the entry point, calls it with the keyword arguments, and hands its return value
back to the notebook (pickled into a temporary folder); the notebook sees every rank's output as it
happens, prefixed ``[rank N]``. Why a child process rather than calling the launcher's API in the
kernel: a notebook kernel cannot be given a hard timeout, does not show output written by other
processes, and must survive a worker that crashes; a child process can be timed out and killed with
everything it started. ``run_horovod`` (horovodrun), ``run_deepspeed`` (DeepSpeed's launcher),
``run_tf_workers`` (TensorFlow workers, one ``TF_CONFIG`` each) and ``run_single`` (one fresh process) work
the same way; ``train`` picks the right one for a training strategy. ``run_script`` starts a plain script
(a file of your own, ``examples/``) under torchrun or ``deepspeed`` with the same supervision;
``run_horovod_script`` under horovodrun, ``run_tf_script`` as TensorFlow workers (one ``TF_CONFIG`` each).

Guarantees: bad input is refused before any process starts; every launch has a timeout; when a rank
fails or the timeout expires, every process of the launch is ended and ``LaunchError`` names the
failing rank with its traceback, or after a timeout the call each rank was waiting in (``hang_finder``).

Modules: ``arguments`` (entry points, ``key=value`` words), ``commands`` (launcher commands),
``supervisor`` (processes, output, timeout, results), ``hang_finder`` (a timed-out launch: where each rank waits),
``runners`` (the launches), ``ports`` (free ports for the launchers that name one), ``training`` (``train``,
``train_many``), ``worker`` (what ``python -m dtutor.launch`` runs); for clusters, imported by name:
``recipes`` (Slurm batch scripts for every launcher), ``ssh`` (the same jobs on machines reached by ssh),
``slurm`` (submit, wait, collect) and ``slurm_local`` (a throwaway Slurm cluster on this machine). Importing this
package imports neither torch nor TensorFlow.
"""

from dtutor.launch.arguments import worker_arguments
from dtutor.launch.commands import (
    deepspeed_command,
    horovodrun_command,
    shell_command,
    show_commands,
    tf_config,
    torchrun_command,
)
from dtutor.launch.runners import (
    run,
    run_deepspeed,
    run_horovod,
    run_horovod_script,
    run_script,
    run_single,
    run_tf_script,
    run_tf_workers,
    show_tf_worker_commands,
)
from dtutor.launch.supervisor import LaunchError, supervise
from dtutor.launch.training import train, train_many
from dtutor.launch.worker import worker_rank

__all__ = [
    "LaunchError",
    "deepspeed_command",
    "horovodrun_command",
    "run",
    "run_deepspeed",
    "run_horovod",
    "run_horovod_script",
    "run_script",
    "run_single",
    "run_tf_script",
    "run_tf_workers",
    "shell_command",
    "show_commands",
    "show_tf_worker_commands",
    "supervise",
    "tf_config",
    "torchrun_command",
    "train",
    "train_many",
    "worker_arguments",
    "worker_rank",
]
