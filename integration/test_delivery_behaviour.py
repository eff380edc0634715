"""Delivery behaviour against scripted MX servers of the test world (RFC 5321 §4.2, §4.5.4,
RFC 3464): temporary failures are retried, permanent ones bounce with a DSN to the sender's
own MX, a dropped connection is retried, the queue lifetime ends in 5.4.7, large messages and
many recipients across several domains arrive intact, and real Postfix → tlsrelayd → MX works.
"""
import json
import re
import time

import pytest

from postfix_client import running_postfix
from relay import Relay, wait_for
from smtpclient import RawSMTP




def attempts(relay, recipient):
    return re.findall(r"to=<" + re.escape(recipient) + r">, relay=([^,]*), .*?dsn=([0-9.]+), status=(\w+)(?:, tls=[\w-]+)? \((.*)\)", relay.log_text())


def send(relay, sender, recipients, content):
    c = RawSMTP(relay.port)
    c.code()
    c.command("EHLO client.example.org")
    assert c.command(f"MAIL FROM:<{sender}>").startswith("250")
    for r in recipients:
        assert c.command(f"RCPT TO:<{r}>").startswith("250")
    assert c.command("DATA").startswith("354")
    stuffed = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in content.split(b"\r\n"))
    c.send(stuffed + b".\r\n")
    reply = c.code()
    c.command("QUIT")
    assert reply.startswith("250 2.0.0"), reply
    return reply.split()[-1]


def body_after_trace(data):
    """Message bytes without the Received: fields this relay and the MX added."""
    lines = data.split(b"\r\n")
    i = 0
    while i < len(lines) and (lines[i].startswith(b"Received:") or lines[i][:1] in (b" ", b"\t")):
        i += 1
    return b"\r\n".join(lines[i:])


@pytest.fixture
def fast_relay(tmp_path, world, world_relay_toml):
    """A relay that retries after 1-2 s."""
    toml = world_relay_toml.replace("min_backoff = 3600\nmax_backoff = 3600", "min_backoff = 1\nmax_backoff = 2")
    relay = Relay(tmp_path / "fast", extra_toml=toml).start()
    yield relay
    relay.stop()
    world.clear_mx_behaviour()


def test_temporary_failure_is_retried_then_delivered(world, fast_relay):
    world.set_mx_behaviour("plain-mx", rcpt={"tempfail": "450 4.2.0 Mailbox busy, try later"})
    content = b"Subject: retry me\r\n\r\nretry-token-1\r\n"
    send(fast_relay, "sender@plain-mx2.test", ["tempfail@plain-mx.test"], content)
    first = wait_for(lambda: attempts(fast_relay, "tempfail@plain-mx.test"))
    assert first and first[0][1:3] == ("4.2.0", "deferred"), first
    assert "450 4.2.0 Mailbox busy" in first[0][3]
    world.clear_mx_behaviour("plain-mx")
    delivered = wait_for(lambda: [a for a in attempts(fast_relay, "tempfail@plain-mx.test") if a[2] == "sent"], timeout=30)
    assert delivered, fast_relay.log_text()[-2000:]
    received = [m for m in world.messages("plain-mx") if b"retry-token-1" in m["data_bytes"]]
    assert len(received) == 1 and received[0]["tls"]
    assert wait_for(lambda: fast_relay.queued() == {}, timeout=10) is not None


def test_permanent_failure_bounces_with_dsn_to_the_senders_mx(world, fast_relay):
    world.set_mx_behaviour("plain-mx", rcpt={"nouser": "550 5.1.1 No such user here"})
    content = b"From: sender@plain-mx2.test\r\nSubject: to nobody\r\n\r\nbounce-token-2\r\n"
    send(fast_relay, "sender@plain-mx2.test", ["nouser@plain-mx.test", "someone@plain-mx.test"], content)
    outcome = wait_for(lambda: attempts(fast_relay, "nouser@plain-mx.test"))
    assert outcome[0][1:3] == ("5.1.1", "bounced"), outcome
    assert wait_for(lambda: [a for a in attempts(fast_relay, "someone@plain-mx.test") if a[2] == "sent"])
    reports = wait_for(lambda: [m for m in world.messages("plain-mx2") if b"bounce-token-2" in m["data_bytes"]
                                and b"report-type=delivery-status" in m["data_bytes"]], timeout=30)
    assert reports and len(reports) == 1, fast_relay.log_text()[-2000:]
    dsn = reports[0]
    assert dsn["mail_from"] in ("", "<>")
    assert dsn["rcpt_tos"] == ["sender@plain-mx2.test"]
    body = dsn["data_bytes"]
    assert b"Final-Recipient: rfc822; nouser@plain-mx.test\r\nAction: failed\r\nStatus: 5.1.1\r\n" in body
    assert b"Remote-MTA: dns; mx.plain-mx.test\r\n" in body
    assert b"Diagnostic-Code: smtp; 550 5.1.1 No such user here\r\n" in body
    assert b"someone@plain-mx.test" not in body.split(b"message/delivery-status")[1].split(b"--")[0]
    # The original recipient that succeeded got the message once.
    assert len([m for m in world.messages("plain-mx") if b"bounce-token-2" in m["data_bytes"]]) == 1


def test_a_5xx_recipient_gets_its_dsn_while_another_is_still_deferred(world, tmp_path, world_relay_toml):
    """Bounces at once (RFC 3464, as Postfix): the DSN for a refused recipient goes out after the
    attempt that refused it, not when the message's last recipient is done (up to
    queue_lifetime later); the deferred recipient stays queued, and its later bounce is a
    second DSN for it alone — nobody is reported twice."""
    world.set_mx_behaviour("plain-mx", rcpt={"nouser": "550 5.1.1 No such user here", "busy": "450 4.2.0 Mailbox busy"})
    relay = Relay(tmp_path / "bounce-now", extra_toml=world_relay_toml).start()   # retries an hour apart
    try:
        content = b"From: sender@plain-mx2.test\r\nSubject: partly refused\r\n\r\nbounce-token-9\r\n"
        send(relay, "sender@plain-mx2.test", ["nouser@plain-mx.test", "busy@plain-mx.test"], content)
        reports = wait_for(lambda: [m for m in world.messages("plain-mx2") if b"bounce-token-9" in m["data_bytes"]
                                    and b"report-type=delivery-status" in m["data_bytes"]], timeout=30)
        assert reports and len(reports) == 1, relay.log_text()[-2000:]
        status = reports[0]["data_bytes"].split(b"message/delivery-status")[1].split(b"\r\n--")[0]
        assert b"Final-Recipient: rfc822; nouser@plain-mx.test" in status
        assert b"busy@plain-mx.test" not in status
        # The busy recipient is still queued, and its record names the DSN of the other one.
        queued = relay.queued()
        assert len(queued) == 1, queued.keys()
        queue_id = next(iter(queued))
        record = json.loads(next((relay.state / "spool" / "state").glob(f"*/{queue_id}")).read_text())
        assert record["recipients"][0]["status"] == "bounced" and record["recipients"][0]["dsnQueueID"]
        assert record["recipients"][1]["status"] == "pending" and "dsnQueueID" not in record["recipients"][1]
        # A restart does not report it again.
        relay.stop()
        relay.start()
        time.sleep(2)
        again = [m for m in world.messages("plain-mx2") if b"bounce-token-9" in m["data_bytes"] and b"report-type=delivery-status" in m["data_bytes"]]
        assert len(again) == 1
    finally:
        relay.stop()
        world.clear_mx_behaviour()


def test_delay_warning_is_sent_once_while_the_recipient_is_retried(world, tmp_path, world_relay_toml):
    """delay_warning_time: a recipient still deferred after it gets one delay DSN (RFC 3464
    Action: delayed, Will-Retry-Until), not one per retry; NOTIFY=FAILURE gets none."""
    world.set_mx_behaviour("plain-mx", rcpt={"busy": "450 4.2.0 Mailbox busy", "quiet": "450 4.2.0 Mailbox busy"})
    toml = world_relay_toml.replace("min_backoff = 3600\nmax_backoff = 3600", "min_backoff = 1\nmax_backoff = 1\ndelay_warning_time = 2")
    relay = Relay(tmp_path / "delay", extra_toml=toml).start()
    try:
        c = RawSMTP(relay.port)
        c.code()
        c.command("EHLO client.example.org")
        assert c.command("MAIL FROM:<sender@plain-mx2.test>").startswith("250")
        assert c.command("RCPT TO:<busy@plain-mx.test>").startswith("250")
        assert c.command("RCPT TO:<quiet@plain-mx.test> NOTIFY=FAILURE").startswith("250")
        assert c.command("DATA").startswith("354")
        c.send(b"Subject: slow-delay-10\r\n\r\ndelay-token-10\r\n.\r\n")
        assert c.code().startswith("250")
        c.command("QUIT")

        def delay_reports():
            # A delay report returns the headers only: find it by the original's Subject.
            return [m for m in world.messages("plain-mx2") if b"Subject: slow-delay-10" in m["data_bytes"] and b"Action: delayed" in m["data_bytes"]]
        reports = wait_for(delay_reports, timeout=30)
        assert reports, "\n".join(l for l in relay.log_text().splitlines() if "notification" in l or "error" in l or "removed" in l)[-3000:]
        # Several more retries: still one report.
        first = len(attempts(relay, "busy@plain-mx.test"))
        assert wait_for(lambda: len(attempts(relay, "busy@plain-mx.test")) >= first + 3, timeout=30)
        assert len(delay_reports()) == 1
        body = reports[0]["data_bytes"]
        assert b"Subject: Delayed Mail (still being retried)" in body and b"Will-Retry-Until: " in body
        status = body.split(b"message/delivery-status")[1].split(b"\r\n--")[0]
        assert b"busy@plain-mx.test" in status and b"quiet@plain-mx.test" not in status
        assert b"delay-token-10" not in body, "a delay report does not return the message"
    finally:
        relay.stop()
        world.clear_mx_behaviour()


def test_connection_dropped_after_data_is_retried(world, fast_relay):
    world.set_mx_behaviour("plain-mx", drop_after="data_end")
    send(fast_relay, "sender@plain-mx2.test", ["dropped@plain-mx.test"], b"Subject: drop\r\n\r\ndrop-token-3\r\n")
    first = wait_for(lambda: attempts(fast_relay, "dropped@plain-mx.test"))
    assert first[0][1:3] == ("4.4.2", "deferred"), first
    assert "lost connection" in first[0][3]
    world.clear_mx_behaviour("plain-mx")
    assert wait_for(lambda: [a for a in attempts(fast_relay, "dropped@plain-mx.test") if a[2] == "sent"], timeout=30)
    assert len([m for m in world.messages("plain-mx") if b"drop-token-3" in m["data_bytes"]]) == 1


def test_queue_lifetime_ends_in_5_4_7(world, tmp_path, world_relay_toml):
    toml = world_relay_toml.replace("min_backoff = 3600", "queue_lifetime = 0\nmin_backoff = 3600")
    relay = Relay(tmp_path / "lifetime", extra_toml=toml).start()
    try:
        world.set_mx_behaviour("plain-mx", rcpt={"busy": "451 4.3.0 Try again"})
        send(relay, "sender@plain-mx2.test", ["busy@plain-mx.test"], b"Subject: expire\r\n\r\nexpire-token-4\r\n")
        outcome = wait_for(lambda: attempts(relay, "busy@plain-mx.test"))
        assert outcome[0][1:3] == ("5.4.7", "bounced"), outcome
        assert "last error" in outcome[0][3] and "451 4.3.0 Try again" in outcome[0][3]
        reports = wait_for(lambda: [m for m in world.messages("plain-mx2") if b"expire-token-4" in m["data_bytes"]], timeout=30)
        assert reports and b"Status: 5.4.7" in reports[0]["data_bytes"]
    finally:
        relay.stop()
        world.clear_mx_behaviour()


def test_large_message_to_many_recipients_in_several_domains(world, fast_relay):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_+0123456789\r\n"
    content = b"Subject: large\r\n\r\nlarge-token-5\r\n" + line * (11 * 1024 * 1024 // len(line)) + b".leading dot\r\n"
    recipients = [f"r{i}@plain-mx.test" for i in range(40)] + [f"s{i}@plain-mx2.test" for i in range(40)] + ["big@dane-ee.test"]
    send(fast_relay, "sender@plain-mx2.test", recipients, content)
    for scenario, count in (("plain-mx", 40), ("plain-mx2", 40), ("dane-ee", 1)):
        got = wait_for(lambda: [m for m in world.messages(scenario) if b"large-token-5" in m["data_bytes"]], timeout=60)
        assert got and len(got) == 1, f"{scenario}: {len(got or [])} copies"
        assert len(got[0]["rcpt_tos"]) == count
        assert body_after_trace(got[0]["data_bytes"]) == content
        assert got[0]["tls"]


@pytest.fixture
def postfix_upstream(fast_relay):
    with running_postfix(fast_relay.port) as client:
        yield client


def test_postfix_to_tlsrelay_to_mx_over_starttls(world, fast_relay, postfix_upstream):
    message = (b"From: Alice <alice@plain-mx2.test>\r\nTo: Bob <bob@plain-mx.test>\r\nSubject: end to end\r\n"
               b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <e2e-postfix-6@plain-mx2.test>\r\n\r\n"
               b"postfix-token-6\r\n.dot line\r\n")
    postfix_upstream.sendmail("alice@plain-mx2.test", ["bob@plain-mx.test"], message.replace(b"\r\n", b"\n"))
    got = wait_for(lambda: [m for m in world.messages("plain-mx") if b"postfix-token-6" in m["data_bytes"]], timeout=60)
    assert got, postfix_upstream.maillog() + fast_relay.log_text()[-2000:]
    assert len(got) == 1
    assert got[0]["tls"] and got[0]["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert got[0]["mail_from"] == "alice@plain-mx2.test" and got[0]["rcpt_tos"] == ["bob@plain-mx.test"]
    assert body_after_trace(got[0]["data_bytes"]) == message
