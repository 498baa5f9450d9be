"""Where a benchmark ran: the facts recorded beside every kept result."""

import datetime
import importlib.metadata
import os

from dtutor.bench import machine


def test_a_cpu_machine_records_its_cpus_versions_date_and_load(monkeypatch):
    monkeypatch.setattr(machine, "gpu_count", lambda: 0)
    facts = machine.machine()
    assert facts["cpus"] == os.cpu_count() and facts["gpus"] == [] and facts["gpu_text"] == ", no GPU"
    assert facts["versions"]["torch"] == importlib.metadata.version("torch") and facts["driver"] is None
    when = datetime.datetime.fromisoformat(facts["date"])
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60
    assert facts["load_before"] >= 0
