"""Ring all-reduce by hand (dtutor.pytorch.ring) equals dist.all_reduce: one 4-rank launch checks every shape."""

import pytest
import torch

from dtutor import launch
from dtutor.pytorch import ring

WORLD = 4


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    """One launch: every rank's proofs (each shape, random and integer-valued floats) and the recorded run."""
    return launch.run("dtutor.pytorch.ring:prove_and_record", nprocs=WORLD, timeout=180, quiet=True)


def test_the_schedule_sends_each_chunk_to_the_rank_that_expects_it():
    for rank in range(WORLD):
        mine, following = ring.ring_schedule(rank, WORLD), ring.ring_schedule((rank + 1) % WORLD, WORLD)
        assert len(mine) == 2 * (WORLD - 1)
        assert [step.send for step in mine] == [step.receive for step in following]
        scatter = [step.send for step in mine if step.phase == ring.REDUCE_SCATTER]
        assert sorted(scatter + [(rank + 1) % WORLD]) == list(range(WORLD))  # all but the chunk it ends up owning
    assert ring.ring_schedule(0, 1) == []


def test_the_ring_equals_dist_all_reduce_on_every_shape(ranks):
    assert [r["rank"] for r in ranks] == list(range(WORLD)) and all(r["world"] == WORLD for r in ranks)
    shapes = [tuple(row["shape"]) for row in ranks[0]["proofs"]]
    assert shapes == ring.PROOF_SHAPES and any(row["numel"] < WORLD for row in ranks[0]["proofs"])
    assert any(row["numel"] % WORLD for row in ranks[0]["proofs"] if row["numel"] > WORLD)
    for r in ranks:
        for row in r["proofs"]:
            assert row["returned_its_input"], row["shape"]
            assert row["integers_max_difference"] == 0.0, row["shape"]
            assert row["floats_max_difference"] <= 1e-6, row["shape"]  # float32 sums of 4 numbers in [-1, 1)


def test_the_sums_are_every_ranks_input_added_up(ranks):
    for row in ranks[2]["proofs"]:
        shape = tuple(row["shape"])
        expected = sum(ring._proof_input(shape, rank, integers=True) for rank in range(WORLD))
        assert expected.abs().sum() > 0 and torch.equal(expected.flatten(), torch.tensor(row["integers_result"]))


def test_each_rank_sends_every_chunk_but_two(ranks):
    """2(N-1) chunks per rank: 2(N-1)/N x S elements when N divides S."""
    for r in ranks:
        for row in r["proofs"]:
            sizes = row["chunk_sizes"]
            assert len(sizes) == WORLD and sum(sizes) == row["numel"] and max(sizes) - min(sizes) <= 1
            owned, gathered_last = (r["rank"] + 1) % WORLD, (r["rank"] + 2) % WORLD
            assert row["sent_elements"] == 2 * row["numel"] - sizes[owned] - sizes[gathered_last]
            if row["numel"] % WORLD == 0:
                assert row["sent_elements"] == 2 * (WORLD - 1) * row["numel"] // WORLD


def test_the_record_shows_partial_sums_growing_by_one_rank_per_step(ranks):
    """Rank r holds 10**r: after reduce-scatter step s, the chunk rank r received adds ranks r, r-1, .., r-s-1."""
    total = sum(10**rank for rank in range(WORLD))
    for r in ranks:
        rank, record = r["rank"], r["record"]
        assert r["start"] == [10**rank] * WORLD and r["result"] == r["reference"] == [total] * WORLD
        assert [(step["phase"], step["step"]) for step in record] == [
            (phase, s) for phase in (ring.REDUCE_SCATTER, ring.ALL_GATHER) for s in range(WORLD - 1)]
        for step in record:
            received = step["chunks"][step["receive"]][0]
            if step["phase"] == ring.REDUCE_SCATTER:
                assert received == sum(10 ** ((rank - k) % WORLD) for k in range(step["step"] + 2))
            else:
                assert received == total
        after_scatter = record[WORLD - 2]["chunks"]
        assert after_scatter[(rank + 1) % WORLD] == [total]
