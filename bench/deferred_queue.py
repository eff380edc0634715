#!/usr/bin/env python3
"""A large *deferred* queue, part of `make bench`: what a receiver's outage leaves behind.

N messages are written into a fresh spool with a delivery record each (one attempt made, the
next due in a day: the state after an outage), addressed to the domain whose MX is the sink.
Then, with the test world's DNS and a smtp-sink on that MX's address (the relay finds it by
validated MX and A lookups, as in bench.py's relay part):

- relay rate: smtp-source submits M new messages and the clock stops when each was handed to
  the sink, once with the deferred messages waiting and once with an empty queue (same
  daemon build, same sink); the ratio is the cost of the backlog (target: at least 0.9);
- idle CPU: the daemon's own CPU time (utime + stime) over a quiet interval with the N
  messages loaded, as % of one core (target: under 2 %);
- flush to first delivery: `tlsrelayctl queue flush`, then the time until the first deferred
  message has been delivered and removed (the queue total drops below N);
- drain: the time to deliver a backlog of D messages once the receiver is back — tlsrelay
  (records due in a day, then `queue flush`) against Postfix (queue filled with smtp-source
  while `defer_transports` holds delivery, then `postqueue -f` after that setting is removed),
  both relaying to the same smtp-sink. Messages per second.

Only loopback addresses are used. Needs the release build (make release) and the test world
(started and stopped here).
"""
import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "testworld"))
import bench  # noqa: E402
from large_queue import ALPHABET, queue_id  # noqa: E402


def write_deferred_spool(state, count, size, domain, due_in=86400):
    """`count` queue files to sink@`domain`, each with a record saying one attempt failed with a
    4xx and the next is due in `due_in` seconds."""
    rnd = random.Random(2)
    queue, records = state / "spool" / "queue", state / "spool" / "state"
    for c in ALPHABET:
        (queue / c).mkdir(parents=True, exist_ok=True)
        (records / c).mkdir(parents=True, exist_ok=True)
    content = b"Received: from bench ([127.0.0.1])\r\n\tby bench (tlsrelay) with ESMTP id X\r\nSubject: x\r\n\r\n" + b"x" * size + b"\r\n"
    now = time.time()
    base = int(now * 1e6) - count - 10_000_000
    for n in range(count):
        qid = queue_id(base + n, rnd)
        envelope = {"version": 1, "queueID": qid, "arrivalTime": now - 3600, "clientAddress": "127.0.0.1", "heloName": "bench",
                    "size": len(content),
                    "transaction": {"sender": {"localPart": "bench", "domain": "example.org"}, "parameters": {"smtputf8": False},
                                    "recipients": [{"mailbox": {"localPart": "sink", "domain": domain}}]}}
        env = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
        footer = b"TLSRQ1 " + b"%016x" % len(content) + b" " + b"%08x" % len(env)
        (queue / qid[-1] / qid).write_bytes(content + env + footer)
        record = {"queueID": qid, "attempts": 1, "nextAttempt": now + due_in, "held": False,
                  "recipients": [{"status": "pending", "lastStatusCode": "4.4.1", "lastReason": "bench: receiver down"}]}
        (records / qid[-1] / qid).write_text(json.dumps(record))


def status(server):
    ctl = bench.TLSRELAYD.parent / "tlsrelayctl"
    out = subprocess.run([str(ctl), "--config", str(server.config), "status", "--json"], capture_output=True, timeout=60)
    return json.loads(out.stdout)["queue"] if out.returncode == 0 else None


def wait_total(server, predicate, timeout, interval=0.01):
    """Polls the daemon's queue counts until `predicate(total)`; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        queue = status(server)
        if queue is not None and predicate(queue["total"]):
            return time.monotonic() - t0
        time.sleep(interval)
    raise SystemExit(f"{server.name}: queue condition not reached within {timeout} s")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay_rate(server, messages, size, domain, waiting):
    """M new messages through smtp-source; seconds until the queue is back to `waiting`."""
    subprocess.run(["sync"])
    t0 = time.monotonic()
    subprocess.run(["smtp-source", "-s", "10", "-m", str(messages), "-l", str(size),
                    "-f", "bench@example.org", "-t", f"sink@{domain}", "-M", "bench.example.org",
                    f"127.0.0.1:{server.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wait_total(server, lambda total: total <= waiting, timeout=600, interval=0.05)
    return messages / (time.monotonic() - t0)


def start_deferred(base, world, tag, count, domain, args):
    """A relay started on a spool of `count` deferred messages, returned once all are loaded."""
    server = bench.TLSRelay(base, relay_world=world, tag=tag)
    write_deferred_spool(server.base / "state", count, args.queued_size, domain)
    subprocess.run(["sync"])
    server.start(timeout=600)
    try:
        wait_total(server, lambda total: total >= count, timeout=900, interval=0.5)
    except BaseException:
        server.stop()
        raise
    return server


def flush(server):
    """`tlsrelayctl queue flush`: every deferred message due now."""
    ctl = bench.TLSRELAYD.parent / "tlsrelayctl"
    subprocess.run([str(ctl), "--config", str(server.config), "queue", "flush"], check=True, capture_output=True, timeout=120)


def tlsrelay_figures(base, world, domain, args):
    figures = {}
    # Empty queue first, then the same with N deferred messages loaded.
    empty = bench.TLSRelay(base, relay_world=world, tag="empty")
    empty.start()
    try:
        relay_rate(empty, max(300, args.messages // 10), args.size, domain, 0)     # warm-up
        figures["empty"] = relay_rate(empty, args.messages, args.size, domain, 0)
    finally:
        empty.stop()
    loaded = start_deferred(base, world, "deferred", args.deferred, domain, args)
    try:
        time.sleep(5)                                    # the scan's tail and page cache settle
        pid = loaded.pid()
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        figures["idle"] = (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
        figures["pss"] = bench.pss_kib([pid]) / 1024
        relay_rate(loaded, max(300, args.messages // 10), args.size, domain, args.deferred)   # warm-up
        figures["loaded"] = relay_rate(loaded, args.messages, args.size, domain, args.deferred)
        t0 = time.monotonic()
        flush(loaded)
        figures["flush"] = (time.monotonic() - t0) + wait_total(loaded, lambda total: total < args.deferred, timeout=600)
    finally:
        loaded.stop()
    # Drain of a backlog of D once the receiver is back.
    drain = start_deferred(base, world, "drain", args.drain, domain, args)
    try:
        t0 = time.monotonic()
        flush(drain)
        wait_total(drain, lambda total: total == 0, timeout=3600, interval=0.5)
        figures["drain"] = args.drain / (time.monotonic() - t0)
    finally:
        drain.stop()
    return figures


def postfix_drain(base, address, args):
    """Postfix: D messages queued while delivery is deferred, then released to the sink."""
    server = bench.Postfix(base, relay_to=address)
    main = server.conf / "main.cf"
    main.write_text(main.read_text() + "defer_transports = smtp relay\n")
    server.start()
    try:
        subprocess.run(["smtp-source", "-s", "20", "-m", str(args.drain), "-l", str(args.queued_size),
                        "-f", "bench@example.org", "-t", "sink@example.net", "-M", "bench.example.org",
                        f"127.0.0.1:{server.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and server.queued() < args.drain:
            time.sleep(1)
        main.write_text(main.read_text().replace("defer_transports = smtp relay\n", ""))
        server.postfix("reload")
        subprocess.run(["sync"])
        t0 = time.monotonic()
        subprocess.run(["postqueue", "-c", str(server.conf), "-f"], capture_output=True, timeout=120)
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and server.queued() > 0:
            time.sleep(0.5)
        if server.queued() > 0:
            raise SystemExit("Postfix did not drain its queue within an hour")
        return args.drain / (time.monotonic() - t0)
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deferred", type=int, default=1_000_000, help="deferred messages waiting")
    parser.add_argument("--drain", type=int, default=100_000, help="backlog drained once the receiver is back")
    parser.add_argument("--queued-size", type=int, default=512, help="bytes of content of each queued message")
    parser.add_argument("--messages", type=int, default=5000, help="messages relayed in a rate round")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--binary", default=str(bench.TLSRELAYD))
    args = parser.parse_args()
    bench.TLSRELAYD = Path(args.binary)
    if not bench.TLSRELAYD.exists():
        raise SystemExit(f"{bench.TLSRELAYD} missing: run make release first")
    from worldlib import World
    print(f"# deferred queue on {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
          f"{args.deferred:,} deferred, {args.messages} messages x {args.size} bytes relayed in 10 sessions, "
          f"a backlog of {args.drain:,} drained", flush=True)
    base = Path(tempfile.mkdtemp(prefix="tlsrelay-deferred-"))
    os.chmod(base, 0o755)
    world = World.up(None, slot=None)
    sink = None
    try:
        plain = world.scenario("two-mx-first-down")
        address = next(h["address"] for h in plain["mx"] if h["preference"] == 10)
        sink = bench.PlainSink(address)
        sink.start()
        ours = tlsrelay_figures(base, world, plain["domain"], args)
        theirs = postfix_drain(base, address, args)
    finally:
        if sink:
            sink.stop()
        world.down()
        shutil.rmtree(base, ignore_errors=True)
    print()
    print("| figure | tlsrelay | target / Postfix |")
    print("|---|---:|---:|")
    print(f"| relay msg/s to smtp-sink, empty queue | {ours['empty']:.0f} | |")
    print(f"| relay msg/s to smtp-sink, {args.deferred:,} deferred waiting | {ours['loaded']:.0f} | |")
    print(f"| ratio (deferred waiting / empty) | {ours['loaded'] / ours['empty']:.2f} | target ≥ 0.90 |")
    print(f"| idle CPU with {args.deferred:,} deferred, % of one core | {ours['idle']:.2f} | target < 2 |")
    print(f"| PSS with {args.deferred:,} deferred, MiB | {ours['pss']:.1f} | target < 100 |")
    print(f"| `queue flush` to first delivery with {args.deferred:,} deferred, s | {ours['flush']:.2f} | |")
    print(f"| drain of {args.drain:,} once the receiver is back, msg/s | {ours['drain']:.0f} | Postfix {theirs:.0f} ({ours['drain'] / theirs:.2f}) |")


if __name__ == "__main__":
    main()
