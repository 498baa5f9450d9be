"""``python -m dtutor.launch ENTRY key=value ...``: the worker runner (see ``dtutor.launch.worker``)."""

import sys

from dtutor.launch.worker import main

main(sys.argv[1:])
