"""dtutor: the tested implementations behind the distributed-training course notebooks."""

__version__ = "0.1.0"
