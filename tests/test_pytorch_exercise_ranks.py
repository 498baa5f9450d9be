"""The rank side of the code-writing exercises: how one rank reports an answer that raised or waited.

One process, a gloo group of one rank (no launch): the learner's answer raises what a rank sees in each case.
"""

import datetime

import pytest
import torch.distributed as dist

from dtutor.pytorch import exercise_ranks


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=5))
    yield
    dist.destroy_process_group()


def _answer_raising(tmp_path, error: str):
    path = tmp_path / "answer.py"
    path.write_text(f"def ANSWER(tensor):\n    raise {error}\n")
    return str(path)


@pytest.mark.parametrize("error, outcome", [
    ('RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 3000ms for recv operation")',
     "waiting"),
    # a peer that timed out first closes its connection: this rank was waiting too (the 1F1B hang in CI)
    ('RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:40112")', "waiting"),
    ('RuntimeError("The size of tensor a (4) must match the size of tensor b (5)")', "raised"),
    ("IndexError('list index out of range')", "raised"),
])
def test_a_rank_that_gave_up_waiting_reports_waiting_and_any_other_error_raised(one_rank_group, tmp_path, error,
                                                                               outcome):
    report = exercise_ranks.run_answer("ring_all_reduce", _answer_raising(tmp_path, error), 1e-5, timeout=5.0)
    assert report["outcome"] == outcome, report
    assert report["where"].startswith("line 2 of ANSWER: `raise "), report
