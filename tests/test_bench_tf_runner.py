"""The TensorFlow workers' entry point (dtutor.bench.tf_runner): bytes counted at trace time, replicas, proofs."""

from conftest import require_horovod

from dtutor import launch, max_difference
from dtutor.launch.commands import TF_WORKER_ENV
from dtutor.strategies import STRATEGIES

SETUP = {"global_batch": 32, "samples": 64, "epochs": 2, "test_samples": 0}
G = 487_720


def test_mirrored_cases_share_one_process_whatever_order_their_replicas_come_in():
    cases = [{"name": "one", "fields": {"strategy": "mirrored", **SETUP}, "replicas": 1},
             {"name": "two", "fields": {"strategy": "mirrored", **SETUP}, "replicas": 2}]
    one, two = launch.run_single("dtutor.bench.tf_runner:run_tf_cases", cases=cases, env=dict(TF_WORKER_ENV),
                                 threads=1, timeout=300)
    assert "error" not in one and "error" not in two and two["world_size"] == 2
    assert max_difference(two["parameters"], one["parameters"]) <= STRATEGIES["mirrored"].tolerance
    assert two["bytes_per_step"] is None  # one process: nothing crosses a link
    assert two["model_state"]["parameters"] == two["model_state"]["gradients"] == G


def test_multiworker_all_reduces_the_gradients_once_per_step():
    found = launch.run_tf_workers("dtutor.bench.tf_runner:run_tf_cases", 2, quiet=True, timeout=300,
                                  cases=[{"name": "mw", "fields": {"strategy": "multiworker", **SETUP}}])
    for rank in found:
        assert abs(rank[0]["bytes_per_step"] - G) <= 0.001 * G  # 2(n-1)/n = 1 at n = 2


def test_horovod_keras_counts_each_gradient_once_though_traced_more_than_once_and_in_every_case():
    """Two cases in one process, as the benchmark runs them: Horovod's traced gradient function, cached per
    process, must not hide the second case's all-reduces (it counted 0 bytes before the counter emptied it)."""
    require_horovod("tensorflow")
    cases = [{"name": name, "fields": {"strategy": "horovod_keras", **SETUP}} for name in ("first", "second")]
    found = launch.run_horovod("dtutor.bench.tf_runner:run_tf_cases", 2, framework="tensorflow", quiet=True,
                               timeout=300, cases=cases)
    assert [[case["bytes_per_step"] for case in rank] for rank in found] == [[G, G], [G, G]]

