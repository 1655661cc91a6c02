"""bench/lab_report.py: both CSV formats in, one table, plots and a report out."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
POC_HEADER = ("label,op,threads,rings,requests,pipeline,max_inflight,throughput_rps,avg_us,p50_us,"
              "p75_us,p90_us,p99_us,p99.9_us,p99.99_us,push_retries,sleep_ms")
BENCHMARK_HEADER = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",'
                    '"p95_latency_ms","p99_latency_ms","max_latency_ms"')


def load_module():
    spec = importlib.util.spec_from_file_location("lab_report", REPO_ROOT / "bench/lab_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab_report"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    client, server = results / "vm2", results / "vm1"
    client.mkdir()
    server.mkdir()
    (client / "ring_c_P1__d64__t1.csv").write_text(
        POC_HEADER + "\n"
        "ring_c_P1,set,1,1,1000,0,1,20000.00,50.000,40.000,45,48,90.000,120.000,150,0,0.0\n"
        "ring_c_P1,get,1,1,1000,0,1,25000.00,40.000,30.000,35,38,80.000,100.000,120,0,0.0\n")
    (client / "tcp_vm_P1__d64__t1.csv").write_text(
        BENCHMARK_HEADER + '\n"SET","2000.00","0.500","0.100","0.400","0.700","0.900","3.0"\n'
        '"GET","2500.00","0.400","0.100","0.300","0.600","0.800","2.0"\n')
    (server / "tcp_local_P1__d64__t1.csv").write_text(
        BENCHMARK_HEADER + '\n"SET","8000.00","0.120","0.050","0.100","0.200","0.300","1.0"\n')
    (client / "ring_py_P1__d64__t1.csv").write_text("garbage\n")
    out = results / "report"
    code = load_module().main([str(results), "--out", str(out), "--virt-type", "qemu"])
    return {"code": code, "out": out}


def test_exit_code(produced):
    assert produced["code"] == 0


def test_table_has_every_measured_phase(produced):
    with (produced["out"] / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 5


def test_redis_benchmark_latency_is_converted_to_microseconds(produced):
    with (produced["out"] / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["transport"] == "tcp_vm_P1" and r["op"] == "set"]
    assert float(rows[0]["p50_us"]) == pytest.approx(400.0)


def test_report_gives_the_round_trip_ratio(produced):
    assert "| round trip (p50), ring / TCP between VMs | SET | 64 B | 1 | 0.10 |" in (
        produced["out"] / "report.md").read_text()


def test_report_explains_tcg(produced):
    assert "TCG" in (produced["out"] / "report.md").read_text()


def test_report_lists_unreadable_files(produced):
    assert "ring_py_P1__d64__t1.csv" in (produced["out"] / "report.md").read_text()


def test_plots_are_drawn(produced):
    pytest.importorskip("matplotlib")
    assert (produced["out"] / "throughput.png").stat().st_size > 0


def test_no_results_is_an_error(tmp_path):
    assert load_module().main([str(tmp_path)]) == 1


def test_idle_figures_of_the_run_are_reported(tmp_path):
    """idle.json (playbooks/bench.yml's idle play) becomes its own section, with what the
    polling server adds; a run without it, or with a broken one, has no such section."""
    lab_report = load_module()
    results = tmp_path / "run"
    (results / "vm2").mkdir(parents=True)
    (results / "vm2" / "ring_c_P1__d64__t1.csv").write_text(
        POC_HEADER + "\n"
        "ring_c_P1,get,1,1,1000,0,1,25000.00,40.000,30.000,35,38,80.000,100.000,120,0,0.0\n")
    (results / "idle.json").write_text(
        '[{"label": "lab server (doorbell)", "seconds": 15.0, "percent": 1.5},'
        ' {"label": "lab server + a polling server", "seconds": 15.0, "percent": 4.25}]')
    assert lab_report.main([str(results)]) == 0
    text = (results / "report.md").read_text()
    assert "## Idle server VM, seen from the hypervisor" in text
    assert "| lab server (doorbell) | 15.0 | 1.50 |" in text
    assert "What the polling server adds: +2.75 % of a core." in text
    (results / "wake.json").write_text(
        '[{"label": "lab server (doorbell)", "samples": 10, "gap_ms": 1000, "p50_us": 900.4,'
        ' "p99_us": 2000}, {"label": "polling server", "error": "cannot claim"}]')
    assert lab_report.main([str(results)]) == 0
    text = (results / "report.md").read_text()
    assert "| lab server (doorbell) | 10 | 1000 | 900 | 2000 |" in text
    assert "| polling server | failed: cannot claim | | | |" in text
    (results / "latency-vm2.json").write_text(
        '[{"host": "vm2", "memory": "guest RAM", "size_bytes": 67108864,'
        ' "ns_per_load": {"p50": 250.04, "p90": 300, "p99": 410.5}}]')
    (results / "latency-broken.json").write_text('[{"host": "x"}]')
    assert lab_report.main([str(results), "--virt-type", "qemu"]) == 0
    text = (results / "report.md").read_text()
    assert "| vm2 | guest RAM | 64 MiB | 250.0 | 300.0 | 410.5 |" in text
    assert "the guests' figures are the emulator's" in text and "local DRAM ~113 ns" in text
    assert text.count("| x |") == 0
    (results / "idle.json").write_text("not json")
    assert lab_report.main([str(results)]) == 0
    assert "Idle server VM" not in (results / "report.md").read_text()


def test_idle_cpu_samples_a_process_from_outside(tmp_path):
    """bench/idle_cpu.py on a sleeping child: a small share, appended to the JSON list."""
    import json
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        out = tmp_path / "idle.json"
        for label in ("first", "second"):
            done = subprocess.run(
                [sys.executable, str(REPO_ROOT / "bench/idle_cpu.py"), "--pid", str(child.pid),
                 "--seconds", "0.3", "--label", label, "--out", str(out)],
                capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        found = json.loads(out.read_text())
        assert [f["label"] for f in found] == ["first", "second"]
        assert all(f["pid"] == child.pid and f["percent"] >= 0 for f in found)
        line = subprocess.run(
            [sys.executable, str(REPO_ROOT / "bench/idle_cpu.py"), "--pid", str(child.pid),
             "--seconds", "0.1", "--label", "x", "--out", "-"],
            capture_output=True, text=True, timeout=60)
        assert json.loads(line.stdout)["label"] == "x"
    finally:
        child.kill()
        child.wait()
    gone = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench/idle_cpu.py"), "--pid", str(child.pid),
         "--seconds", "0.1", "--label", "x", "--out", "-"],
        capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "cannot read the process" in gone.stderr
