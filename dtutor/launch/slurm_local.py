"""Where a Slurm job can run from here: a cluster that answers, or a throwaway cluster on this machine.

``cluster()`` is a context manager: when a Slurm cluster answers (``sinfo``), jobs go there; otherwise, when
Slurm is installed and this process is root, it starts ``scripts/slurm_cluster.sh``: a cluster of one-CPU
nodes on this machine, made from nothing in a temporary folder (munge key, ``slurm.conf``, daemons), and
removed, every job and daemon with it, when the block ends. The cluster also ends by itself if this
process dies (it watches this process's pid). ``unavailable()`` says why neither is possible.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm_cluster.sh"
MARKER = "DTUTOR_SLURM_CLUSTER"  # every daemon and job step of a throwaway cluster carries its folder here
READY = re.compile(r"nodes up \(SLURM_CONF=(\S+)\)")
DAEMONS = ("slurmctld", "slurmd", "slurmstepd", "munged", "srun")


@dataclass(frozen=True)
class LocalCluster:
    """A running throwaway cluster: its ``slurm.conf``, node count and the script's process."""

    conf: Path
    nodes: int
    pid: int

    @property
    def folder(self) -> Path:
        """The temporary folder holding its key, config, state and logs."""
        return self.conf.parent

    def ports(self) -> list[int]:
        """The TCP ports its daemons listen on (slurmctld's, then one per slurmd)."""
        pattern = r"^(?:SlurmctldPort=|NodeName=.* Port=)(\d+)"
        return [int(port) for port in re.findall(pattern, self.conf.read_text(), re.M)]


def cluster_answers() -> bool:
    """Whether ``sinfo`` reaches a Slurm controller (the one ``SLURM_CONF`` or ``/etc/slurm`` names)."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def local_unavailable() -> str | None:
    """Why a throwaway cluster cannot start here (None: it can)."""
    missing = [name for name in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(name) is None]
    if missing:
        return (f"Slurm is not installed here ({', '.join(missing)} not found); as root on Debian/Ubuntu: "
                "scripts/install_slurm.sh")
    if os.geteuid() != 0:
        return "a throwaway Slurm cluster needs root (slurmd starts jobs as their users), and this is not root"
    if not CLUSTER_SCRIPT.is_file():
        return f"{CLUSTER_SCRIPT} is missing (it ships with the course's repository)"
    return None


def unavailable() -> str | None:
    """Why no Slurm job can run from here (None: a cluster answers, or a throwaway one can start)."""
    if cluster_answers():
        return None
    return local_unavailable()


def _wait_ready(process: subprocess.Popen, log: Path, timeout: float) -> Path:
    """The cluster's ``slurm.conf``, once the script says its nodes are up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = READY.search(log.read_text())
        if found:
            return Path(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"the Slurm cluster did not start:\n{log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"the Slurm cluster did not start within {timeout:g} s:\n{log.read_text()}")


def _stop(process: subprocess.Popen, grace: float = 60.0) -> None:
    """Ask the script to stop the cluster (its trap cancels the jobs, then stops the daemons); wait for it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def local_cluster(nodes: int = 2, *, timeout: float = 60.0) -> Iterator[LocalCluster]:
    """Start a throwaway cluster of ``nodes`` one-CPU nodes on this machine; stop it when the block ends.

    ``SLURM_CONF`` points at it inside the block (Slurm's commands, and jobs submitted from here, use it).
    """
    reason = local_unavailable()
    if reason:
        raise RuntimeError(reason)
    with tempfile.NamedTemporaryFile(prefix="dtutor-slurm-", suffix=".log", delete=False) as log:
        watch = ["tail", f"--pid={os.getpid()}", "-f", "/dev/null"]  # ends the cluster if this process dies
        process = subprocess.Popen(["bash", str(CLUSTER_SCRIPT), "run", "--nodes", str(nodes), "--", *watch],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True)
    before = os.environ.get("SLURM_CONF")
    try:
        conf = _wait_ready(process, Path(log.name), timeout)
        os.environ["SLURM_CONF"] = str(conf)
        yield LocalCluster(conf, nodes, process.pid)
    finally:
        _stop(process)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        Path(log.name).unlink(missing_ok=True)


@contextlib.contextmanager
def cluster(nodes: int = 2) -> Iterator[LocalCluster | None]:
    """A cluster that answers (yields None), or else a throwaway local one of ``nodes`` nodes for the block."""
    if cluster_answers():
        yield None
        return
    with local_cluster(nodes) as local:
        yield local


def leftovers(folder: Path, marker: tuple[str, str] | None = None) -> list[str]:
    """Live processes of a stopped cluster: those carrying its folder (daemons, job steps) or ``marker``
    (name, value) in their environment, and daemons naming it; each as "pid name"."""
    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE or process.pid == os.getpid():
                continue
            command = " ".join(process.info["cmdline"] or [])
            environ = process.environ()
            ours = environ.get(MARKER) == str(folder) or (marker and environ.get(marker[0]) == marker[1])
            if ours or (str(folder) in command and process.info["name"] in DAEMONS):
                found.append(f"{process.pid} {process.info['name']}")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found
