"""Sharded data parallelism: DeepSpeed's ZeRO stages and PyTorch's FSDP2, each a strategy of the course.

Every rank still trains on its own share of the batch, as in DDP; what changes is how much of the model's
state each rank keeps: ZeRO-1 partitions the optimizer state, ZeRO-2 the gradients too, ZeRO-3 and FSDP the
parameters too (gathered layer by layer when needed). ``deepspeed_zero`` and ``fsdp`` are the strategies,
``memory`` measures the model state a rank holds (``storage``: which bytes a view covers and which are
resident), ``dtutor.zero`` gives the ZeRO paper's formulas.
"""
