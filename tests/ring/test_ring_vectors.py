"""The shared protocol vectors (tests/vectors/messages.json) against the C request path:
ring/tests/vector_check.c runs cxl_frame_check and cxl_req_decode as the driver does."""

from __future__ import annotations

import json
import subprocess

import pytest
from ringharness import REPO

pytestmark = pytest.mark.timeout(120)

VECTORS = REPO / "tests" / "vectors" / "messages.json"
OPS = {"GET": 1, "SET": 2, "DEL": 3, "CMD": 4, "PING": 5}


@pytest.fixture(scope="module")
def vector_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "vector_check"
    subprocess.run(["cc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", f"-I{REPO / 'ring' / 'include'}",
                    "-o", str(out), str(REPO / "ring" / "tests" / "vector_check.c"),
                    str(REPO / "ring" / "src" / "ring.c")], check=True)
    return out


@pytest.fixture(scope="module")
def vectors():
    if not VECTORS.exists():
        pytest.skip("tests/vectors/messages.json is not there yet")
    return json.loads(VECTORS.read_text())


def run(vector_check, vectors, cases) -> dict[str, list[str]]:
    limits = vectors["limits"]
    stdin = "".join(f"{c['name']} {c['hex'] or '-'}"
                    + (f" {c['session_gen']}" if "session_gen" in c else "") + "\n"
                    for c in cases)
    out = subprocess.run([str(vector_check), str(limits["max_value_size"]),
                          str(limits["max_msg_size"])], input=stdin, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()}


def test_valid_requests_decode_to_their_fields(vector_check, vectors):
    got = run(vector_check, vectors, vectors["requests"])
    assert len(got) == len(vectors["requests"])
    for case in vectors["requests"]:
        fields = got[case["name"]]
        assert fields[0] == "OK", (case["name"], fields)
        op, flags, argc, rid, ttl = (int(x) for x in fields[1:6])
        assert op == OPS[case["op"]] and flags == case["flags"], case["name"]
        assert argc == case["argc"] and rid == case["id"], case["name"]
        assert ttl == case["ttl_ms"], case["name"]
        args = [] if fields[6] == "-" else [a[1:] for a in fields[6].split(",")]
        assert args == case["args_hex"], case["name"]


def test_malformed_requests_get_the_expected_verdict(vector_check, vectors):
    got = run(vector_check, vectors, vectors["malformed_requests"])
    for case in vectors["malformed_requests"]:
        assert got[case["name"]][0] == case["expect"], (case["name"], got[case["name"]])


def test_requests_of_another_session_are_stale(vector_check, vectors):
    """The driver's order: framing, then the session generation (section 4.3), then decoding."""
    got = run(vector_check, vectors, vectors["session_requests"])
    for case in vectors["session_requests"]:
        assert got[case["name"]][0] == case["expect"], (case["name"], got[case["name"]])


def test_session_id_vectors_decode_to_their_generation(vector_check, vectors):
    cases = [{"name": f"id{i}", "hex": c["hex"], "session_gen": c["gen"]}
             for i, c in enumerate(vectors["session_ids"])]
    got = run(vector_check, vectors, cases)
    for i, c in enumerate(vectors["session_ids"]):
        fields = got[f"id{i}"]
        assert fields[0] == "OK" and int(fields[4]) == c["id"], fields
