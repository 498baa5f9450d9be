"""Layouts: a strategy's grid of pipeline stages x data replicas x tensor shards, cut for a world size."""

import pytest

from dtutor.layout import ALL, DATA, DATA_X_TENSOR, PIPELINE, TENSOR, Layout, LayoutError, Mesh


@pytest.mark.parametrize(
    ("layout", "world_size", "sizes"),
    [(DATA, 4, (1, 4, 1)), (PIPELINE, 4, (4, 1, 1)), (TENSOR, 2, (1, 1, 2)), (DATA_X_TENSOR, 4, (1, 2, 2)),
     (Layout(pipeline=2, tensor=2), 8, (2, 2, 2)), (Layout(pipeline=2, tensor=ALL), 8, (2, 1, 4))],
)
def test_a_layout_cuts_the_world_into_sizes_whose_product_is_the_world(layout, world_size, sizes):
    mesh = layout.mesh(world_size)
    assert (mesh.pipeline, mesh.data, mesh.tensor) == sizes and mesh.world_size == world_size


def test_the_tensor_dimension_varies_fastest():
    mesh = Mesh(pipeline=2, data=2, tensor=2)
    places = [mesh.coordinates(rank) for rank in range(8)]
    assert [(c.pipeline, c.data, c.tensor) for c in places] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]


def test_a_world_the_layout_cannot_cut_is_refused_naming_the_world_size():
    with pytest.raises(LayoutError, match=r"world size: 6 ranks cannot be cut into pipeline 2 x tensor 2 x data"):
        Layout(pipeline=2, tensor=2).mesh(6)


@pytest.mark.parametrize(("fields", "message"), [({"pipeline": 0}, "pipeline: must be ALL"),
                                                 ({"pipeline": ALL, "tensor": ALL}, "at most one dimension")])
def test_a_layout_that_cannot_exist_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Layout(**fields)


def test_layouts_describe_themselves():
    assert [layout.describe() for layout in (DATA, PIPELINE, DATA_X_TENSOR)] == [
        "data (every rank)", "pipeline (every rank)", "tensor 2 x data (the rest)"]
    assert DATA.splits_data_only and not TENSOR.splits_data_only and PIPELINE.splits("pipeline")


def test_a_layout_names_its_kind():
    assert [layout.kind for layout in (DATA, PIPELINE, TENSOR, DATA_X_TENSOR, Layout(pipeline=2, tensor=ALL))] == [
        "data", "pipeline", "tensor", "data x tensor", "pipeline x tensor"]
