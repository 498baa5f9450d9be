"""Out of memory on one of 2 gloo ranks (``RLIMIT_AS``): the launch names the rank, the allocator's error, the line."""

from conftest import marked_processes

from dtutor.failures import oom


def test_the_rank_that_ran_out_of_memory_is_named_with_the_allocators_error_and_nothing_is_left(process_marker):
    failure = oom.out_of_memory(2, heavy_rank=1, limit_mb=512, heavy_mb=2048, timeout=60, show=False)
    assert failure.rank == 1 and failure.message == "rank 1 of dtutor.failures.oom:need_memory failed:"
    assert "DefaultCPUAllocator" in failure.error and str(2048 * 2**20) in failure.error
    assert failure.where.startswith("oom.py:") and failure.where.endswith("in need_memory")
    assert marked_processes(process_marker) == []


def test_last_frame_names_the_innermost_file_line_and_function():
    text = ('Traceback (most recent call last):\n  File "/a/b/worker.py", line 3, in main\n    x()\n'
            '  File "/a/dtutor/failures/oom.py", line 57, in need_memory\n    y()\nRuntimeError: no\n')
    assert oom.last_frame(text) == "oom.py:57 in need_memory"
    assert oom.last_frame("RuntimeError: no") == ""
