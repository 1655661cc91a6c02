"""The report writer: report.json and report.md from a run directory, outcomes from outside
the attacker only (canaries in the loot, markers the host saw, the honest client's numbers)."""

from __future__ import annotations

import json

from attack import report
from attack.attacks import ATTACKS, CONTROL
from attack.markers import canary


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _run_dir(tmp_path, attacks=("read", "inject", "header")):
    seed = "the-seed"
    _write(
        tmp_path / "run.json",
        {
            "nonce": "n",
            "seed": seed,
            "seconds": 2,
            "count": 500,
            "value_size": 64,
            "attacks": list(attacks),
            "created": "2025-01-01T00:00:00Z",
            "environment": {"virt": "kvm"},
            "modes": {"off": {"region": "cxl1"}, "secdsm": {"region": "cxl0"}},
        },
    )
    ops = {
        "off": {CONTROL: 1000, "read": 950, "inject": 400, "header": 100},
        "secdsm": {CONTROL: 1000, "read": 960, "inject": 930, "header": 880},
    }
    errors = {"off": {"inject": 3, "header": 12}, "secdsm": {}}
    for mode in ("off", "secdsm"):
        for attack in (CONTROL, *attacks):
            if attack == "claim":  # named in run.json, never ran (test 3)
                continue
            d = tmp_path / mode / attack
            _write(
                d / "honest.json",
                {
                    "canaries": 100,
                    "ops": 200,
                    "seconds": 2,
                    "ops_per_s": ops[mode][attack],
                    "errors": errors[mode].get(attack, 0),
                    "error_kinds": {"ServerGoneError": errors[mode][attack]}
                    if errors[mode].get(attack)
                    else {},
                },
            )
            _write(
                d / "attacker.json",
                {
                    "attempted": 0 if mode == "secdsm" else 40,
                    "notes": ["client-0: not mapped writable"] if mode == "secdsm" else [],
                    "reach": {},
                },
            )
            _write(
                d / "server.json",
                {"server_alive": True, "inject_key_exists": mode == "off" and attack == "inject"},
            )
    # Loot: the off read phase caught two real canaries (one of another phase) and a fake.
    k1, v1 = canary(report.phase_seed(seed, "off", "read"), 7)
    _, v2 = canary(report.phase_seed(seed, "off", CONTROL), 3)
    _, fake = canary("not-the-seed", 8)
    (tmp_path / "off" / "read" / "loot.bin").write_bytes(b"\0".join([k1, v1, v2, fake]))
    (tmp_path / "secdsm" / "read" / "loot.bin").write_bytes(b"")
    _write(
        tmp_path / "watch.json",
        {
            "interval": 0.05,
            "phases": {
                "off/inject": {"polls": 40, "markers": {"request key": 3}},
                "off/header": {
                    "polls": 40,
                    "markers": {"server_epoch": 39, "server_heartbeat": 2, "server_state": 0},
                },
                "secdsm/inject": {"polls": 40, "markers": {"request key": 0}},
                "secdsm/header": {
                    "polls": 40,
                    "markers": {"server_epoch": 0, "server_heartbeat": 0, "server_state": 0},
                },
            },
        },
    )
    return tmp_path, (len(k1) + len(v1) + len(v2))


def test_report_rows_and_outcomes(tmp_path):
    run_dir, stolen = _run_dir(tmp_path)
    rep = report.write(str(run_dir))
    assert [r["attack"] for r in rep["rows"]] == [CONTROL, "read", "inject", "header"]
    rows = {r["attack"]: r for r in rep["rows"]}
    assert rows["read"]["off"]["other_bytes"] == stolen
    assert rows["read"]["off"]["canaries_found"] == {"keys": 1, "values": 2}
    assert rows["read"]["secdsm"]["other_bytes"] == 0
    assert rows["inject"]["off"]["forged_landed"] == 2  # marker seen + key on the server
    assert rows["inject"]["off"]["landed"] == ["request key", "injected key on the server"]
    assert rows["header"]["off"]["forged_landed"] == 2
    assert rows["header"]["secdsm"]["forged_landed"] == 0
    assert rows["read"]["off"]["forged_landed"] is None  # no write, no marker
    assert rows["inject"]["off"]["honest_share"] == 0.4
    assert rows["header"]["secdsm"]["honest_share"] == 0.88
    s = rep["summary"]
    assert s["off"] == {
        "other_bytes": stolen,
        "forged_landed": 4,
        "honest_errors": 15,
        "min_honest_share": 0.1,
        "control_ops_per_s": 1000,
        "phases_run": 3,
    }
    assert s["secdsm"]["holds"] is True and s["secdsm"]["share_met"] is False
    assert s["secdsm"]["min_honest_share"] == 0.88
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(s))
    assert on_disk["run"] == run_dir.name


def test_report_markdown_table(tmp_path):
    run_dir, stolen = _run_dir(tmp_path)
    report.write(str(run_dir))
    md = (run_dir / "report.md").read_text()
    assert md.startswith(f"# Attack suite, run {run_dir.name}\n")
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    head = table[0]
    assert head.count("|") == 10 and "off: landed" in head and "secdsm: throughput" in head
    row = {ln.split(" | ")[0][2:]: ln.split(" | ") for ln in table[1:] if ln.count("|") == 10}
    assert row["read"][1] == str(stolen) and row["read"][2] == "—"
    assert (
        row["inject"][2] == "2 (40 tried)" and row["inject"][3] == "3" and row["inject"][4] == "40%"
    )
    assert row["inject"][5:8] == ["—", "0", "0"]
    assert row[CONTROL][4] == "1000 ops/s"
    assert "Sec-DSM holds (0 bytes, 0 writes landed, 0 honest errors): **yes**" in md
    assert "not a test): **no**" in md
    assert (
        "- inject, `off`: landed: request key, injected key on the server; honest errors: "
        "ServerGoneError 3" in md
    )
    assert "- inject, `secdsm`: client-0: not mapped writable" in md


def test_report_of_a_phase_that_did_not_run(tmp_path):
    run_dir, _ = _run_dir(tmp_path, attacks=("read", "inject", "header", "claim"))
    rep = report.build(str(run_dir))
    claim = [r for r in rep["rows"] if r["attack"] == "claim"][0]
    assert claim["off"]["ran"] is False and claim["off"]["honest_errors"] is None
    assert claim["what"] == ATTACKS["claim"]
    assert rep["summary"]["off"]["phases_run"] == 3
    md = report.markdown(rep)
    assert "| claim | — | — | — | — |" in md


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="run.json is missing"):
        report.build(str(tmp_path))


def test_report_of_rounds(tmp_path):
    """Every phase in two rounds: counts add up, the share is the median of the rounds' shares
    of their own round's control, and the canaries of any round are found in any loot."""
    seed = "the-seed"
    _write(
        tmp_path / "run.json",
        {"nonce": "n", "seed": seed, "seconds": 2, "count": 500, "value_size": 64,
         "attacks": ["read", "inject"], "rounds": 3, "modes": {"secdsm": {"region": "cxl0"}}},
    )  # fmt: skip
    ops = {  # per round: control, read, inject
        1: {CONTROL: 1000, "read": 500, "inject": 900},
        2: {CONTROL: 400, "read": 420, "inject": 200},
        3: {CONTROL: 800, "read": 760, "inject": 880},
    }
    for rnd, per in ops.items():
        for attack, n in per.items():
            d = tmp_path / "secdsm" / report.phase_name(attack, rnd)
            kinds = {"Timeout": 1} if rnd == 2 else {}
            _write(
                d / "honest.json",
                {
                    "canaries": 50,
                    "ops_per_s": n,
                    "errors": sum(kinds.values()),
                    "error_kinds": kinds,
                },
            )
            _write(d / "attacker.json", {"attempted": 10, "notes": ["n"], "reach": {}})
            _write(d / "server.json", {"server_alive": True, "inject_key_exists": False})
    _, v = canary(report.phase_seed(seed, "secdsm", report.phase_name(CONTROL, 3)), 4)
    (tmp_path / "secdsm" / "read@2" / "loot.bin").write_bytes(v)
    _write(
        tmp_path / "watch.json",
        {"phases": {f"secdsm/{report.phase_name('inject', r)}": {
            "polls": 10, "markers": {"request key": int(r == 3)}} for r in (1, 2, 3)}},
    )  # fmt: skip
    rep = report.write(str(tmp_path))
    rows = {r["attack"]: r["secdsm"] for r in rep["rows"]}
    assert rep["rounds"] == 3
    assert rows["read"]["honest_shares"] == [0.5, 1.05, 0.95]
    assert rows["read"]["honest_share"] == 0.95
    assert rows["inject"]["honest_share"] == 0.9  # 0.9, 0.5, 1.1
    assert rows["read"]["other_bytes"] == len(v)
    assert rows["inject"]["forged_landed"] == 1 and rows["inject"]["polls"] == 30
    assert rows["inject"]["forged_attempted"] == 30 and rows["read"]["honest_errors"] == 1
    assert rows["read"]["honest_error_kinds"] == {"Timeout": 1}
    assert rows["read"]["notes"] == ["n"]
    assert rows[CONTROL]["honest_ops_per_s"] == 800
    s = rep["summary"]["secdsm"]
    assert s["min_honest_share"] == 0.9 and s["share_met"] is True and s["holds"] is False
    assert s["control_ops_per_s"] == 800 and s["phases_run"] == 2
    md = (tmp_path / "report.md").read_text()
    assert "every phase in 3 rounds" in md
    line = "- read, `secdsm`: honest errors: Timeout 1; n; throughput per round: 50%, 105%, 95%"
    assert line in md


def test_round_order_alternates():
    assert report.round_order(["a", "b"], 1) == [CONTROL, "a", "b"]
    assert report.round_order(["a", "b"], 2) == ["b", "a", CONTROL]
    assert report.phase_name("own-server", 1) == "own-server"
    assert report.attack_of(report.phase_name("own-server", 4)) == "own-server"
