"""``cxl-ring``: inspect a region, run single commands, benchmark, or serve the RESP proxy.

Exit codes (the same as build/cxl-ring-bench): 0 ok; 1 usage; 2 cannot open the region, it
is not formatted, or a segment this peer needs is not granted (mapped, writable); 3 layout
mismatch; 4 server not running, gone or restarted; 5 timeout; 6 protocol error or an error
reply; 7 no free channel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

from . import __version__
from . import protocol as P
from ._atomic import CAS_BACKEND
from .channel import SPEEDUPS
from .exceptions import (
    CxlRingError,
    LayoutMismatchError,
    NoChannelError,
    ProtocolError,
    RegionError,
    ResponseError,
    RingTimeoutError,
    ServerGoneError,
)

EXIT_OK, EXIT_USAGE, EXIT_REGION, EXIT_LAYOUT, EXIT_SERVER, EXIT_TIMEOUT, EXIT_PROTOCOL = range(7)
EXIT_NO_CHANNEL = 7

EPILOG = """\
The region path can also come from $CXL_RING_PATH.
exit codes: 0 ok, 1 usage, 2 cannot open the region / not formatted / a needed segment
not granted, 3 layout mismatch,
4 server not running / gone / restarted, 5 timeout, 6 protocol error or error reply,
7 no free channel.

examples:
  cxl-ring info --path /dev/cxl/cxl0
  cxl-ring get --path /dev/cxl/cxl0 greeting
  cxl-ring set --path /dev/shm/cxl0 greeting hello --ex 60
  cxl-ring cmd --path /dev/shm/cxl0 HSET user:1 name ada
  cxl-ring bench --path /dev/shm/cxl0 --bench 200000 --pipeline --max-inflight 1024
  cxl-ring proxy --path /dev/cxl/cxl0 --listen 127.0.0.1:6380
"""


def _exit_code(e: BaseException) -> int:
    if isinstance(e, LayoutMismatchError):
        return EXIT_LAYOUT
    if isinstance(e, RegionError):
        return EXIT_REGION
    if isinstance(e, ServerGoneError):
        return EXIT_SERVER
    if isinstance(e, RingTimeoutError):
        return EXIT_TIMEOUT
    if isinstance(e, NoChannelError):
        return EXIT_NO_CHANNEL
    return EXIT_PROTOCOL


def _size(text: str) -> int:
    text = text.strip().lower()
    for suffix, mult in (("gib", 1 << 30), ("mib", 1 << 20), ("kib", 1 << 10), ("g", 1 << 30),
                         ("m", 1 << 20), ("k", 1 << 10), ("b", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(text, 0)


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    d = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--path", help="the region: a directory of segment files (Sec-DSM: "
                   "/dev/cxl/REGION, /dev/shm/LAB-REGION) or one file: /dev/shm/NAME, "
                   "/dev/uioN[@MAP] or a PCI resourceN file (default $CXL_RING_PATH)", **d)
    p.add_argument("--map-size", type=_size, metavar="BYTES",
                   help="bytes to map of a region file (default: discovered from the "
                        "file/uio/BAR size)", **d)
    p.add_argument("--doorbell", metavar="PATH",
                   help="the doorbell to ring a server that sleeps behind one (default "
                        "$CXL_RING_DOORBELL, else /dev/cxl/doorbell when it exists)", **d)
    p.add_argument("--layout", choices=("auto", "v5", "v2"),
                   help="protocol layout (default auto: from the region's magic)", **d)
    p.add_argument("--timeout", type=float, metavar="SEC",
                   help="bound on every wait (default 5)", **d)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="cxl-ring", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Talk to the cxl_ring Redis driver through a shared-memory region.",
        epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"cxl-ring {__version__}")
    _common(ap, top=True)
    ap.set_defaults(layout="auto", timeout=5.0, map_size=None, path=None, doorbell=None)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p, top=False)
        return p

    p = cmd("info", "region header, channels, server epoch and liveness")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-wait", action="store_true",
                   help="do not watch the heartbeat for liveness (instant; else up to "
                        "server_dead_after, usually one heartbeat interval)")
    p = cmd("get", "GET a key (prints the value, or (nil))")
    p.add_argument("key")
    p = cmd("set", "SET a key")
    p.add_argument("key")
    p.add_argument("value")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ex", type=int, metavar="SEC", help="expire after SEC seconds")
    g.add_argument("--px", type=int, metavar="MS", help="expire after MS milliseconds")
    p = cmd("del", "DEL keys (prints how many were removed)")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p = cmd("cmd", "any Redis command, as CMD over the ring (prints the reply)")
    p.add_argument("argv", nargs="+", metavar="ARG")
    p = cmd("ping", "PING over the ring (prints the round-trip time)")
    p = cmd("subscribe", "SUBSCRIBE over the ring and print each message as it comes, one "
            "line each: type, channel (pattern and channel), data (docs/ring-protocol.md 15)")
    p.add_argument("names", nargs="+", metavar="NAME")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--pattern", action="store_true", help="PSUBSCRIBE: the names are "
                      "patterns")
    kind.add_argument("--shard", action="store_true", help="SSUBSCRIBE: shard channels")
    p.add_argument("--count", type=int, metavar="N",
                   help="exit after N messages (default: run until --idle or Ctrl-C)")
    p.add_argument("--idle", type=float, default=0.0, metavar="SEC",
                   help="exit after SEC seconds without a message (default 0: never)")

    p = cmd("bench", "benchmark the ring (the C bench's knobs)")
    p.add_argument("--bench", type=int, default=100_000, metavar="N",
                   help="requests per phase, all threads together (default 100000)")
    p.add_argument("--duration", type=float, metavar="SEC",
                   help="run each phase for SEC seconds instead of N requests")
    p.add_argument("--op", default="set,get", metavar="LIST",
                   help="phases, comma-separated: set, get, mix (default set,get)")
    p.add_argument("--get-ratio", type=float, default=0.9, metavar="R",
                   help="share of GETs in a mix phase (default 0.9)")
    p.add_argument("--threads", type=int, default=1, metavar="T",
                   help="threads, each on its own channel (default 1)")
    p.add_argument("--pipeline", action="store_true",
                   help="pipelines of --max-inflight requests (default: one round trip each)")
    p.add_argument("--max-inflight", type=int, default=1024, metavar="M",
                   help="pipeline size per thread (default 1024)")
    p.add_argument("--value-size", "-d", type=int, default=64, metavar="BYTES",
                   help="SET value size (default 64)")
    p.add_argument("--keyspace", "-r", type=int, default=100_000, metavar="K",
                   help="keys key:000000000000 .. K-1 (default 100000)")
    p.add_argument("--no-prefill", action="store_true", help="no SET of every key before GETs")
    p.add_argument("--json", metavar="FILE", help="write a JSON summary (- for stdout)")
    p.add_argument("--csv", metavar="FILE", help="append rows with the PoC's CSV header")
    p.add_argument("--label", default="py_ring", help="the CSV/JSON label (default py_ring)")
    p.add_argument("--quiet", action="store_true", help="no table")

    p = cmd("proxy", "serve RESP2 on a TCP port and forward every command over the ring")
    p.add_argument("--listen", default="127.0.0.1:6380", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:6380)")
    p.add_argument("--verbose", "-v", action="store_true", help="log connections and errors")
    return ap


# ---- info ------------------------------------------------------------------------------------


def _info(path: str, map_size: int | None, watch: bool) -> dict[str, Any]:
    from .region import Region

    with Region(path, map_size, writable=False) as region:
        layout = region.layout()
        if layout == "v2":
            rings = P.parse_v2_header(bytes(region.buf[: 24 + 32 * P.V2_MAX_RINGS]), region.size)
            out: dict[str, Any] = {"path": path, "layout": "v2", "mapped_size": region.size,
                                   "rings": []}
            for i, r in enumerate(rings):
                u64 = region.u64
                out["rings"].append({
                    "ring": i, "req_off": r.req_off, "slots": r.slots,
                    "req_head": u64[r.req_off // 8], "req_tail": u64[r.req_off // 8 + 1],
                    "resp_head": u64[r.resp_off // 8], "resp_tail": u64[r.resp_off // 8 + 1]})
            return out
        h = region.header()
        epoch, hb, state, pid = region.liveness()
        alive = None
        if watch and state == P.SERVER_RUNNING:
            # "Not moving" means what it means to a client (section 7): still after
            # server_dead_after. A live server answers within one heartbeat interval.
            deadline = time.monotonic() + h.server_dead_after
            alive = False
            while time.monotonic() < deadline:
                if region.liveness()[1] != hb:
                    alive = True
                    break
                time.sleep(0.005)
        out = {"path": path, "layout": "v5", "form": region.form, "mapped_size": region.size,
               "header": {k: getattr(h, k) for k in h.__dataclass_fields__ if k != "segments"},
               "segments": [{"name": seg.name, "offset": seg.offset, "size": seg.size,
                             "span": seg.span, "first_channel": seg.first_channel,
                             "channel_count": seg.channel_count,
                             "access": m.access if m is not None else "none"}
                            for seg, m in region.segments()],
               "server": {"epoch": f"{epoch:#018x}", "heartbeat": hb,
                          "state": P.SERVER_STATE_NAMES.get(state, str(state)), "pid": pid,
                          "heartbeat_moving": alive},
               "cas_backend": CAS_BACKEND, "speedups": SPEEDUPS, "channels": []}
        for c in range(h.channel_count):
            # Only the sections mapped here: under Sec-DSM a peer sees its own group's.
            cs, ss = h.client_section(c), h.server_section(c)
            mine, server = region.channel_access(h, c)
            row: dict[str, Any] = {"channel": c, "group": h.group_of(c), "mapped": bool(
                mine and server)}
            if mine:
                claim, chb, cpid = P.CLIENT_CHANNEL_STATE.unpack_from(
                    region.read(cs, P.CLIENT_CHANNEL_STATE.size))
                row.update(claim_token=f"{claim:#x}", client_pid=cpid, client_heartbeat=chb,
                           req_head=region.load_u64(cs + P.OFF_REQ_HEAD),
                           resp_tail=region.load_u64(cs + P.OFF_RESP_TAIL))
            if server:
                ack, dead, cstate, lerr = P.SERVER_CHANNEL_STATE.unpack_from(
                    region.read(ss, P.SERVER_CHANNEL_STATE.size))
                row.update(state=P.CHAN_STATE_NAMES.get(cstate, str(cstate)),
                           ack_token=f"{ack:#x}", dead_token=f"{dead:#x}",
                           last_error=P.STATUS_NAMES.get(lerr, str(lerr)) if lerr else "",
                           req_tail=region.load_u64(ss + P.OFF_REQ_TAIL),
                           resp_head=region.load_u64(ss + P.OFF_RESP_HEAD))
            out["channels"].append(row)
        return out


def _print_info(info: dict[str, Any]) -> None:
    print(f"region   {info['path']}  layout {info['layout']}  mapped {info['mapped_size']} B")
    if info["layout"] == "v2":
        for r in info["rings"]:
            print(f"ring {r['ring']}: {r['slots']} slots  req {r['req_tail']}..{r['req_head']}"
                  f"  resp {r['resp_tail']}..{r['resp_head']}")
        return
    h, s = info["header"], info["server"]
    moving = {True: "yes", False: "NO (server gone?)", None: "not checked"}[s["heartbeat_moving"]]
    print(f"server   state {s['state']}  pid {s['pid']}  epoch {s['epoch']}  "
          f"heartbeat {s['heartbeat']} (moving: {moving})")
    print(f"geometry {h['channel_count']} channels  req ring {h['req_ring_size']} B  "
          f"resp ring {h['resp_ring_size']} B  max value {h['max_value_size']} B  "
          f"max msg {h['max_msg_size']} B  region {h['region_size']} B")
    print(f"timing   heartbeat {h['heartbeat_interval_ms']} ms  client lease "
          f"{h['client_lease_ms']} ms  features {h['feature_flags']:#x}  "
          f"CAS: {info['cas_backend']}  C core: {'yes' if info['speedups'] else 'no'}")
    print(f"segments {info['form']}: " + "  ".join(
        f"{g['name']} {g['access']}" for g in info["segments"]))
    print(f"{'ch':>3} {'grp':>3} {'state':<11} {'claim_token':>18} {'ack':>4} {'pid':>7} "
          f"{'req in flight':>13} {'resp unread':>11} {'last_error':<14}")
    for c in info["channels"]:
        if not c["mapped"]:
            print(f"{c['channel']:>3} {c['group']:>3} (not mapped here)")
            continue
        acked = "yes" if c["ack_token"] == c["claim_token"] and c["ack_token"] != "0x0" else "-"
        print(f"{c['channel']:>3} {c['group']:>3} {c['state']:<11} {c['claim_token']:>18} "
              f"{acked:>4} {c['client_pid']:>7} "
              f"{(c['req_head'] - c['req_tail']) % (1 << 64):>13} "
              f"{(c['resp_head'] - c['resp_tail']) % (1 << 64):>11} {c['last_error']:<14}")


# ---- main ------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "(nil)"
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return repr(value)
    if isinstance(value, list):
        return "\n".join(f"{i + 1}) {_show(v)}" for i, v in enumerate(value)) or "(empty array)"
    if value is True:
        return "OK"
    if isinstance(value, int):
        return f"(integer) {value}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    from .client import RingClient

    path = args.path or os.environ.get("CXL_RING_PATH")
    if not path:
        print("cxl-ring: no region: give --path or set CXL_RING_PATH", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "info":
        info = _info(path, args.map_size, watch=not args.no_wait)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_info(info)
        alive = info.get("server", {}).get("heartbeat_moving", True)
        return EXIT_OK if alive is not False and info.get("server", {}).get(
            "state", "RUNNING") == "RUNNING" else EXIT_SERVER
    if args.command == "bench":
        from . import bench

        cfg = bench.BenchConfig(
            path=path, ops=tuple(o.strip() for o in args.op.split(",") if o.strip()),
            requests=args.bench, duration=args.duration, get_ratio=args.get_ratio,
            threads=max(1, args.threads), pipeline=args.pipeline,
            max_inflight=max(1, args.max_inflight), value_size=args.value_size,
            keyspace=max(1, args.keyspace), prefill=not args.no_prefill, timeout=args.timeout,
            map_size=args.map_size, layout=args.layout, label=args.label)
        bad = [o for o in cfg.ops if o not in ("set", "get", "mix")]
        if bad:
            print(f"cxl-ring bench: unknown phase {bad[0]!r} (set, get, mix)", file=sys.stderr)
            return EXIT_USAGE
        results = bench.run(cfg)
        if not args.quiet:
            print(bench.format_table(cfg, results))
        if args.json:
            bench.write_json(cfg, results, args.json)
        if args.csv:
            bench.append_csv(cfg, results, args.csv)
        return EXIT_PROTOCOL if any(r.errors for r in results) else EXIT_OK
    if args.command == "proxy":
        from .proxy import serve

        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="cxl-ring proxy: %(message)s")

        def ready(addr: tuple) -> None:
            print(f"cxl-ring proxy: listening on {addr[0]}:{addr[1]}, ring {path}", flush=True)

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(path, args.listen, args.map_size, args.timeout, ready,
                              args.doorbell))
        return EXIT_OK

    with RingClient(path, map_size=args.map_size, timeout=args.timeout,
                    layout=args.layout, doorbell=args.doorbell) as r:
        if args.command == "get":
            print(_show(r.get(args.key)))
        elif args.command == "set":
            r.set(args.key, args.value, ex=args.ex, px=args.px)
            print("OK")
        elif args.command == "del":
            print(_show(r.delete(*args.keys)))
        elif args.command == "cmd":
            print(_show(r.execute_command(*args.argv)))
        elif args.command == "ping":
            r.ping()
            t0 = time.perf_counter()
            r.ping()
            print(f"PONG ({(time.perf_counter() - t0) * 1e6:.1f} us)")
        elif args.command == "subscribe":
            return _subscribe(r, args)
    return EXIT_OK


def _subscribe(r: Any, args: argparse.Namespace) -> int:
    """Print the confirmations, then each message: "message CHANNEL DATA", "pmessage PATTERN
    CHANNEL DATA", "smessage CHANNEL DATA"; flushed line by line (a pipe sees each at once)."""
    with r.pubsub() as p:
        (p.psubscribe if args.pattern else p.ssubscribe if args.shard else p.subscribe)(
            *args.names)
        seen, last = 0, time.monotonic()
        while args.count is None or seen < args.count:
            m = p.get_message(timeout=0.5)
            if m is None:
                if args.idle and time.monotonic() - last >= args.idle:
                    return EXIT_TIMEOUT
                continue
            last = time.monotonic()
            words = [m["type"]] + ([m["pattern"]] if m["pattern"] is not None else []) + [
                m["channel"], m["data"]]
            print(" ".join(_show(w) if not isinstance(w, (str, int)) else str(w)
                           for w in words), flush=True)
            if m["type"] in ("message", "pmessage", "smessage"):
                seen += 1
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ResponseError as e:
        print(f"(error) {e}", file=sys.stderr)
        return EXIT_PROTOCOL
    except ProtocolError as e:
        print(f"cxl-ring: protocol error: {e}", file=sys.stderr)
        return EXIT_PROTOCOL
    except CxlRingError as e:
        print(f"cxl-ring: {e}", file=sys.stderr)
        return _exit_code(e)
    except BrokenPipeError:  # `cxl-ring info | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit-time flush
        return EXIT_OK
    except OSError as e:
        print(f"cxl-ring: {e}", file=sys.stderr)
        return EXIT_REGION
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
