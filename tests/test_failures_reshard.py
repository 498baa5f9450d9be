"""An FSDP checkpoint saved by 2 gloo ranks, loaded on 1 and on 4 (DCP) and trained on: equal to an unbroken run on
the new world size within ``reshard.TOLERANCE`` (2 and N ranks sum the gradient means in other groupings); the load
itself is exact. One ``reshard()`` call (three launches) serves every test."""

import tempfile
import uuid
from pathlib import Path

import pytest
from conftest import MARKER, marked_processes

from dtutor.failures import reshard
from dtutor.result import identical, max_difference

NEW_WORLD_SIZES = (1, 4)
TEMPORARY = Path(tempfile.gettempdir())


@pytest.fixture(scope="module")
def resharded():
    """``reshard()`` with every launched process marked; what it left: marked processes and its temporary folders."""
    folders = set(TEMPORARY.glob("dtutor-reshard-*"))
    with pytest.MonkeyPatch.context() as patch:
        marker = uuid.uuid4().hex
        patch.setenv(MARKER, marker)
        result = reshard.reshard(NEW_WORLD_SIZES, show=False)
    return result, marked_processes(marker) + sorted(set(TEMPORARY.glob("dtutor-reshard-*")) - folders)


def test_the_checkpoint_holds_each_parameter_in_one_chunk_per_saving_rank(resharded):
    result, _ = resharded
    assert result.saved_ranks == 2 and ".metadata" in result.files
    assert sum(name.endswith(".distcp") for name in result.files) == 2
    parameters = result.saved.parameters
    assert set(result.chunks) == set(parameters)
    for name, rows in result.chunks.items():
        assert len(rows) == 2 and rows[0][0] == 0 and rows[0][1] == rows[1][0] and rows[1][1] == len(parameters[name])


@pytest.mark.parametrize("ranks", NEW_WORLD_SIZES)
def test_a_resharded_load_reads_the_saved_state_back_exactly(resharded, ranks):
    result, _ = resharded
    assert identical(result.loads[ranks].loaded, result.saved)
    assert result.loads[ranks].loaded.world_size == ranks and not result.loads[ranks].loaded.epochs


@pytest.mark.parametrize("ranks", NEW_WORLD_SIZES)
def test_training_on_after_the_load_equals_an_unbroken_run_on_the_new_world_size(resharded, ranks):
    result, _ = resharded
    each = result.loads[ranks]
    assert [e.epoch for e in each.continued.epochs] == [1] and [e.epoch for e in each.unbroken.epochs] == [0, 1]
    assert max_difference(each.continued, each.unbroken) < reshard.TOLERANCE
    # the tolerance is far below what the epoch after the load changed: a load that lost the weights or the momentum
    # buffers would not pass
    assert max_difference(each.continued, result.saved) > 1000 * reshard.TOLERANCE


def test_nothing_is_left_behind(resharded):
    _, alive = resharded
    assert alive == []
