#!/usr/bin/env python3
"""Start-up recovery time with a large queue: writes N valid queue files (the format of
Sources/RelayQueue/QueueFileFormat.swift) into a fresh spool, starts tlsrelayd with
delivery.hold = true, and measures the time from exec to the first SMTP greeting (the spool is
recovered — every file validated — before the listener is bound)."""
import argparse
import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--binary", default=str(ROOT / ".build" / "release" / "tlsrelayd"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tlsrelay-recovery-"))
    try:
        state = base / "state"
        t0 = time.monotonic()
        write_spool(state, args.messages, args.size)
        print(f"wrote {args.messages} queue files in {time.monotonic() - t0:.1f} s")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = base / "tlsrelay.toml"
        config.write_text(f'state_directory = "{state}"\nlog_level = "warning"\n[server]\nlisten = ["127.0.0.1:{port}"]\n[delivery]\nhold = true\n')
        subprocess.run(["sync"])
        t0 = time.monotonic()
        process = subprocess.Popen([args.binary, "--config", str(config)], stdout=subprocess.DEVNULL, stderr=open(base / "log", "wb"))
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    if c.recv(3) == b"220":
                        break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit((base / "log").read_text())
                time.sleep(0.01)
        elapsed = time.monotonic() - t0
        process.terminate()
        process.wait(timeout=60)
        print(f"| start-up with {args.messages} queued messages (recovered, validated) | {elapsed:.2f} s |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
