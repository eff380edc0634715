#!/usr/bin/env python3
"""Large queues, part of `make bench`: start-up recovery time and the cost of accepting mail
with 1,000, 100,000 and 1,000,000 messages already queued (delivery held).

tlsrelayd: N valid queue files (the format of Sources/RelayQueue/QueueFileFormat.swift) are
written into a fresh spool; the start-up time is from exec to the first SMTP greeting (the
spool is recovered, every file validated, before the listener is bound); then smtp-source
sends M more messages and the accept rate, CPU per message and peak memory are taken as in
bench.py.

Postfix, side by side for the sizes up to --postfix-max (default 100,000): its queue is filled
through SMTP with smtp-source (its internal queue file format is not something to write by
hand), the messages are put on hold (postsuper -h ALL), then the same M messages are sent.
Filling it with 1,000,000 would take most of an hour at its accept rate, so that size is
measured for tlsrelayd only.
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
import bench  # noqa: E402

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def queue_id(micros, rnd):
    chars = []
    value = micros & ((1 << 60) - 1)
    for _ in range(12):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    head = "".join(reversed(chars))
    tail = "".join(ALPHABET[rnd.randrange(32)] for _ in range(4))
    return head + tail


def write_spool(state, count, size):
    rnd = random.Random(1)
    queue = state / "spool" / "queue"
    for c in ALPHABET:
        (queue / c).mkdir(parents=True, exist_ok=True)
    content = b"Received: from bench ([127.0.0.1])\r\n\tby bench (tlsrelay) with ESMTP id X\r\nSubject: x\r\n\r\n" + b"x" * size + b"\r\n"
    base = int(time.time() * 1e6)
    for n in range(count):
        qid = queue_id(base + n, rnd)
        envelope = {"version": 1, "queueID": qid, "arrivalTime": time.time(), "clientAddress": "127.0.0.1", "heloName": "bench",
                    "size": len(content),
                    "transaction": {"sender": {"localPart": "a", "domain": "example.org"}, "parameters": {"smtputf8": False},
                                    "recipients": [{"mailbox": {"localPart": "b", "domain": "example.net"}}]}}
        env = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
        footer = b"TLSRQ1 " + b"%016x" % len(content) + b" " + b"%08x" % len(env)
        (queue / qid[-1] / qid).write_bytes(content + env + footer)


def wait_loaded(server, queued, timeout=900):
    """Waits until the daemon's queue counts (tlsrelayctl status) hold every queued message."""
    ctl = bench.TLSRELAYD.parent / "tlsrelayctl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([str(ctl), "--config", str(server.config), "status", "--json"], capture_output=True)
        if out.returncode == 0 and json.loads(out.stdout)["queue"]["total"] >= queued:
            return
        time.sleep(0.1)
    raise SystemExit(f"the queue of {queued} was not loaded within {timeout} s")


def tlsrelay_figures(base, queued, args):
    """(start-up s, queue loaded s, accept msg/s, CPU ms/msg, peak PSS MiB) with `queued` messages
    in the spool. Start-up is exec to the first greeting (the listener is up before the queue is
    scanned); loaded is exec to every message scheduled."""
    server = bench.TLSRelay(base)
    write_spool(server.base / "state", queued, args.queued_size)
    subprocess.run(["sync"])
    t0 = time.monotonic()
    server.start(timeout=600)
    startup = time.monotonic() - t0
    try:
        wait_loaded(server, queued)
        loaded = time.monotonic() - t0
        rate, cpu, pss = bench.accept_round(server, args.sessions, args.messages, args.size, reset=False)
    finally:
        server.stop()
    return startup, loaded, rate, cpu, pss


def postfix_figures(base, queued, args):
    """(accept msg/s, CPU ms/msg, peak PSS MiB) with `queued` messages on hold in Postfix's queue."""
    server = bench.Postfix(base)
    server.start()
    try:
        subprocess.run(["smtp-source", "-s", "20", "-m", str(queued), "-l", str(args.queued_size),
                        "-f", "fill@example.org", "-t", "sink@example.net", "-M", "bench.example.org",
                        f"127.0.0.1:{server.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            subprocess.run(["postsuper", "-c", str(server.conf), "-h", "ALL"], capture_output=True)
            if server.queued() == 0:
                break
            time.sleep(1)
        subprocess.run(["sync"])
        return bench.accept_round(server, args.sessions, args.messages, args.size, reset=False)
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queued", default="1000,100000,1000000", help="queue sizes before the accept round")
    parser.add_argument("--postfix-max", type=int, default=100_000, help="largest queue size also measured for Postfix")
    parser.add_argument("--queued-size", type=int, default=512, help="bytes of content of each queued message")
    parser.add_argument("--messages", type=int, default=5000, help="messages sent in the accept round")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--binary", default=str(bench.TLSRELAYD))
    args = parser.parse_args()
    bench.TLSRELAYD = Path(args.binary)
    if not bench.TLSRELAYD.exists():
        raise SystemExit(f"{bench.TLSRELAYD} missing: run make release first")
    print(f"# large queues on {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
          f"{args.messages} messages x {args.size} bytes in {args.sessions} sessions, delivery held")
    rows = []
    for queued in [int(x) for x in args.queued.split(",")]:
        base = Path(tempfile.mkdtemp(prefix="tlsrelay-largequeue-"))
        os.chmod(base, 0o755)
        try:
            startup, loaded, rate, cpu, pss = tlsrelay_figures(base, queued, args)
            theirs = postfix_figures(base, queued, args) if queued <= args.postfix_max else None
        finally:
            shutil.rmtree(base, ignore_errors=True)
        rows.append((queued, startup, loaded, rate, cpu, pss, theirs))
        print(f"# {queued} queued: done", flush=True)
    print()
    print("| queued before | tlsrelay ready s | tlsrelay queue loaded s | tlsrelay msg/s | Postfix msg/s | tlsrelay / Postfix | tlsrelay CPU ms/msg | Postfix CPU ms/msg | tlsrelay PSS MiB | Postfix PSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for queued, startup, loaded, rate, cpu, pss, theirs in rows:
        if theirs:
            print(f"| {queued:,} | {startup:.2f} | {loaded:.2f} | {rate:.0f} | {theirs[0]:.0f} | {rate / theirs[0]:.2f} | {cpu:.2f} | {theirs[1]:.2f} | {pss:.1f} | {theirs[2]:.1f} |")
        else:
            print(f"| {queued:,} | {startup:.2f} | {loaded:.2f} | {rate:.0f} | — | — | {cpu:.2f} | — | {pss:.1f} | — |")


if __name__ == "__main__":
    main()
