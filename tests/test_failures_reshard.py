"""A checkpoint saved by 2 gloo ranks, loaded on 1 and on 4 and trained on: FSDP's (DCP) and DeepSpeed ZeRO-3's
(converted to DeepSpeed's universal checkpoint), each equal to an unbroken run on the new world size within
``reshard.TOLERANCE`` (2 and N ranks sum the gradient means in other groupings); the load itself is exact. One
``reshard()`` call per strategy (three launches) serves every test."""

import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import MARKER, marked_processes

from dtutor.failures import reshard
from dtutor.result import identical, max_difference

NEW_WORLD_SIZES = (1, 4)
STRATEGIES = ("fsdp", "deepspeed")
TEMPORARY = Path(tempfile.gettempdir())


def _reshard_marked(strategy: str):
    """``reshard()`` with every launched process marked; what it left: marked processes and its temporary folders."""
    folders = set(TEMPORARY.glob("dtutor-reshard-*"))
    with pytest.MonkeyPatch.context() as patch:
        marker = uuid.uuid4().hex
        patch.setenv(MARKER, marker)
        result = reshard.reshard(NEW_WORLD_SIZES, strategy=strategy, show=False)
    return result, marked_processes(marker) + sorted(set(TEMPORARY.glob("dtutor-reshard-*")) - folders)


@pytest.fixture(scope="module")
def fsdp_resharded():
    return _reshard_marked("fsdp")


@pytest.fixture(scope="module")
def deepspeed_resharded():
    return _reshard_marked("deepspeed")


def test_the_fsdp_checkpoint_holds_each_parameter_in_one_chunk_per_saving_rank(fsdp_resharded):
    result, _ = fsdp_resharded
    assert result.saved_ranks == 2 and ".metadata" in result.files
    assert sum(name.endswith(".distcp") for name in result.files) == 2
    parameters = result.saved.parameters
    assert set(result.chunks) == set(parameters)
    for name, rows in result.chunks.items():
        assert len(rows) == 2 and rows[0][0] == 0 and rows[0][1] == rows[1][0] and rows[1][1] == len(parameters[name])


def test_the_deepspeed_checkpoint_holds_a_model_and_an_optimizer_file_per_saving_rank(deepspeed_resharded):
    result, _ = deepspeed_resharded
    assert result.saved_ranks == 2
    assert result.files == [f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt" for rank in (0, 1)
                            for kind in ("model", "optim")]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ranks", NEW_WORLD_SIZES)
def test_a_resharded_load_reads_the_saved_state_back_exactly(request, strategy, ranks):
    result, _ = request.getfixturevalue(f"{strategy}_resharded")
    assert identical(result.loads[ranks].loaded, result.saved)
    assert result.loads[ranks].loaded.world_size == ranks and not result.loads[ranks].loaded.epochs


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ranks", NEW_WORLD_SIZES)
def test_training_on_after_the_load_equals_an_unbroken_run_on_the_new_world_size(request, strategy, ranks):
    result, _ = request.getfixturevalue(f"{strategy}_resharded")
    each = result.loads[ranks]
    assert [e.epoch for e in each.continued.epochs] == [1] and [e.epoch for e in each.unbroken.epochs] == [0, 1]
    assert max_difference(each.continued, each.unbroken) < reshard.TOLERANCE
    # the tolerance is far below what the epoch after the load changed: a load that lost the weights or the optimizer
    # state (momentum buffers, Adam's moments) would not pass
    assert max_difference(each.continued, result.saved) > 1000 * reshard.TOLERANCE


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nothing_is_left_behind(request, strategy):
    _, alive = request.getfixturevalue(f"{strategy}_resharded")
    assert alive == []
