"""``python -m dtutor.bench ...``: see ``dtutor.bench``."""

from dtutor.bench import main

main()
