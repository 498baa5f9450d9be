"""The model-state counter: what each view of a storage covers, their union, what is really resident, and the
ledger that counts each storage once by role."""

import torch
from conftest import never_written

from dtutor.pytorch.sharded import storage


def test_a_view_spans_from_its_offset_to_its_last_element():
    flat = torch.zeros(100)  # 400 bytes
    assert storage.view_span(flat) == (0, 400)
    assert storage.view_span(flat[10:20]) == (40, 80)
    assert storage.view_span(flat.view(10, 10)[:, 0]) == (0, 364)  # strided: first to last element of column 0
    assert storage.view_span(flat[5:5]) == (20, 20)  # empty: no bytes


def test_overlapping_views_count_once():
    assert storage.covered_bytes([(0, 40), (20, 80), (100, 120)]) == 80 + 20
    assert storage.covered_bytes([(40, 80), (0, 100)]) == 100
    assert storage.covered_bytes([]) == 0


def test_resident_bytes_follow_what_was_written():
    block = never_written(64 * 2**20)
    before = storage.resident_bytes(block)
    block.fill_(1)
    assert before < 32 * 2**20 <= storage.resident_bytes(block)


def test_a_storage_counts_once_by_the_first_role_that_views_it():
    flat = torch.zeros(100)
    ledger = storage.Ledger()
    ledger.add("parameters", flat[:60])
    ledger.add("master_weights", flat[40:])  # overlaps: only the 40 values nobody claimed yet are master weights
    ledger.add("buffers", flat)
    totals = ledger.totals()
    assert (totals["parameters"], totals["master_weights"], totals["buffers"]) == (240, 160, 0)


def test_what_no_role_views_is_a_buffer_and_meta_tensors_hold_nothing():
    held = torch.zeros(100)
    ledger = storage.Ledger()
    ledger.add("gradients", held[10:60])  # a partition inside a larger buffer: the rest is slack
    ledger.add("parameters", torch.empty(1000, device="meta"))
    ledger.add("gradients", None)
    assert ledger.totals()["gradients"] == 200 and ledger.totals()["buffers"] == 200
    assert ledger.totals()["parameters"] == 0


def test_a_reduce_bucket_counts_only_what_gradients_view():
    bucket = never_written(40_000_000, torch.float32)  # 40 MB, never written: virtual, as DeepSpeed's empty bucket
    ledger = storage.Ledger()
    ledger.add("reduce_bucket", bucket, bucket=True)
    ledger.add("gradients", bucket[:1000].view(10, 100))  # a p.grad waiting in the bucket
    ledger.add("buffers", bucket)  # the same bucket reached another way does not count either
    totals = ledger.totals()
    assert totals["reduce_bucket"] == 4000 and totals["gradients"] == 0 and totals["buffers"] == 0
    assert totals["bucket_capacity"] == 40_000_000 and totals["model_state"] == 0
    assert 0 <= totals["bucket_resident"] < 40_000_000 // 2  # untouched pages are not resident
