"""The shard sensor reports what it cannot list, names the source, and keeps discovering."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg

from corpuslab.declarations import load_experiment
from corpuslab.layout import Layout
from jobs.sensors import discover_shards, shard_sensor
from resources.home import CorpuslabHome
from resources.storage import StorageResource
from tests.conftest import write_experiment

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
SOURCES = "sources:\n  gone: {path: raw/gone}\n  odd: {path: raw/odd}\n  fine: {path: raw/fine}\n"


def _home(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    line = json.dumps({"text": TOPICS["assert"]}).encode() + b"\n"
    for name in ("gone", "odd", "fine"):
        (home / "raw" / name).mkdir(parents=True)
        (home / "raw" / name / "part-0.jsonl").write_bytes(line)
    with open(os.fsencode(home / "raw" / "odd") + b"/caf\xe9.jsonl", "wb") as fh:
        fh.write(line)
    return home, write_experiment(tmp_path / "exp", {"sources.yaml": SOURCES})


def test_discovery_reports_each_problem_and_finds_the_other_sources(tmp_path: Path) -> None:
    home, exp_dir = _home(tmp_path)
    exp = load_experiment(exp_dir)
    shutil.rmtree(home / "raw" / "gone")  # vanishes after the declarations were loaded
    with dg.instance_for_test() as instance:
        found = discover_shards(exp, Layout(home), instance)
    assert found.new == {"odd": ["part-0"], "fine": ["part-0"]}
    assert len(found.errors) == 1 and found.errors[0].startswith("source 'gone': CorpusError")
    assert "does not exist" in found.errors[0]
    assert found.skipped == [
        f"source 'odd': {home}/raw/odd/caf\\xe9.jsonl (name is not valid UTF-8)"
    ]


def test_the_sensor_says_why_it_skips_instead_of_going_quiet(tmp_path: Path) -> None:
    home, exp_dir = _home(tmp_path)
    exp = load_experiment(exp_dir)
    shutil.rmtree(home / "raw" / "gone")
    sensor = shard_sensor(exp)
    resources = {"home": CorpuslabHome(home=str(home)), "storage": StorageResource()}
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert isinstance(result, dg.SensorResult)
        assert sorted(r.partition_key for r in result.run_requests or []) == ["part-0", "part-0"]
        for source in ("odd", "fine"):
            instance.add_dynamic_partitions(f"shards_{source}", ["part-0"])
        again = sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(again, dg.SkipReason)
    assert again.skip_message.startswith("no new shards; source 'gone': CorpusError")
    assert "caf\\xe9.jsonl" in again.skip_message
