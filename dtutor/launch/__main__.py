"""``python -m dtutor.launch ENTRY key=value ...``: the worker runner (see ``dtutor.launch.worker``).

Once the rank has reported its result, a torch worker leaves without the interpreter's teardown: there,
torch 2.13's gloo threads can abort the process ("terminate called without an active exception", SIGABRT)
after the result is written, and the launcher then reports the whole launch as failed, now and then. Horovod
workers exit normally (Horovod shuts down at exit, in step with the other ranks).
"""

import os
import sys

from dtutor.launch.worker import main

main(sys.argv[1:])
if "torch.distributed" in sys.modules and "HOROVOD_RANK" not in os.environ:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
