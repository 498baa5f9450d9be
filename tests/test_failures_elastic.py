"""Elastic restart under torchrun --max-restarts=1: rank 1 is killed (SIGKILL) at the first step of epoch 1; with a
checkpoint the restarted group resumes after epoch 0 and ends bitwise equal to an unbroken run, without one it
trains from epoch 0 again. Each case is one launch; the unbroken run is test_pytorch_ddp's (shared_train)."""

from pathlib import Path

import pytest
from conftest import marked_processes

from dtutor.failures import elastic
from dtutor.result import identical

FIELDS = {"strategy": "ddp", "global_batch": 64, "samples": 128, "epochs": 3, "test_samples": 0}  # 2 steps/epoch
TIMEOUT = 120  # both attempts: two starts of 2 ranks and 3 epochs of 2 steps take ~15 s here


@pytest.fixture(scope="module")
def unbroken(shared_train):
    return shared_train(2, **FIELDS)


def test_a_restart_resumes_from_the_checkpoint_bitwise_equal_to_an_unbroken_run(tmp_path, process_marker, unbroken,
                                                                                  capsys):
    checkpoint = str(tmp_path / "ddp.pt")
    report = elastic.train_through_crash(2, crash_at_epoch=1, checkpoint=checkpoint, timeout=TIMEOUT, **FIELDS)
    shown = capsys.readouterr().out
    assert marked_processes(process_marker) == []
    assert (report.restarts, report.resumed_from_epoch, report.epochs) == (1, 1, [1, 2])
    assert [r.rank for r in report.results] == [0, 1] and Path(checkpoint).exists()
    assert identical(report.results[0], unbroken[0]) and identical(report.results[1], unbroken[0])
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --nproc-per-node=2 --max-restarts=1" in shown
    assert "[rank 1] killed with SIGKILL at the start of its optimizer step 3" in shown
    assert "[torchrun] failed (exitcode: -9) local_rank: 1" in shown  # torchrun's own line: the kill it saw
    assert "[rank 0] torchrun restarted every rank: restart 1 of at most 1" in shown
    assert "[rank 0] resumed from ddp.pt after epoch 0" in shown  # the restarted rank 0 says so
    assert report.summary() == ("rank 1 was killed in epoch 1; torchrun restarted all 2 ranks 1 time(s); they trained "
                                "epochs 1-2: resumed from the checkpoint of epoch 0")


def test_without_a_checkpoint_the_restart_starts_over(process_marker, unbroken):
    report = elastic.train_through_crash(2, crash_at_epoch=1, timeout=TIMEOUT, quiet=True, **FIELDS)
    assert marked_processes(process_marker) == []
    assert (report.restarts, report.resumed_from_epoch, report.epochs) == (1, 0, [0, 1, 2])
    assert identical(report.results[0], unbroken[0])  # all of it trained again, from the same seed
    assert report.summary().endswith("; they trained epochs 0-2: started over")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crash_at_epoch": 3}, "crash_at_epoch: the run trains epochs 0-2, got 3"),
        ({"crash_at_epoch": 1, "stop_after_epochs": 1}, "crash_at_epoch: the run trains epochs 0-0, got 1"),
        ({"crash_rank": 2}, "crash_rank: the ranks are 0-1, got 2"),
        ({"crash_rank": -1}, "crash_rank must be a whole number >= 0"),
        ({"max_restarts": -1}, "max_restarts must be a whole number >= 0, got -1"),
        ({"strategy": "horovod"}, "strategy: 'horovod' runs under horovodrun"),
        ({"epochs": 0}, "epochs: must be a whole number >= 1"),
    ],
)
def test_bad_input_is_refused_before_any_process_starts(no_process_may_start, options, message):
    with pytest.raises(ValueError, match=message):
        elastic.train_through_crash(2, **{**FIELDS, **options})


def test_a_checkpoint_that_exists_is_refused(no_process_may_start, tmp_path):
    (tmp_path / "old.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="checkpoint: .*old.pt exists already"):
        elastic.train_through_crash(2, checkpoint=str(tmp_path / "old.pt"), **FIELDS)
