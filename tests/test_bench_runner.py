"""The PyTorch workers' entry point (dtutor.bench.runner): the counting window, variants, Horovod's bytes."""

from conftest import require_horovod

from dtutor import launch, max_difference
from dtutor.bench import runner
from dtutor.bench.horovod_gap import PatientHorovod
from dtutor.pytorch.ddp import DDP
from dtutor.strategies import STRATEGIES

SETUP = {"global_batch": 32, "samples": 128, "epochs": 2, "test_samples": 0}


def test_the_counting_window_skips_the_first_steps_when_it_can():
    assert runner.count_window(4, 2) == (2, 4)
    assert runner.count_window(2, 2) == (0, 2) and runner.count_window(1, 2) == (0, 1)


def test_a_case_may_name_its_own_class():
    assert runner.implementation({}, "ddp") is DDP
    assert runner.implementation({"implementation": "dtutor.bench.horovod_gap:PatientHorovod"}, "horovod") \
        is PatientHorovod


def test_horovods_bytes_are_counted_and_a_variant_is_proven_equal_to_one_device():
    require_horovod("torch")
    cases = [{"name": "patient", "fields": {"strategy": "horovod", **SETUP}, "probe": True,
              "implementation": "dtutor.bench.horovod_gap:PatientHorovod"}]
    ranks = launch.run_horovod("dtutor.bench.runner:run_cases", 2, framework="torch", cases=cases, quiet=True,
                               timeout=300)
    first = ranks[0][0]
    assert "error" not in first and first["bytes_per_step"] == 487_720  # one all-reduce of the gradients
    assert first["model_state"] == {"parameters": 487_720, "gradients": 487_720, "optimizer": 487_720}
    reference = launch.train(1, strategy="single", **SETUP)[0]
    assert max_difference(first["parameters"], reference) < STRATEGIES["horovod"].tolerance  # a Horovod variant


def test_a_failing_case_is_reported_and_the_next_one_runs():
    cases = [{"name": "bad", "fields": {"strategy": "single", **SETUP, "lr": 0}},
             {"name": "good", "fields": {"strategy": "single", **SETUP}}]
    found = launch.run("dtutor.bench.runner:run_cases", 1, cases=cases, quiet=True, timeout=300)[0]
    assert found[0]["name"] == "bad" and found[0]["error"].startswith("ConfigError: lr: must be")
    assert found[1]["name"] == "good" and found[1]["samples_per_s"] > 0 and found[1]["bytes_per_step"] == 0.0


def test_cpu_is_measured_in_every_run_bytes_only_in_a_probed_one():
    found = launch.run("dtutor.bench.runner:run_cases", 2, quiet=True, timeout=300,
                       cases=[{"name": "timed", "fields": {"strategy": "ddp", **SETUP}},
                              {"name": "counted", "fields": {"strategy": "ddp", **SETUP}, "probe": True}])
    for timed, counted in found:
        assert 0 < timed["main_thread_cpu_per_step"] <= timed["cpu_per_step"]
        assert timed["bytes_per_step"] == 0.0 and timed["model_state_bytes"] == 0  # a timed run is not watched
        assert counted["calls_per_step"]["all_reduce"] == 1  # one bucket for the whole CNN
        assert counted["bytes_per_step"] == 487_720
