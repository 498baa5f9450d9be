"""The bytes of a storage: what each view covers, their union, and what is really resident."""

import torch

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
    # 64 MB: above glibc's largest mmap threshold (32 MB), so fresh pages, never memory an earlier test freed
    block = torch.empty(64 * 2**20, dtype=torch.uint8)
    before = storage.resident_bytes(block)
    block.fill_(1)
    assert before < 32 * 2**20 <= storage.resident_bytes(block)
