"""Shutdown (SIGTERM) keeps what it owes: repeat counts of rate-limited alerts are written,
never dropped; a delivery cut short by the shutdown is not a failed attempt (no attempt counted,
no backoff) and the message is delivered at once after the restart.
"""
import os
import re
import time

from relay import Relay, wait_for
from smtpclient import RawSMTP


def send(relay, recipient, body):
    c = RawSMTP(relay.port)
    c.code()
    c.command("EHLO client.example.org")
    assert c.command("MAIL FROM:<sender@plain-mx2.test>").startswith("250")
    assert c.command(f"RCPT TO:<{recipient}>").startswith("250")
    assert c.command("DATA").startswith("354")
    c.send(body + b"\r\n.\r\n")
    reply = c.code()
    c.command("QUIT")
    assert reply.startswith("250"), reply


def test_sigterm_writes_the_repeat_count_of_held_alerts(tmp_path, world, world_relay_toml):
    relay = Relay(tmp_path / "alerts", extra_toml=world_relay_toml).start()
    try:
        # Two messages: both attempted (a third would find the destination suspended, no alert).
        for i in range(2):
            send(relay, f"user{i}@attack-strip-starttls.test", f"Subject: repeat {i}\r\n\r\nbody".encode())
        assert wait_for(lambda: len(re.findall(r"status=deferred", relay.log_text())) == 2, timeout=30), relay.log_text()[-3000:]
        # One alert written, one held in the 5-minute window.
        assert len(re.findall(r"ALERT policy-failure", relay.log_text())) == 1, relay.log_text()[-3000:]
    finally:
        relay.stop()
    log = relay.log_text()
    alerts = re.findall(r"ALERT policy-failure[^\n]*", log)
    assert len(alerts) == 2, log[-3000:]
    assert "(1 more like it" in alerts[1], alerts[1]


def test_rfc5011_trust_anchor_is_seeded_and_kept_by_libunbound(tmp_path, world, world_relay_toml):
    """dns.auto_trust_anchor (default on): the configured anchor seeds
    state_directory/trust-anchor/ at the first start; libunbound validates with that copy and
    rewrites it in its RFC 5011 format (";;id:", ";;last_queried:") as it probes the zone's keys."""
    relay = Relay(tmp_path / "anchor", extra_toml=world_relay_toml).start()
    try:
        anchors = list((relay.state / "trust-anchor").iterdir())
        assert len(anchors) == 1, anchors
        assert "seeded from" in relay.log_text()
        send(relay, "user@dane-ee.test", b"Subject: anchored\r\n\r\nbody")
        assert wait_for(lambda: "status=sent, tls=dane" in relay.log_text(), timeout=30), relay.log_text()[-2000:]
        assert wait_for(lambda: ";;last_queried:" in anchors[0].read_text(), timeout=30), anchors[0].read_text()
        # Public keys, not secrets; the directory is the service's own.
        assert oct((relay.state / "trust-anchor").stat().st_mode & 0o777) == "0o700"
    finally:
        relay.stop()
    # A restart uses the kept copy, not the seed again.
    relay.start()
    try:
        assert relay.log_text().count("seeded from") == 1
    finally:
        relay.stop()


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_with_a_queue_costs_no_cpu(tmp_path):
    """The scheduler sleeps until the next due time: with messages queued (held) and nothing
    due, the daemon is idle. (A wake-up loop that re-armed itself once spun both cores.)"""
    relay = Relay(tmp_path / "idle", extra_toml="[delivery]\nhold = true\n").start()
    try:
        for i in range(5):
            send(relay, f"user{i}@example.net", b"Subject: held\r\n\r\nbody")
        # After a restart the loaded queue wakes the scheduler; then nothing is due.
        relay.stop()
        relay.start()
        assert wait_for(lambda: "spool recovered: 5 queued" in relay.log_text(), timeout=10)
        time.sleep(1)
        before = cpu_seconds(relay.process.pid)
        time.sleep(3)
        used = cpu_seconds(relay.process.pid) - before
        assert used < 0.3, f"{used:.2f} s of CPU in 3 s while idle"
    finally:
        relay.stop()
