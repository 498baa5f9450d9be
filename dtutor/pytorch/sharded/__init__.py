"""Sharded data parallelism: DeepSpeed's ZeRO stages and PyTorch's FSDP2, each a strategy of the course (notebook 06).

Every rank still trains on its own share of the batch, as in DDP; what changes is how much of the model's
state each rank keeps: ZeRO-1 partitions the optimizer state, ZeRO-2 the gradients too, ZeRO-3 and FSDP the
parameters too (gathered layer by layer when needed).

- ``deepspeed_zero`` and ``fsdp``: the strategies; ``deepspeed_config``: DeepSpeed's JSON, checked early;
- ``model_state``: the model state a rank holds, measured with ``storage.Ledger`` (the course's one model-state
  counter: which bytes a view covers, each storage once, and which are resident); ``formulas``: the ZeRO paper's
  formulas and the estimator; ``widget``: the estimator in a notebook;
- ``deepspeed_zero_lessons``: the notebook's small DeepSpeed demos, each an entry point for ``dtutor.launch.run``.
- ``zero1_by_hand``: ZeRO-1 written out (``ShardedOptimizer``), proven equal to DDP and DeepSpeed's stage 1;
  ``partitions``: who holds what at ZeRO-1/2/3 and FSDP, drawn from real shards and measured rows.

``formulas``, ``widget`` and ``deepspeed_config`` import no framework (``python -m dtutor.bench zero`` measures
``model_state`` against ``formulas``).
"""
