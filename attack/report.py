"""The report of one run: report.json and report.md, one row per attack, both modes.

A run directory holds (the same on one host and in the lab):

    run.json                       nonce, the honest client's secret seed, modes, attacks, bounds
    watch.json                     the host's marker counts per phase (watch.py)
    <mode>/<attack>/attacker.json  what the attacker tried (attacks.py)
    <mode>/<attack>/loot.bin       the bytes it read from places not its own
    <mode>/<attack>/honest.json    the honest client's load beside it (honest.py)
    <mode>/<attack>/server.json    the server's view: the injected key present, server up

Every outcome comes from outside the attacker: bytes of other clients' data = the honest
client's canaries (secret seed) found in the loot; forged writes landed = markers the host
saw in the region files, plus the injected key found on the server; honest errors and
throughput from the honest client. Throughput is a share of the control phase's, where the
attacker VM only burns the same CPU.

A run may repeat every phase in rounds (run.json "rounds"; round 1 in <mode>/<attack>/, round
r in <mode>/<attack>@r/). Counts (bytes, writes landed, errors) add up over the rounds; the
throughput share is the median of each round's share of that round's control, so that one
slow or fast phase on a shared machine does not decide the figure.
"""

from __future__ import annotations

import json
import os
import statistics

from .attacks import ATTACKS, CONTROL
from .markers import Markers, score

MODES = ("off", "secdsm")
SHARE_TARGET = 0.90
# The attacks that write markers: only these have forged writes that may land.
WRITERS = {m.attack for m in Markers("", "off").all()}

EXPECT = {
    "off": {
        "read": "succeeds",
        "inject": "succeeds",
        "forge": "succeeds",
        "header": "succeeds",
        "claim": "succeeds",
        "probe": "finds the whole region",
        "own-server": "lands (its own channels)",
        "hostile": "honest client unaffected",
    },
    "secdsm": {a: "0 bytes, 0 writes landed, 0 honest errors" for a in ATTACKS},
}


def phase_seed(seed: str, mode: str, attack: str) -> str:
    return f"{seed}/{mode}/{attack}"


def phase_name(attack: str, rnd: int) -> str:
    """The directory (and watcher phase) of an attack in a round: `read`, `read@2`, ..."""
    return attack if rnd <= 1 else f"{attack}@{rnd}"


def attack_of(phase: str) -> str:
    return phase.split("@", 1)[0]


def round_order(attacks: list[str], rnd: int) -> list[str]:
    """The control and the attacks in the order a round runs them: odd rounds control first,
    even rounds reversed, so that drift over a run does not favour one side."""
    order = [CONTROL] + list(attacks)
    return order if rnd % 2 else order[::-1]


def all_phases(run: dict) -> list[str]:
    return [
        phase_name(a, r)
        for r in range(1, int(run.get("rounds", 1)) + 1)
        for a in [CONTROL] + run["attacks"]
    ]


def _load(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def outcome(
    run_dir: str, run: dict, watch: dict, mode: str, attack: str, control_ops: float | None
) -> dict:
    d = os.path.join(run_dir, mode, attack)
    att = _load(os.path.join(d, "attacker.json")) or {}
    hon = _load(os.path.join(d, "honest.json")) or {}
    srv = _load(os.path.join(d, "server.json")) or {}
    out: dict = {"ran": bool(att) and bool(hon)}
    loot_path = os.path.join(d, "loot.bin")
    if os.path.exists(loot_path):
        with open(loot_path, "rb") as f:
            loot = f.read()
        found = {"keys": 0, "values": 0, "bytes": 0}
        for other in all_phases(run):
            h = _load(os.path.join(run_dir, mode, other, "honest.json")) or {}
            s = score(
                loot,
                phase_seed(run["seed"], mode, other),
                h.get("canaries", 0),
                run.get("value_size", 64),
            )
            for k in found:
                found[k] += s[k]
        out["other_bytes"] = found["bytes"]
        out["canaries_found"] = {"keys": found["keys"], "values": found["values"]}
        out["loot_bytes"] = len(loot)
    else:
        out["other_bytes"] = None
    phase = watch.get("phases", {}).get(f"{mode}/{attack}")
    if attack_of(attack) in WRITERS and (out["ran"] or phase is not None):
        seen = [n for n, c in (phase or {}).get("markers", {}).items() if c > 0]
        if attack_of(attack) == "inject" and srv.get("inject_key_exists"):
            seen.append("injected key on the server")
        out["forged_landed"] = len(seen)
        out["landed"] = seen
        out["polls"] = (phase or {}).get("polls", 0)
    else:
        out["forged_landed"] = None
    out["forged_attempted"] = att.get("attempted")
    out["honest_errors"] = hon.get("errors")
    out["honest_error_kinds"] = hon.get("error_kinds", {})
    out["honest_ops_per_s"] = hon.get("ops_per_s")
    ops = hon.get("ops_per_s")
    out["honest_share"] = round(ops / control_ops, 3) if ops is not None and control_ops else None
    out["server_alive"] = srv.get("server_alive")
    out["reach"] = att.get("reach", {})
    out["notes"] = att.get("notes", []) + ([att["error"]] if att.get("error") else [])
    out["details"] = att.get("details", {})
    return out


def combine(cells: list[dict]) -> dict:
    """One cell of the report from the same attack's outcomes in each round."""
    if len(cells) == 1:
        return cells[0]

    def total(key: str):
        vals = [c[key] for c in cells if c.get(key) is not None]
        return sum(vals) if vals else None

    def median(key: str):
        vals = [c[key] for c in cells if c.get(key) is not None]
        return round(statistics.median(vals), 3) if vals else None

    out = dict(cells[0])
    out["ran"] = all(c["ran"] for c in cells)
    out["rounds_ran"] = sum(1 for c in cells if c["ran"])
    for key in (
        "other_bytes",
        "loot_bytes",
        "forged_landed",
        "polls",
        "forged_attempted",
        "honest_errors",
    ):
        if key in out:
            out[key] = total(key)
    if out.get("canaries_found") is not None:
        out["canaries_found"] = {
            k: sum((c.get("canaries_found") or {}).get(k, 0) for c in cells)
            for k in ("keys", "values")
        }
    if "landed" in out:
        out["landed"] = sorted({n for c in cells for n in c.get("landed", [])})
    kinds: dict[str, int] = {}
    for c in cells:
        for k, v in (c.get("honest_error_kinds") or {}).items():
            kinds[k] = kinds.get(k, 0) + v
    out["honest_error_kinds"] = kinds
    out["honest_ops_per_s"] = median("honest_ops_per_s")
    out["honest_share"] = median("honest_share")
    out["honest_shares"] = [c.get("honest_share") for c in cells]
    alive = [c.get("server_alive") for c in cells if c.get("server_alive") is not None]
    out["server_alive"] = all(alive) if alive else None
    out["notes"] = list(dict.fromkeys(n for c in cells for n in c.get("notes", [])))
    return out


def build(run_dir: str) -> dict:
    run = _load(os.path.join(run_dir, "run.json"))
    if run is None:
        raise SystemExit(f"{run_dir}/run.json is missing: not a run directory of the attack suite")
    watch = _load(os.path.join(run_dir, "watch.json")) or {}
    modes = [m for m in MODES if m in run["modes"]]
    rounds = range(1, int(run.get("rounds", 1)) + 1)
    control: dict[str, dict[int, float | None]] = {}
    for mode in modes:
        control[mode] = {}
        for r in rounds:
            path = os.path.join(run_dir, mode, phase_name(CONTROL, r), "honest.json")
            control[mode][r] = (_load(path) or {}).get("ops_per_s")
    rows = []
    for attack in [CONTROL] + run["attacks"]:
        row = {
            "attack": attack,
            "what": ATTACKS.get(attack, "the attacker VM only burns the same CPU"),
        }
        for mode in modes:
            row[mode] = combine(
                [
                    outcome(run_dir, run, watch, mode, phase_name(attack, r), control[mode][r])
                    for r in rounds
                ]
            )
            row[mode]["expected"] = EXPECT.get(mode, {}).get(attack, "baseline")
        rows.append(row)
    summary = {}
    for mode in modes:
        cells = [r[mode] for r in rows if r["attack"] != CONTROL]
        shares = [c["honest_share"] for c in cells if c["honest_share"] is not None]
        summary[mode] = {
            "other_bytes": sum(c["other_bytes"] or 0 for c in cells),
            "forged_landed": sum(c["forged_landed"] or 0 for c in cells),
            "honest_errors": sum(c["honest_errors"] or 0 for c in cells),
            "min_honest_share": min(shares) if shares else None,
            "control_ops_per_s": next(r[mode] for r in rows if r["attack"] == CONTROL)[
                "honest_ops_per_s"
            ],
            "phases_run": sum(1 for c in cells if c["ran"]),
        }
    if "secdsm" in summary:
        s = summary["secdsm"]
        s["holds"] = s["other_bytes"] == 0 and s["forged_landed"] == 0 and s["honest_errors"] == 0
        s["share_target"] = SHARE_TARGET
        s["share_met"] = s["min_honest_share"] is not None and s["min_honest_share"] >= SHARE_TARGET
    return {
        "run": os.path.basename(os.path.abspath(run_dir)),
        "created": run.get("created"),
        "seconds_per_phase": run.get("seconds"),
        "rounds": int(run.get("rounds", 1)),
        "honest_count": run.get("count"),
        "environment": run.get("environment", {}),
        "modes": {m: run["modes"][m] for m in modes},
        "unreadable": watch.get("unreadable", {}),
        "rows": rows,
        "summary": summary,
    }


def _cell(v, fmt="{}") -> str:
    return "—" if v is None else fmt.format(v)


def _landed(c: dict) -> str:
    if c["forged_landed"] is None:
        return "—"
    att = c["forged_attempted"]
    return f"{c['forged_landed']}" + (f" ({att} tried)" if att else "")


def markdown(rep: dict) -> str:
    modes = list(rep["modes"])
    env = rep.get("environment") or {}
    lines = [f"# Attack suite, run {rep['run']}", ""]
    lines.append(
        f"{rep.get('seconds_per_phase')} s per phase"
        + (
            f", every phase in {rep['rounds']} rounds (counts add up; throughput is the median "
            f"of the rounds' shares of their own control)"
            if rep.get("rounds", 1) > 1
            else ""
        )
        + "; honest client: at most "
        f"{rep.get('honest_count')} canaries per phase. "
        + ", ".join(f"`{m}`: region {rep['modes'][m].get('region', '?')}" for m in modes)
        + (f"; {', '.join(f'{k} {v}' for k, v in env.items())}" if env else "")
        + "."
    )
    lines += [
        "",
        "Columns per mode: other clients' bytes obtained / forged writes landed "
        "(writes tried) / honest client errors / honest throughput as a share of the "
        "control phase's.",
        "",
    ]
    head = (
        "| attack | "
        + " | ".join(f"{m}: bytes | {m}: landed | {m}: errors | {m}: throughput" for m in modes)
        + " |"
    )
    lines += [head, "|" + "---|" * (1 + 4 * len(modes))]
    for r in rep["rows"]:
        cells = []
        for m in modes:
            c = r[m]
            share = c["honest_share"]
            thr = (
                f"{share:.0%}"
                if share is not None and r["attack"] != CONTROL
                else _cell(c["honest_ops_per_s"], "{} ops/s")
            )
            cells += [_cell(c["other_bytes"]), _landed(c), _cell(c["honest_errors"]), thr]
        lines.append(f"| {r['attack']} | " + " | ".join(cells) + " |")
    lines += ["", "| attack | what it tries |", "|---|---|"]
    lines += [f"| {r['attack']} | {r['what']} |" for r in rep["rows"]]
    lines += ["", "## Summary", ""]
    for m in modes:
        s = rep["summary"][m]
        share = s["min_honest_share"]
        lines.append(
            f"- `{m}`: {s['other_bytes']} bytes of other clients' data, "
            f"{s['forged_landed']} forged writes landed, {s['honest_errors']} honest client "
            f"errors, lowest honest throughput {_cell(share, '{:.0%}')} of the control phase "
            f"({_cell(s['control_ops_per_s'])} ops/s); {s['phases_run']} attack phases ran."
        )
    if "secdsm" in rep["summary"]:
        s = rep["summary"]["secdsm"]
        lines += [
            "",
            f"Sec-DSM holds (0 bytes, 0 writes landed, 0 honest errors): "
            f"**{'yes' if s['holds'] else 'no'}**. Honest throughput ≥ "
            f"{s['share_target']:.0%} of the control beside every attack (a benchmark, "
            f"not a test): **{'yes' if s['share_met'] else 'no'}**.",
        ]
    if rep.get("unreadable"):
        lines += [
            "",
            "**The host could not read these files: writes that landed there were "
            "not seen (run the watcher as root or the files' owner):** "
            + ", ".join(f"`{p}`" for p in sorted(rep["unreadable"])),
        ]
    lines += ["", "## What each attack saw", ""]
    for r in rep["rows"]:
        for m in modes:
            c = r[m]
            bits = []
            if c.get("landed"):
                bits.append("landed: " + ", ".join(c["landed"]))
            if c["honest_error_kinds"]:
                bits.append(
                    "honest errors: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(c["honest_error_kinds"].items()))
                )
            bits += c["notes"]
            if len(c.get("honest_shares") or []) > 1 and r["attack"] != CONTROL:
                bits.append(
                    "throughput per round: "
                    + ", ".join(_cell(x, "{:.0%}") for x in c["honest_shares"])
                )
            if c.get("server_alive") is False:
                bits.append("the server did not answer PING afterwards")
            if bits:
                lines.append(f"- {r['attack']}, `{m}`: " + "; ".join(bits))
    return "\n".join(lines) + "\n"


def write(run_dir: str) -> dict:
    rep = build(run_dir)
    with open(os.path.join(run_dir, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    with open(os.path.join(run_dir, "report.md"), "w") as f:
        f.write(markdown(rep))
    return rep
