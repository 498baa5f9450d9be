"""Model parallelism in PyTorch: the Alibaba Cloud article's two-device split, pipelines (by hand and with
``torch.distributed.pipelining``) and tensor parallelism, each proven equal to the unsplit model and measured.

Modules, in the order of notebook 05:

- ``stages``: cutting a ``Sequential`` into stages, sending activations and gradients;
- ``split``: the article's CNN cut into part1 (Conv 32 + MaxPool) and part2 (the rest), on two GPUs or two
  processes; proof that the split equals the unsplit model;
- ``timeline``: per-stage timestamps, the stage-by-time chart, idle fractions, GPipe's theory;
- ``gpipe``: GPipe and 1F1B written by hand with send/recv, and the strategies that train with them,
  ``pipeline_by_hand`` and ``pipeline_by_hand_1f1b`` (each step's timeline and activations held kept);
- ``pipeline``: the strategies ``pipeline_gpipe`` and ``pipeline_1f1b`` (``PipelineStage``,
  ``ScheduleGPipe``, ``Schedule1F1B``) for the driver, and their gradient proof;
- ``tensor_parallel``: the strategy ``tensor_parallel`` (``parallelize_module``, column- then row-wise) and
  its proof on one MLP block;
- ``fixed_time``: the same schedules on stages whose work takes a fixed, known time (calibrated sleeps):
  the bubble against theory free of compute noise, p = 4 included on 2 cores;
- ``bubble``: the pipeline strategies trained and timed (``record``): the bubble against theory on balanced
  stages, 1F1B against GPipe, by hand beside the library;
- ``memory_and_speed``: parameter memory per rank under each split, and samples/s through the driver.

Each module's demos for the notebook sit beside the code they demonstrate, as entry points for
``dtutor.launch.run(entry, 2, ...)`` returning plain Python values (e.g. ``split:split_demo``,
``pipeline:library_gradients``, ``tensor_parallel:tensor_parallel_demo``).
"""
