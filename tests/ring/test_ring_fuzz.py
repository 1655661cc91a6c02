"""A bounded run of the libFuzzer harness ring/fuzz/fuzz_decoder.c (framing + decoder);
`make fuzz FUZZ_SECONDS=N` runs it for longer."""

from __future__ import annotations

import struct
import subprocess

import pytest
from rawpeer import OP_CMD, OP_DEL, OP_GET, OP_PING, OP_SET, encode_request
from ringharness import BUILD

pytestmark = pytest.mark.timeout(300)

FUZZER = BUILD / "fuzz-decoder"


def test_fuzz_decoder_bounded(tmp_path):
    if not FUZZER.exists():
        pytest.skip("build/fuzz-decoder is not built (make build)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = [
        encode_request(OP_GET, [b"key"], 1),
        encode_request(OP_SET, [b"k", b"value"], 2, flags=1, ttl_ms=500),
        encode_request(OP_DEL, [b"a", b"b"], 3) + encode_request(OP_PING, [], 4),
        encode_request(OP_CMD, [b"HSET", b"h", b"f", b"v"], 5),
    ]
    for i, stream in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(struct.pack("<Q", len(stream)) + stream)
    proc = subprocess.run([str(FUZZER), "-runs=20000", "-max_len=9000", "-seed=1",
                           str(corpus)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done 20000 runs" in proc.stderr
