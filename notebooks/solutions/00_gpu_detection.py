"""Worked solution of notebook 00's exercise: notebook 02's plan on a 4-GPU node whose torch lacks NCCL.

Run it (CI does, through the notebook's own check cell): ``python notebooks/solutions/00_gpu_detection.py``.
"""

import dataclasses

from dtutor import devices, exercises

# the made-up node of the notebook: four A100s, NCCL and a CUDA build of everything
gpus = [devices.Accelerator(i, "NVIDIA A100-SXM4-40GB", f"GPU-{i}", 40960, 40960) for i in range(4)]
node = devices.Inventory(
    sources=[devices.SourceReport("nvml", True, gpus), devices.SourceReport("tensorflow", True, gpus)],
    gpus=gpus,
    cpu_logical=64,
    cpu_affinity=64,
    backends={
        "gloo": devices.Backend("gloo", True),
        "nccl": devices.Backend("nccl", True),
        "mpi": devices.Backend("mpi", False),
        "horovod": devices.Backend("horovod", True, "frameworks: torch, tensorflow; built with: gloo, nccl"),
        "deepspeed": devices.Backend("deepspeed", True, "0.19.8: accelerator cuda, communication nccl"),
    },
)


def answers() -> dict:
    """``my_plan``: ask ``recommend_notebook_runs`` about the same node with an unusable NCCL."""
    without_nccl = dataclasses.replace(node, backends={**node.backends, "nccl": devices.Backend("nccl", False)})
    plan = next(r for r in devices.recommend_notebook_runs(without_nccl) if r.notebook == "02")
    return {"my_plan": (plan.mode, plan.workers, plan.backend)}  # ("simulated", 4, "gloo")


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
