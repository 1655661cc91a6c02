"""The attacks' mechanics against formatted regions with no server: what each can reach in
a view, what it writes where, and the host's watcher finding (or not) its markers."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from attackutil import (
    ATTACKER_PYTHON,
    make_region_dir,
    make_region_file,
    make_view,
    nobody,
    targets,
)

from attack import layout as L
from attack import watch
from attack.markers import Markers, canary, score
from attack.runner import run
from attack.view import open_view

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GROUPS = [2, 2]  # group 0: the honest client, group 1: the attacker
ATTACKER = ["header", "client-1", "server-1"]


def _put_canary_in_response_ring(region_file: str, base: int, seg: L.Segment, value: bytes) -> None:
    """A response in channel 0's ring, as the server left it, and resp_head past it."""
    msg = L.encode_response(0, 7, value)
    with open(region_file, "r+b") as f:
        f.seek(base + L.CONTROL_SIZE)
        f.write(msg)
        f.seek(base + L.OFF_RESP_HEAD)
        f.write(struct.pack("<Q", len(msg)))


def test_view_maps_only_the_granted_segments(shm):
    region, view = shm("region"), shm("view")
    make_region_dir(region, GROUPS)
    make_view(view, region, ATTACKER)
    v = open_view(view)
    try:
        assert v.form == "dir" and set(v.mapped) == set(ATTACKER)
        assert v.missing == {"client-0": "not in the view", "server-0": "not in the view"}
        assert v.read("client-0", 0, 8) is None and not v.write("server-0", 0, b"x" * 8)
        assert v.write("client-1", 0, b"y" * 8) and v.read("client-1", 0, 8) == b"y" * 8
    finally:
        v.close()
    whole = shm("file")
    make_region_file(whole, GROUPS)
    v = open_view(whole)
    try:
        assert v.form == "file" and set(v.mapped) == {s.name for s in v.header.segments}
    finally:
        v.close()


def test_read_finds_responses_in_off_and_nothing_in_secdsm(shm, tmp_path):
    seed = "s3cret"
    _, value = canary(seed, 0)
    whole = shm("off")
    segs = make_region_file(whole, GROUPS)
    _put_canary_in_response_ring(whole, segs[2].offset, segs[2], value)
    region, view = shm("secdsm"), shm("view")
    make_region_dir(region, GROUPS)
    _put_canary_in_response_ring(os.path.join(region, "server-0"), 0, segs[2], value)
    make_view(view, region, ATTACKER)
    found = {}
    for mode, path, group in (("off", whole, 1), ("secdsm", view, None)):
        loot = tmp_path / f"{mode}.bin"
        res = run(path, mode, "n", "read", 0.2, str(tmp_path / f"{mode}.json"), str(loot), group)
        assert res["group"] == 1 and "error" not in res
        found[mode] = score(loot.read_bytes(), seed, 1)["bytes"]
        if mode == "secdsm":
            assert res["reach"]["server-0"].startswith("unmapped")
            assert "server-0: unmapped, nothing to read" in res["notes"]
    assert found == {"off": len(value), "secdsm": 0}


@pytest.mark.parametrize("attack", ["inject", "forge", "header", "claim", "own-server"])
def test_write_attacks_land_in_off_and_the_watcher_sees_them(shm, tmp_path, attack):
    """With no server the forged bytes stay: the host's check must find each attack's
    markers in the off region, and none in the secdsm region, where the attacker's view
    lacks the target (header and own-server: root maps them writable here; the one-host
    test runs the attacker as another user to model read-only grants)."""
    whole = shm("off")
    segs = make_region_file(whole, GROUPS)
    region, view = shm("secdsm"), shm("view")
    make_region_dir(region, GROUPS)
    make_view(view, region, ATTACKER)
    tg = {
        "regions": [targets("off", "r-off", segs, whole), targets("secdsm", "r-sec", segs, region)]
    }
    files = watch._Files()
    try:
        for mode, path in (("off", whole), ("secdsm", view)):
            markers = [m for m in Markers("nonce", mode).all() if m.attack == attack]
            reg = [r for r in tg["regions"] if r["security"] == mode][0]
            got: dict = {}
            t = threading.Thread(
                target=lambda got=got, path=path, mode=mode: got.update(
                    run(path, mode, "nonce", attack, 0.3, str(tmp_path / "a.json"), None, 1)
                )
            )
            t.start()
            seen: set = set()
            while t.is_alive():  # the host looks while the attack runs (claim cleans up after)
                seen |= watch.poll_once(files, reg, markers)
                time.sleep(0.01)
            t.join()
            res = got
            assert "error" not in res, res
            if mode == "off" or attack in ("header", "own-server"):
                assert res["attempted"] > 0 and seen, (mode, res)
            else:
                assert res["attempted"] == 0 and not seen, (mode, res)
    finally:
        files.close()


def test_watcher_counts_markers_per_phase(shm, tmp_path):
    region = shm("secdsm")
    segs = make_region_dir(region, GROUPS)
    tg = {"regions": [targets("secdsm", "r", segs, region)]}
    phase, stop = tmp_path / "phase", tmp_path / "stop"
    out: dict = {}
    t = threading.Thread(
        target=lambda: out.update(watch.watch(tg, "n", str(phase), str(stop), 30, 0.01))
    )
    t.start()
    try:
        phase.write_text("secdsm claim\n")
        time.sleep(0.1)
        token = Markers("n", "secdsm").raw("claim-token")
        with open(os.path.join(region, "client-0"), "r+b") as f:
            f.write(token)
        time.sleep(0.1)
        phase.write_text("secdsm header\n")
        time.sleep(0.1)
        epoch = Markers("n", "secdsm").raw("epoch")
        with open(os.path.join(region, "header"), "r+b") as f:
            f.seek(L.OFF_SERVER_EPOCH)
            f.write(epoch)
        time.sleep(0.1)
    finally:
        stop.write_text("")
        t.join(30)
    claim, header = out["phases"]["secdsm/claim"], out["phases"]["secdsm/header"]
    assert claim["polls"] > 0 and claim["markers"]["claim_token"] > 0
    assert header["markers"]["server_epoch"] > 0 and header["markers"]["server_heartbeat"] == 0
    # The lab's form of the targets: .lab/lab.json's regions[].segments[].
    lab = {
        "regions": [
            {
                "name": "cxl0",
                "security": "secdsm",
                "segments": [
                    {
                        "name": s.name,
                        "kind": L.KIND_NAMES[s.kind],
                        "offset": s.offset,
                        "span": s.span,
                        "path": os.path.join(region, s.name),
                    }
                    for s in segs
                ],
            }
        ]
    }
    assert watch.targets_from_lab(lab) == tg | {"regions": [dict(tg["regions"][0], name="cxl0")]}


@pytest.mark.skipif(
    nobody() is None,
    reason="needs root, the user nobody and an interpreter "
    "nobody may run, to run the attacker as another user (file permissions play "
    "the hypervisor's read-only grants)",
)
def test_read_only_grants_hold_for_an_attacker_of_another_user(shm, tmp_path):
    region, view = shm("secdsm"), shm("view")
    make_region_dir(region, GROUPS)
    user = nobody()
    os.chmod(region, 0o755)
    for name, mode in (
        ("header", 0o644),
        ("server-1", 0o644),
        ("client-0", 0o600),
        ("server-0", 0o600),
        ("client-1", 0o600),
    ):
        os.chmod(os.path.join(region, name), mode)
    os.chown(os.path.join(region, "client-1"), user.pw_uid, user.pw_gid)
    make_view(view, region, ATTACKER)
    out = Path(shm("out"))  # pytest's tmp_path is private to root
    out.mkdir()
    os.chown(out, user.pw_uid, -1)
    before = Path(region, "header").read_bytes()
    for attack in ("header", "own-server", "probe"):
        subprocess.run(
            [
                ATTACKER_PYTHON,
                "-m",
                "attack",
                "run",
                "--view",
                view,
                "--mode",
                "secdsm",
                "--nonce",
                "n",
                "--attack",
                attack,
                "--seconds",
                "0.1",
                "--out",
                str(out / f"{attack}.json"),
                "--loot",
                str(out / f"{attack}.bin"),
                "--views-dir",
                "/nonexistent",
            ],
            cwd=REPO,
            check=True,
            timeout=60,
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            env=dict(os.environ, PYTHONPATH=REPO),
            capture_output=True,
        )
    res = {
        a: json.loads((out / f"{a}.json").read_text()) for a in ("header", "own-server", "probe")
    }
    assert res["header"]["reach"]["header"] == "ro" and res["header"]["attempted"] == 0
    assert res["own-server"]["reach"]["server-1"] == "ro" and res["own-server"]["attempted"] == 0
    neighbours = res["probe"]["details"]["neighbours"]
    assert neighbours[os.path.join(region, "client-0")].startswith("open refused")
    assert res["probe"]["loot_bytes"] == 0
    assert Path(region, "header").read_bytes() == before
