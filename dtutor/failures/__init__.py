"""When distributed training breaks (notebook 09): each failure made to happen for real, on gloo, then diagnosed.

One module per idea, each imported by name (importing this package imports no framework):

- ``bugs``: the bugs that hang or crash a job (a skipped collective, mismatched shapes, an unmatched send,
  collectives in a different order, an unused DDP parameter, uneven inputs), as entry points for ``launch.run``;
- ``tools``: the diagnostic tools run on them (a rendezvous timeout, ``TORCH_DISTRIBUTED_DEBUG=DETAIL``,
  ``monitored_barrier``, ``py-spy dump``, torchrun's error files, the flight recorder), the ranks' side in
  ``tool_ranks``;
- ``exercises``: notebook 09's checks (a hanging script fixed; the ranks a monitored barrier names);
- ``elastic``: ``torchrun --max-restarts`` resuming from the last checkpoint after a rank is killed;
- ``reshard``: a checkpoint saved on 2 ranks, loaded on 1 and on 4;
- ``oom``: one rank out of memory, and how the course names it.

A timed-out launch names the rank that waits and the collective it waits in: ``dtutor.launch.hang_finder``.
"""
