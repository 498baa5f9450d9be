"""Benchmarks that print tables (targets live here, never in timed unit tests).

    python -m dtutor.bench ddp             # DDP scaling 1 -> 2 ranks (1 thread each) and the driver's overhead
    python -m dtutor.bench horovod         # Horovod (PyTorch) beside DDP, 1 and 2 ranks, same model and data
    python -m dtutor.bench pipeline        # the pipeline bubble (measured, theory, gap); memory and speed per split
    python -m dtutor.bench ddp --json out.json
"""

from dtutor.bench.scaling import (
    DRIVER_OVERHEAD_TARGET,
    HEADERS,
    SCALING_TARGET,
    bench_ddp,
    bench_horovod_vs_ddp,
    bench_pipeline,
    driver_overhead,
    format_ddp,
    format_pipeline,
    format_table,
    hand_written_fit,
    plot_scaling,
    scaling,
    throughput,
)

__all__ = ["DRIVER_OVERHEAD_TARGET", "HEADERS", "SCALING_TARGET", "bench_ddp", "bench_horovod_vs_ddp",
           "bench_pipeline", "driver_overhead", "format_ddp", "format_pipeline", "format_table",
           "hand_written_fit", "plot_scaling", "scaling", "throughput"]
