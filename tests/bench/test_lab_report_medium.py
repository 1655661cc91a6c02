"""bench/lab_report.py: the devdax medium against ivshmem and the injected far-memory delay,
from synthetic CSV files (playbooks/bench.yml's ring_c_P1_devdax, ring_c_P16_devdax and
ring_c_P1_delay phases beside ring_c_P1_off). No VM, no server."""

from __future__ import annotations

import pytest
from test_lab_report_secdsm import write


@pytest.fixture(scope="module")
def produced(tmp_path_factory, lab_report):
    results = tmp_path_factory.mktemp("results")
    # avg_us is p50 + 5 in these files (test_lab_report_secdsm.poc_csv).
    write(results, "ring_c_P1_off__d64__t1.csv", {"set": (20000, 40.0), "get": (25000, 30.0)})
    write(results, "ring_c_P1_off__d64__t1__r1.csv", {"set": (22000, 42.0), "get": (25000, 32.0)})
    write(results, "ring_c_P16_off__d64__t1.csv", {"set": (100000, 90.0), "get": (200000, 80.0)})
    write(results, "ring_c_P1_devdax__d64__t1.csv", {"set": (21000, 39.0), "get": (30000, 29.0)})
    write(results, "ring_c_P16_devdax__d64__t1.csv", {"set": (50000, 95.0), "get": (100000, 85.0)})
    write(results, "ring_c_P1_delay__d64__t1.csv", {"set": (9000, 61.0), "get": (10000, 51.0)})
    out = tmp_path_factory.mktemp("out")
    code = lab_report.main([str(results), "--out", str(out), "--off-region", "cxl1",
                            "--devdax-region", "cxl2", "--access-delay-ns", "10000"])
    return {"code": code, "report": (out / "report.md").read_text(), "results": results}


def test_the_phases_are_read_with_their_medium_and_delay(produced, lab_report):
    rows, problems = lab_report.load(produced["results"])
    assert problems == []
    assert {r.transport for r in rows} == {"ring_c_P1_off", "ring_c_P16_off", "ring_c_P1_devdax",
                                          "ring_c_P16_devdax", "ring_c_P1_delay"}


def test_the_medium_table_sets_devdax_beside_the_median_of_ivshmem(produced):
    assert produced["code"] == 0
    report = produced["report"]
    assert "## The devdax medium against ivshmem" in report
    assert "(`cxl2` against `cxl1`)" in report
    # SET, one in flight: ivshmem median of 20000 and 22000 = 21000; devdax 21000: 1.000.
    assert "| ring_c_P1 | SET | 64 B | 1 | 21,000 | 21,000 | 1.000 | 41.0 | 39.0 |" in report
    assert "| ring_c_P16 | GET | 64 B | 1 | 200,000 | 100,000 | 0.500 | 80.0 | 85.0 |" in report


def test_the_delay_table_says_what_the_delay_added_against_two_delays(produced, lab_report):
    report = produced["report"]
    assert "## The injected far-memory delay" in report
    # SET: without, p50 median (40 + 42) / 2 = 41 (avg 46); with, 61: +20 µs, two delays.
    assert "| SET | 64 B | 1 | 46.0 / 41.0 | 66.0 / 61.0 | 20.0 | 20.0 | 1.00 |" in report
    rows, _ = lab_report.load(produced["results"])
    (get,) = [r for r in lab_report.delay_rows(rows, 10000) if r["op"] == "get"]
    assert get["added_us"] == pytest.approx(51.0 - 31.0)     # p50s, not means


def test_without_those_phases_the_report_has_neither_section(tmp_path, lab_report):
    write(tmp_path / "res", "ring_c_P1_off__d64__t1.csv", {"set": (20000, 40.0)})
    assert lab_report.main([str(tmp_path / "res"), "--access-delay-ns", "10000"]) == 0
    report = (tmp_path / "res" / "report.md").read_text()
    assert "devdax medium" not in report and "injected far-memory delay" not in report
