"""A message answered with 250 survives kill -9 and a full disk (RFC 5321 §6.1).

kill -9 rounds: clients send continuously; tlsrelayd is killed at seeded random instants and
restarted on the same spool. After each restart every acknowledged message is queued and
byte-identical, nothing unacknowledged counts as queued except messages whose final reply was
lost in the kill (the documented at-least-once window), no partial file survives recovery and
nothing is corrupt.
"""
import os
import random
import subprocess
import threading
import time

import pytest

from smtpclient import RawSMTP


def message_for(token):
    return (f"From: a@example.org\r\nTo: b@example.net\r\nSubject: {token}\r\nMessage-ID: <{token}@example.org>\r\n\r\n"
            + f"body of {token}\r\n" * 40).encode()


def strip_received(content):
    head, rest = content.split(b"\r\n", 1)
    assert head.startswith(b"Received: ")
    while rest[:1] == b"\t":
        rest = rest.split(b"\r\n", 1)[1]
    return rest


class Sender(threading.Thread):
    """Sends messages until the connection breaks; records acknowledged and in-flight tokens."""

    def __init__(self, port, name, acked, inflight):
        super().__init__(daemon=True)
        self.port, self.prefix, self.acked, self.inflight = port, name, acked, inflight

    def run(self):
        n = 0
        try:
            c = RawSMTP(self.port, timeout=5)
            c.code()
            c.command("EHLO crash.example.org")
            while True:
                n += 1
                token = f"{self.prefix}-{n}"
                assert c.command("MAIL FROM:<a@example.org>").startswith("250")
                assert c.command("RCPT TO:<b@example.net>").startswith("250")
                assert c.command("DATA").startswith("354")
                self.inflight.add(token)
                c.send(message_for(token) + b".\r\n")
                reply = c.code()
                if reply.startswith("250 2.0.0 Ok: queued as "):
                    self.acked[token] = reply.split()[-1]
                    self.inflight.discard(token)
        except (OSError, ConnectionError, AssertionError):
            return


def test_kill_9_loses_no_acknowledged_message(relay):
    rng = random.Random(20261129)
    acked, inflight = {}, set()
    for round_number in range(6):
        senders = [Sender(relay.port, f"r{round_number}s{i}", acked, inflight) for i in range(4)]
        for s in senders:
            s.start()
        time.sleep(rng.uniform(0.2, 0.8))
        relay.kill9()
        for s in senders:
            s.join(timeout=10)
        relay.start()
        queued = relay.queued()
        by_token = {}
        for queue_id, (envelope, content) in queued.items():
            subject = [l for l in content.split(b"\r\n") if l.startswith(b"Subject: ")][0][9:].decode()
            assert strip_received(content) == message_for(subject), f"message {queue_id} corrupted"
            assert envelope["queueID"] == queue_id
            by_token[subject] = queue_id
        missing = [t for t in acked if t not in by_token]
        assert not missing, f"round {round_number}: acknowledged messages lost: {missing[:5]}"
        for token, queue_id in acked.items():
            assert by_token[token] == queue_id
        unexpected = [t for t in by_token if t not in acked and t not in inflight]
        assert not unexpected, f"unacknowledged messages queued: {unexpected}"
        assert relay.temporary_files() == []
        assert not any((relay.state / "spool" / "corrupt").iterdir())
    assert len(acked) > 20, f"too few messages were acknowledged to prove anything ({len(acked)})"


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def send(port, body):
    c = RawSMTP(port)
    c.code()
    c.command("EHLO client.example.org")
    c.command("MAIL FROM:<a@example.org>")
    c.command("RCPT TO:<b@example.net>")
    assert c.command("DATA").startswith("354")
    c.send(body + b".\r\n")
    reply = c.code()
    c.command("QUIT")
    return reply


def test_full_disk_gives_452_and_recovers(relay_factory, small_disk):
    relay = relay_factory(start=False)
    relay.state = small_disk / "state"
    relay.write_config()
    relay.start()
    filler = small_disk / "filler"
    # Leave about 400 KiB free.
    stat = os.statvfs(small_disk)
    free = stat.f_bavail * stat.f_frsize
    filler.write_bytes(b"\0" * (free - 400 * 1024))
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 100  # about 100 KB
    replies = [send(relay.port, body) for _ in range(8)]
    accepted = [r for r in replies if r.startswith("250 ")]
    refused = [r for r in replies if not r.startswith("250 ")]
    assert accepted, replies
    assert refused and all(r.startswith("452 4.3.1") for r in refused), replies
    assert relay.temporary_files() == [], "a refused message left a partial file"
    queued = relay.queued()
    assert len(queued) == len(accepted)
    for envelope, content in queued.values():
        assert strip_received(content) == body
    assert "insufficient storage" in relay.log_text()
    # Space returns: mail is accepted again, without a restart.
    filler.unlink()
    assert send(relay.port, body).startswith("250 2.0.0")
    assert len(relay.queued()) == len(accepted) + 1
