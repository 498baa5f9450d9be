"""A plain torchrun script whose rank 1 fails, with its entry function decorated by torch's ``@record``.

torchrun gives every worker an error file (``TORCHELASTIC_ERROR_FILE``, inside its ``--log-dir``); ``@record``
writes the exception there as JSON (its message, the traceback as ``py_callstack``, the time), and torchrun's
failure summary names the failed rank, that file and its message (notebook 09, ``dtutor.failures.tools.error_file``):

    torchrun --standalone --nproc-per-node=2 --log-dir=logs examples/record_error.py
    cat logs/*/attempt_0/1/error.json
"""

import os

from torch.distributed.elastic.multiprocessing.errors import record

SHARDS = {0: [0.5, 1.5, 2.5]}  # a file per rank; rank 1's is missing


def load_shard(rank: int) -> list[float]:
    """This rank's shard of the data (rank 1 has none: a ``KeyError``)."""
    return SHARDS[rank]


@record
def main() -> None:
    rank = int(os.environ["RANK"])
    shard = load_shard(rank)
    print(f"rank {rank}: {len(shard)} samples")


if __name__ == "__main__":
    main()
