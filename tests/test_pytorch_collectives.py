"""The six collectives on 4 gloo ranks (dtutor.pytorch.collectives): what each left, and the figures drawn from it."""

import matplotlib
import pytest

from dtutor import launch
from dtutor.pytorch import collectives

matplotlib.use("Agg")
WORLD = 4


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    """One launch: every rank's starting tensor and what each collective left."""
    return launch.run("dtutor.pytorch.collectives:every_collective", nprocs=WORLD, timeout=180, quiet=True)


def test_each_collective_leaves_what_its_definition_says(ranks):
    start = [[10 * rank + i for i in range(4)] for rank in range(WORLD)]
    total = [sum(column) for column in zip(*start, strict=True)]
    assert [r["before"] for r in ranks] == start
    assert list(ranks[0]["after"]) == list(collectives.CALLS)
    assert ranks[0]["after"]["reduce"] == total  # only dst=0's tensor is defined
    for r in ranks:
        rank, after = r["rank"], r["after"]
        assert after["broadcast"] == start[0]
        assert after["all_reduce"] == total == [60, 64, 68, 72]
        assert after["all_gather"] == [value for tensor in start for value in tensor]
        assert after["reduce_scatter"] == [total[rank]]  # reduce-scatter's pieces are all-reduce's chunks
        assert after["all_to_all"] == [start[source][rank] for source in range(WORLD)]


def _texts(axes) -> list[str]:
    return [text.get_text() for text in axes.texts if text.get_text() and not text.get_text().startswith("rank")]


def test_the_figure_draws_the_returned_tensors(ranks):
    figure = collectives.draw_collectives(ranks)
    grid = figure.axes
    assert len(grid) == 2 * len(collectives.CALLS)
    names = list(ranks[0]["after"])
    for row, name in enumerate(names):
        before, after = grid[2 * row], grid[2 * row + 1]
        assert _texts(before) == [str(value) for r in ranks for value in r["before"]]
        assert _texts(after) == [str(value) for r in ranks for value in r["after"][name]]
        assert after.get_title(loc="left") == f"after {collectives.CALLS[name]}"


def test_the_ring_figure_draws_each_recorded_step():
    """Two ranks by hand: rank r holds 10**r in two chunks; one step of each phase."""
    def step(rank: int, phase: str, send: int, receive: int, chunks: list[list[int]]) -> dict:
        return {"phase": phase, "step": 0, "send": send, "receive": receive, "rank": rank, "chunks": chunks}

    ranks = [{"start": [1, 1], "reference": [11, 11], "record": [
        step(0, "reduce-scatter", 0, 1, [[1], [11]]), step(0, "all-gather", 1, 0, [[11], [11]])]},
        {"start": [10, 10], "reference": [11, 11], "record": [
            step(1, "reduce-scatter", 1, 0, [[11], [10]]), step(1, "all-gather", 0, 1, [[11], [11]])]}]
    figure = collectives.draw_ring(ranks)
    panels = [axes for axes in figure.axes if axes.texts]
    assert [_texts(axes) for axes in panels] == [["1", "1", "10", "10"], ["1", "11", "11", "10"],
                                                 ["11", "11", "11", "11"], ["11", "11", "11", "11"]]
    assert [axes.get_title(loc="left") for axes in panels] == [
        "start: rank r holds 10^r", "reduce-scatter 1: the next rank adds it", "all-gather 1: the next rank keeps it",
        "dist.all_reduce, for comparison"]
    assert collectives._contributors(1011) == 3
