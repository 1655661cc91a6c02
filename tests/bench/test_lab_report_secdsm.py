"""bench/lab_report.py: Sec-DSM against security off, from synthetic CSV files.

The lab benchmark (playbooks/bench.yml) runs the C bench client's comparison phases on the
secdsm region (labels ring_c_P1, ring_c_P16) and on a region of security off (the same
labels ending in _off). These tests give lab_report made-up numbers and check the ratios it
computes (throughput secdsm/off, round trip off p50 / secdsm p50), the report's section and
what it prints. No VM, no server.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
POC_HEADER = ("label,op,threads,rings,requests,pipeline,max_inflight,throughput_rps,avg_us,p50_us,"
              "p75_us,p90_us,p99_us,p99.9_us,p99.99_us,push_retries,sleep_ms")


def poc_csv(label: str, phases: dict[str, tuple[float, float]]) -> str:
    """A bench client CSV: op -> (requests/s, p50 µs)."""
    lines = [POC_HEADER]
    for op, (rps, p50) in phases.items():
        lines.append(f"{label},{op},1,1,5000,0,1,{rps:.2f},{p50 + 5:.3f},{p50:.3f},0,0,"
                     f"{p50 * 3:.3f},{p50 * 4:.3f},0,0,0.0")
    return "\n".join(lines) + "\n"


def write(results: Path, name: str, phases: dict[str, tuple[float, float]]) -> None:
    label = name.split("__")[0]
    (results / "vm2").mkdir(parents=True, exist_ok=True)
    (results / "vm2" / name).write_text(poc_csv(label, phases))


@pytest.fixture(scope="module")
def produced(tmp_path_factory, lab_report):
    """One run: every ratio within the target but one pipelined SET."""
    results = tmp_path_factory.mktemp("results")
    write(results, "ring_c_P1__d64__t1.csv", {"set": (20000, 40.0), "get": (25000, 30.0)})
    write(results, "ring_c_P1_off__d64__t1.csv", {"set": (20000, 38.0), "get": (20000, 30.0)})
    write(results, "ring_c_P16__d64__t1.csv", {"set": (100000, 90.0), "get": (200000, 80.0)})
    write(results, "ring_c_P16_off__d64__t1.csv", {"set": (110000, 90.0), "get": (200000, 80.0)})
    # Measured on the secdsm region only (outside the comparison subset): no ratio.
    write(results, "ring_c_P1__d4096__t4.csv", {"set": (9000, 100.0)})
    out = results / "report"
    rows, _ = lab_report.load(results)
    code = lab_report.main([str(results), "--out", str(out), "--secdsm-region", "cxl0",
                            "--off-region", "cxl1"])
    return {"code": code, "rows": rows, "report": (out / "report.md").read_text(), "out": out}


def ratio_of(found, measure, transport, op):
    return next(r.ratio for r in found
                if (r.measure, r.transport, r.op) == (measure, transport, op))


def test_off_files_are_read_as_their_own_transport(produced):
    assert {row.transport for row in produced["rows"]} == {
        "ring_c_P1", "ring_c_P1_off", "ring_c_P16", "ring_c_P16_off"}
    with (produced["out"] / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 9


def test_throughput_ratio_is_secdsm_over_off(produced, lab_report):
    found = lab_report.security_ratios(produced["rows"])
    assert ratio_of(found, "throughput", "ring_c_P1", "get") == pytest.approx(1.25)
    assert ratio_of(found, "throughput", "ring_c_P16", "set") == pytest.approx(100000 / 110000)


def test_round_trip_ratio_is_off_p50_over_secdsm_p50(produced, lab_report):
    found = lab_report.security_ratios(produced["rows"])
    assert ratio_of(found, "round trip", "ring_c_P1", "set") == pytest.approx(38.0 / 40.0)
    # Pipelined phases have no round trip: their p50 is queueing.
    assert not [r for r in found if r.measure == "round trip" and r.transport == "ring_c_P16"]


def test_only_phases_measured_on_both_regions_are_compared(produced, lab_report):
    found = lab_report.security_ratios(produced["rows"])
    assert len(found) == 6 and {r.value_size for r in found} == {64}


def test_summary_takes_the_median_against_the_target(produced, lab_report):
    summary = lab_report.security_summary(lab_report.security_ratios(produced["rows"]))
    assert summary["throughput"]["median"] == pytest.approx(1.0)
    assert summary["throughput"]["min"] == pytest.approx(100000 / 110000)
    assert summary["round trip"]["median"] == pytest.approx((0.95 + 1.0) / 2)
    assert summary["throughput"]["met"] and summary["round trip"]["met"]


def test_report_has_the_section_with_regions_rows_and_verdicts(produced):
    report = produced["report"]
    assert "## Sec-DSM against security off" in report
    assert "(`cxl0`)" in report and "(`cxl1`)" in report
    assert ("| throughput | ring_c_P16 | SET | 64 B | 1 | 1 | 100,000 req/s | 110,000 req/s "
            "| 0.909 | no |") in report
    assert ("| round trip | ring_c_P1 | SET | 64 B | 1 | 1 | 40.0 µs p50 | 38.0 µs p50 "
            "| 0.950 | yes |") in report
    assert "| throughput | 4 | 1.000 | 0.909 | **met** (≥ 0.95) |" in report


def test_a_missed_target_is_reported_and_printed_but_exits_zero(tmp_path, lab_report, capsys):
    write(tmp_path, "ring_c_P1__d64__t1.csv", {"get": (10000, 60.0)})
    write(tmp_path, "ring_c_P1_off__d64__t1.csv", {"get": (20000, 30.0)})
    assert lab_report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "throughput: secdsm/off median 0.500" in printed and "missed" in printed
    assert "round trip: secdsm/off median 0.500" in printed
    assert "**missed** (≥ 0.95)" in (tmp_path / "report.md").read_text()


def test_no_section_without_off_phases(tmp_path, lab_report):
    write(tmp_path, "ring_c_P1__d64__t1.csv", {"get": (10000, 60.0)})
    assert lab_report.main([str(tmp_path)]) == 0
    assert "Sec-DSM against security off" not in (tmp_path / "report.md").read_text()


def test_rounds_of_opposite_order_are_paired_by_their_medians(tmp_path, lab_report):
    """bench.yml's second round (off first, then secdsm) lands in files ending __r1."""
    write(tmp_path, "ring_c_P1__d64__t1.csv", {"get": (10000, 30.0)})
    write(tmp_path, "ring_c_P1_off__d64__t1.csv", {"get": (20000, 30.0)})
    write(tmp_path, "ring_c_P1__d64__t1__r1.csv", {"get": (30000, 20.0)})
    write(tmp_path, "ring_c_P1_off__d64__t1__r1.csv", {"get": (20000, 40.0)})
    rows, problems = lab_report.load(tmp_path)
    assert not problems and sorted(row.round for row in rows) == [0, 0, 1, 1]
    found = lab_report.security_ratios(rows)
    # throughput: median(10000, 30000) / median(20000, 20000); round trip: 35 / 25
    assert ratio_of(found, "throughput", "ring_c_P1", "get") == pytest.approx(1.0)
    assert ratio_of(found, "round trip", "ring_c_P1", "get") == pytest.approx(35.0 / 25.0)
    assert {r.rounds for r in found} == {2}
    assert lab_report.main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| ring_c_P1 (round 2) | GET |" in report
    assert "| throughput | ring_c_P1 | GET | 64 B | 1 | 2 | 20,000 req/s | 20,000 req/s" in report


def test_a_run_of_the_pointer_chase_alone_has_its_report(tmp_path, lab_report):
    """--tags latency: only latency-<host>.json files, the devdax region's row among them."""
    chase = {"size_bytes": 128 << 20, "ns_per_load": {"p50": 149.9, "p90": 160.0, "p99": 170.0}}
    (tmp_path / "latency-vm2.json").write_text(json.dumps([
        dict(chase, host="vm2", memory="guest RAM"),
        dict(chase, host="vm2", memory="devdax region (CPU-less guest node)"),
    ]))
    assert lab_report.main([str(tmp_path), "--virt-type", "qemu"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| vm2 | devdax region (CPU-less guest node) | 128 MiB | 149.9 |" in text
    assert lab_report.main([str(tmp_path / "empty")]) == 1
