"""``python -m dtutor.launch ENTRY key=value ...``: the worker runner (see ``dtutor.launch.worker``).

Once the rank has reported its result, a torch worker leaves without the interpreter's teardown: there,
torch 2.13's gloo threads can abort the process ("terminate called without an active exception", SIGABRT)
after the result is written, and the launcher then reports the whole launch as failed, now and then
(``process_group.leave_process_group`` makes it rarer, not impossible). Python's streams are flushed first;
the result file is already written. Workers that imported Horovod exit normally (Horovod shuts down at exit,
in step with the other ranks).
"""

import os
import sys

from dtutor.launch.worker import main

main(sys.argv[1:])
if "torch" in sys.modules and not any(name.split(".")[0] == "horovod" for name in sys.modules):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
