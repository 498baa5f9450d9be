"""``python -m dtutor.devices``: the inventory and the course's plan for this machine (see ``cli``)."""

import sys

from dtutor.devices.cli import main

sys.exit(main())
