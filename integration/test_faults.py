"""Fault suite: what breaks around the relay never loses or bounces mail wrongly.
(kill -9 under load and a full disk are in test_crash_safety.py; an MX dropping the
connection after the message in test_delivery_behaviour.py.)"""
import json
import signal
import re
import time

import pytest

import subprocess

from relay import BINARY, Relay
from smtpclient import RawSMTP
from test_delivery_behaviour import attempts, send, wait_for


def test_dns_server_gone_defers_never_bounces(tmp_path):
    extra = ('[dns]\ntrust_anchor_file = "/usr/share/dns/root.key"\n'
             'stub_zones = [{ name = "test.", addresses = ["127.0.9.53@53"] }]\ntimeout = 1\n'
             '[delivery]\nmin_backoff = 3600\n')
    relay = Relay(tmp_path / "nodns", extra_toml=extra).start()
    try:
        send(relay, "sender@plain-mx.test", ["user@plain-mx.test", "other@nowhere.test"], b"Subject: dns\r\n\r\nno dns\r\n")
        for recipient in ("user@plain-mx.test", "other@nowhere.test"):
            outcome = wait_for(lambda: attempts(relay, recipient), timeout=30)
            assert outcome and outcome[0][1:3] == ("4.4.3", "deferred"), outcome
            assert "failed temporarily" in outcome[0][3]
        assert len(relay.queued()) == 1
    finally:
        relay.stop()


def test_corrupt_spool_file_is_moved_aside_and_reported(tmp_path):
    relay = Relay(tmp_path / "corrupt", extra_toml="[delivery]\nhold = true\n").start()
    try:
        send(relay, "a@example.org", ["b@example.net"], b"Subject: keep me\r\n\r\nintact\r\n")
        good = set(relay.queued())
        relay.stop()
        bucket = relay.state / "spool" / "queue" / "Z"
        (bucket / "0123456789ABCDEZ").write_bytes(b"garbage that is not a queue file")
        (relay.state / "spool" / "queue" / "garbage").write_bytes(b"a stray file where buckets live")
        relay.start()
        # The queue is scanned after the listener is up: wait for the scan's report.
        assert wait_for(lambda: "spool recovered" in relay.log_text(), timeout=15), relay.log_text()
        assert set(relay.queued()) == good
        assert (relay.state / "spool" / "corrupt" / "0123456789ABCDEZ").exists()
        assert (relay.state / "spool" / "corrupt" / "queue-garbage").exists()
        log = relay.log_text()
        assert "2 corrupt file(s) moved aside" in log
        assert "corrupt queue file 0123456789ABCDEZ moved to" in log
        assert "corrupt queue file queue-garbage moved to" in log
    finally:
        relay.stop()


def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(tmp_path):
    first = Relay(tmp_path / "first", extra_toml="[delivery]\nhold = true\n").start()
    second = Relay(tmp_path / "first", extra_toml="[delivery]\nhold = true\n")
    second.config = tmp_path / "second.toml"
    second.write_config = lambda: None
    second.config.write_text(first.config.read_text().replace(str(first.port), str(first.port + 1)))
    try:
        c = RawSMTP(first.port)
        c.code()
        c.command("EHLO a.example")
        c.command("MAIL FROM:<a@example.org>")
        c.command("RCPT TO:<b@example.net>")
        assert c.command("DATA").startswith("354")
        c.send(b"Subject: in flight\r\n\r\n")
        process = subprocess.run([str(BINARY), "--config", str(second.config)], capture_output=True, text=True, timeout=30)
        assert process.returncode == 71
        assert "another tlsrelayd (pid" in process.stderr and "refusing to start a second one" in process.stderr
        # The first daemon's transaction and control socket are untouched.
        c.send(b"body\r\n.\r\n")
        assert c.code().startswith("250 2.0.0")
        assert (first.state / "control.sock").exists()
    finally:
        first.stop()


def test_kill_9_during_delivery_delivers_at_least_once(world, tmp_path, world_relay_toml):
    toml = world_relay_toml.replace("min_backoff = 3600\nmax_backoff = 3600", "min_backoff = 1\nmax_backoff = 2")
    relay = Relay(tmp_path / "inflight", extra_toml=toml).start()
    try:
        # kill -9 right after the 250s, while the first deliveries are under way: after the
        # restart every message is delivered (at least once: one whose record was not yet written
        # when the kill came is delivered again).
        tokens = [f"inflight-{i}" for i in range(5)]
        for token in tokens:
            send(relay, "sender@plain-mx.test", [f"{token}@plain-mx2.test"], f"Subject: {token}\r\n\r\n{token}\r\n".encode())
        time.sleep(0.05)
        relay.kill9()
        relay.start()
        for token in tokens:
            got = wait_for(lambda: [m for m in world.messages("plain-mx2") if token.encode() in m["data_bytes"]], timeout=30)
            assert got, f"{token} was lost"
        assert wait_for(lambda: relay.queued() == {}, timeout=30) is not None
    finally:
        relay.stop()


@pytest.mark.parametrize("secure,bogus,alerted", [
    ("dane-ee.test", "dane-bogus-mx.test", False),
    ("insecure.test", "dane-bogus-mx.test", True),      # validation "off" would look like this
    ("dane-ee.test", "dane-ee.test", True),            # a broken name that validates
])
def test_dnssec_self_test_at_start_up(world, tmp_path, world_relay_toml, secure, bogus, alerted):
    toml = re.sub(r'check_secure_name = "[^"]*"\ncheck_bogus_name = "[^"]*"\n',
                  f'check_secure_name = "{secure}"\ncheck_bogus_name = "{bogus}"\n', world_relay_toml)
    assert f'check_secure_name = "{secure}"' in toml
    relay = Relay(tmp_path / "selftest", extra_toml=toml).start()
    try:
        if alerted:
            assert wait_for(lambda: "ALERT configuration: tlsrelay configuration alert: DNSSEC self-test" in relay.log_text(), timeout=15), relay.log_text()
        else:
            assert wait_for(lambda: relay.log_text().count("DNSSEC self-test:") == 2, timeout=15), relay.log_text()
            assert "ALERT" not in relay.log_text()
    finally:
        relay.stop()


FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def test_clock_jumping_forward_while_running_makes_deferred_mail_due_at_once(world, tmp_path, world_relay_toml):
    """The wall clock of the running daemon jumps forward two hours (libfaketime; the monotonic
    clock is left alone, as an NTP step leaves it): a message deferred with its retry an hour
    away is retried at the next scheduler tick and delivered, nothing bounces (two hours is far
    inside the queue lifetime), and the delay logged is the wall-clock one."""
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    relay = Relay(tmp_path / "jump", extra_toml=world_relay_toml + "\n[policy]\ndowngrade_memory = \"off\"\n")
    relay.start(env=env)
    try:
        world.set_mx_behaviour("plain-mx", rcpt={"jump": "450 4.2.0 later"})
        send(relay, "sender@plain-mx2.test", ["jump@plain-mx.test"], b"Subject: jump\r\n\r\njump-token\r\n")
        first = wait_for(lambda: attempts(relay, "jump@plain-mx.test"))
        assert first[0][2] == "deferred", first
        world.clear_mx_behaviour("plain-mx")
        time.sleep(2)
        assert len(attempts(relay, "jump@plain-mx.test")) == 1, "retried before its time (min_backoff is an hour)"
        offset.write_text("+2h\n")
        sent = wait_for(lambda: [a for a in attempts(relay, "jump@plain-mx.test") if a[2] == "sent"], timeout=15)
        assert sent, relay.log_text()[-1500:]
        assert [a[2] for a in attempts(relay, "jump@plain-mx.test")] == ["deferred", "sent"]
        delay = re.search(r"to=<jump@plain-mx\.test>, relay=[^,]*, delay=([0-9.]+), [^\n]*status=sent", relay.log_text())
        assert delay and 7200 <= float(delay.group(1)) < 7300, delay
        assert [m for m in world.messages("plain-mx") if b"jump-token" in m["data_bytes"]]
        assert wait_for(lambda: relay.queued() == {}, timeout=10) is not None
        # SIGTERM still ends it under the preload (a shutdown step once waited on a timer that
        # never fired there).
        assert relay.stop(timeout=10) == 0
    finally:
        relay.stop()
        world.clear_mx_behaviour()


def test_clock_set_back_does_not_stall_retries(world, tmp_path, world_relay_toml):
    """A retry time written before the clock was set back lies far in the future: the relay
    waits at most max_backoff from now, not until then."""
    toml = world_relay_toml.replace("min_backoff = 3600\nmax_backoff = 3600", "min_backoff = 1\nmax_backoff = 2")
    relay = Relay(tmp_path / "clock", extra_toml=toml + "\n[policy]\ndowngrade_memory = \"off\"\n").start()
    try:
        world.set_mx_behaviour("plain-mx", rcpt={"clock": "450 4.2.0 later"})
        send(relay, "sender@plain-mx2.test", ["clock@plain-mx.test"], b"Subject: clock\r\n\r\nclock-token\r\n")
        assert wait_for(lambda: attempts(relay, "clock@plain-mx.test"))
        relay.stop()
        world.clear_mx_behaviour("plain-mx")
        # As if the clock had been set back by a week since the retry time was written.
        records = list((relay.state / "spool" / "state").glob("*/*"))
        assert len(records) == 1
        record = json.loads(records[0].read_text())
        record["nextAttempt"] = time.time() + 7 * 86400
        records[0].write_text(json.dumps(record))
        relay.start()
        assert wait_for(lambda: [a for a in attempts(relay, "clock@plain-mx.test") if a[2] == "sent"], timeout=20), relay.log_text()[-1500:]
    finally:
        relay.stop()
        world.clear_mx_behaviour()


def dsn_reports(world, token):
    return [m for m in world.messages("plain-mx2") if token.encode() in m["data_bytes"]
            and b"report-type=delivery-status" in m["data_bytes"]]


@pytest.mark.parametrize("point,recipients", [
    ("dsn-written", ["nouser", "busy"]),         # the DSN is on disk, the original's record does not name it yet
    ("record-saved", ["nouser", "busy"]),        # the record names the DSN, the DSN is not released yet
    ("record-saved", ["nouser"]),                # the message is removed, its DSN not released yet
    ("queue-file-removed", ["nouser"]),          # the queue file is gone, its record not yet
])
def test_kill_9_between_a_5xx_and_its_dsn_bounces_once(world, tmp_path, world_relay_toml, point, recipients):
    """SIGKILL at each step between a recipient's 5xx and its DSN leaving (TLSRELAY_CRASH_AT
    stops the daemon exactly there): after the restart the sender gets exactly one DSN for the
    refused recipient, the recipient still deferred stays queued and is not reported, and no
    queue file or record is left behind for a finished message."""
    world.set_mx_behaviour("plain-mx", rcpt={"nouser": "550 5.1.1 No such user here", "busy": "450 4.2.0 Mailbox busy"})
    token = f"crash-{point}-{len(recipients)}"
    relay = Relay(tmp_path / "crash", extra_toml=world_relay_toml)   # retries an hour apart
    try:
        relay.start(env={"TLSRELAY_CRASH_AT": point})
        content = f"From: sender@plain-mx2.test\r\nSubject: crash\r\n\r\n{token}\r\n".encode()
        send(relay, "sender@plain-mx2.test", [f"{r}@plain-mx.test" for r in recipients], content)
        assert wait_for(lambda: relay.process.poll() is not None, timeout=30), relay.log_text()[-3000:]
        assert relay.process.returncode == -signal.SIGKILL, relay.log_text()[-3000:]
        assert not dsn_reports(world, token), "a DSN left before the crash point"
        relay.start()
        assert wait_for(lambda: dsn_reports(world, token), timeout=30), relay.log_text()[-3000:]
        if "busy" in recipients:
            assert wait_for(lambda: len(relay.queued()) == 1, timeout=15), relay.queued().keys()
        else:
            assert wait_for(lambda: relay.queued() == {}, timeout=15) is not None, relay.queued().keys()
        time.sleep(3)                       # a second DSN would be on its way by now
        reports = dsn_reports(world, token)
        assert len(reports) == 1, [r["data_bytes"][:300] for r in reports]
        status = reports[0]["data_bytes"].split(b"message/delivery-status")[1].split(b"\r\n--")[0]
        assert b"Final-Recipient: rfc822; nouser@plain-mx.test" in status
        assert b"busy@plain-mx.test" not in status
        state = relay.state / "spool" / "state"
        records = {p.name for p in state.glob("*/*")}
        assert records == set(relay.queued()), (records, relay.queued().keys())
        if "busy" in recipients:
            record = json.loads(next(state.glob(f"*/{next(iter(relay.queued()))}")).read_text())
            assert record["recipients"][0]["status"] == "bounced" and record["recipients"][0]["dsnQueueID"]
            assert record["recipients"][1]["status"] == "pending"
        # The restart after this one reports nothing again.
        relay.stop()
        relay.start()
        time.sleep(2)
        assert len(dsn_reports(world, token)) == 1
    finally:
        relay.stop()
        world.clear_mx_behaviour()
