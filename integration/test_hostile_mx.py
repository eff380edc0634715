"""tlsrelayd against hostile MX servers (testworld/hostile.py): peers that break SMTP on purpose.

A final reply before the message data was sent (RFC 5321 §4.1.1.4), replies nobody asked for
with and without PIPELINING (RFC 5321 §4.2, RFC 2920 §3.1), a surplus reply after the end of
data, a tarpit shared by 25 domains, a slow final reply, control bytes in replies, an absurd
SIZE, a trickled greeting, an endless reply and an invalid reply code.  Each hostile host is
one behaviour on one address (plain opportunistic domains: secure DNS, no TLSA, no MTA-STS, no
STARTTLS offered) and logs what it did (``World.hostile_events``): the commands it received,
the bytes it sent, every connection with the number open at the time, every message it took.
"""
import json
import re
import signal
import subprocess
import time

import pytest

from relay import Relay, wait_for
from smtpclient import RawSMTP
from test_delivery_behaviour import attempts, body_after_trace, send

import hostile

SENDER = "sender@plain-mx2.test"
PROTOCOL_ERROR = r"protocol error with {host}\[[0-9.]+\]:25: "


def host_of(world, behaviour):
    return world.hostile_host("hostile-" + behaviour)["name"]


def relay_toml(world, **delivery):
    settings = {"min_backoff": 3600, "max_backoff": 3600, "connect_timeout": 5, "command_timeout": 10}
    settings.update(delivery)
    return world.relay_sections(dns_extra="timeout = 3\n",
                                delivery_extra="".join(f"{k} = {v}\n" for k, v in settings.items()))


def stop(relay, timeout=10):
    """SIGTERM; SIGKILL after ``timeout`` s. Returns the seconds the relay took, None if killed."""
    start = time.monotonic()
    if relay.process and relay.process.poll() is None:
        relay.process.send_signal(signal.SIGTERM)
        try:
            relay.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            relay.process.kill()
            relay.process.wait()
            relay.stop()
            return None
    relay.stop()
    return time.monotonic() - start


@pytest.fixture
def start_relay(tmp_path, world):
    """Starts relays with [delivery] settings; stops them (SIGKILL after 10 s) afterwards and puts
    every hostile host back to its behaviour at up."""
    relays = []

    def start(name="relay", **delivery):
        relay = Relay(tmp_path / name, extra_toml=relay_toml(world, **delivery)).start()
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        stop(relay)
    world.clear_hostile()


def since(world, host, mark):
    return world.hostile_events(host)[mark:]


def by_session(events):
    out = {}
    for e in events:
        out.setdefault(e["session"], []).append(e)
    return out


def commands(session_events):
    return [e["line"] for e in session_events if e["event"] == "recv"]


def outcome(relay, recipient, timeout=20):
    """The first status line of ``recipient``: (relay, dsn, status, reason)."""
    found = wait_for(lambda: attempts(relay, recipient), timeout=timeout)
    assert found, f"no status line for {recipient}:\n" + relay.log_text()[-3000:]
    return found[0]


def sent(relay, recipient):
    return [a for a in attempts(relay, recipient) if a[2] == "sent"]


def assert_alive(relay):
    """The daemon still runs and answers SMTP."""
    assert relay.process.poll() is None, relay.log_text()[-3000:]
    c = RawSMTP(relay.port)
    assert c.code().startswith("220")
    assert c.command("EHLO alive.example.org").startswith("250")
    assert c.command("QUIT").startswith("221")
    c.close()


# --- final reply before the data -----------------------------------------------------------

def test_early_250_in_the_354_segment_is_deferred_then_delivered_when_honest(world, start_relay):
    """``354 go\\r\\n250 2.0.0 ok\\r\\n`` in one write: the 250 came before a byte of the message.
    Deferred as a protocol error, never sent; no byte of the body reaches the host. Once the
    host is honest again, a later attempt delivers the message intact, once."""
    host = host_of(world, "early-250-same-segment")
    mark = len(world.hostile_events(host))
    relay = start_relay(min_backoff=1, max_backoff=2)
    recipient = "early1@hostile-early-250-same-segment.test"
    content = b"Subject: early 250\r\n\r\nearly-token-1\r\n.leading dot\r\n"
    send(relay, SENDER, [recipient], content)
    _, dsn, status, reason = outcome(relay, recipient)
    assert (status, dsn) == ("deferred", "4.5.0"), reason
    expected = PROTOCOL_ERROR.format(host=re.escape(host)) + (
        r"(unexpected data after the reply 354 to DATA \(the server did not offer PIPELINING\) "
        r"\(RFC 5321 section 4\.2\)|reply 250 arrived before the end of the message data was sent "
        r"\(RFC 5321 section 4\.1\.1\.4\))")
    assert re.fullmatch(expected, reason), reason
    # the session's own line says so too, before the recipient's status line
    assert re.search(r"\w+: " + re.escape(host) + r"\[[0-9.]+\]:25: " + expected, relay.log_text())
    # the host sent its early reply, got no complete message and no byte of the body
    early = [e for e in since(world, host, mark) if e["event"] == "early-reply"]
    assert early, since(world, host, mark)
    assert not [m for m in world.messages(host) if b"early-token-1" in m["data_bytes"]]
    assert b"early-token-1" not in world.cleartext(host)
    assert not sent(relay, recipient)

    world.set_hostile(host, "honest")
    assert wait_for(lambda: sent(relay, recipient), timeout=20), relay.log_text()[-3000:]
    statuses = [a[2] for a in attempts(relay, recipient)]
    assert statuses.count("sent") == 1 and set(statuses[:-1]) == {"deferred"}, statuses
    got = [m for m in world.messages(host) if b"early-token-1" in m["data_bytes"]]
    assert len(got) == 1 and got[0]["behaviour"] == "honest"
    assert body_after_trace(got[0]["data_bytes"]) == content
    assert wait_for(lambda: relay.queued() == {}, timeout=10) is not None


def test_early_250_mid_body_then_reset_is_deferred(world, start_relay):
    """354, one line read, ``250 2.0.0 ok``, then RST while the relay is still writing a 12 MB
    message (more than any socket buffer holds): deferred, never sent, nothing recorded."""
    host = host_of(world, "early-250-midbody")
    mark = len(world.hostile_events(host))
    relay = start_relay()
    recipient = "mid@hostile-early-250-midbody.test"
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_+0123456789\r\n"
    content = b"Subject: mid body\r\n\r\nmidbody-token-2\r\n" + line * (12 * 1024 * 1024 // len(line))
    send(relay, SENDER, [recipient], content)
    _, dsn, status, reason = outcome(relay, recipient, timeout=30)
    assert status == "deferred" and dsn.startswith("4."), (dsn, status, reason)
    assert reason.startswith(f"protocol error with {host}[") or "lost connection" in reason \
        or "reset" in reason, reason
    time.sleep(1)
    assert not sent(relay, recipient), attempts(relay, recipient)
    events = since(world, host, mark)
    assert [e for e in events if e["event"] == "early-reply"] and [e for e in events if e["event"] == "reset"]
    assert not [m for m in world.messages(host) if b"midbody-token-2" in m["data_bytes"]]
    assert not [e for e in events if e["event"] == "data" and e["complete"]]


# --- replies nobody asked for ------------------------------------------------------------------

def test_unsolicited_reply_without_pipelining_stops_the_session(world, start_relay):
    """No PIPELINING, MAIL answered ``250 ok`` + ``250 unsolicited`` in one write: a protocol
    error, deferred; the relay sends no RCPT and no DATA after the desynchronisation (the host's
    RCPT answer would have been 550 5.1.1)."""
    host = host_of(world, "unsolicited-nopipelining")
    mark = len(world.hostile_events(host))
    relay = start_relay()
    recipient = "unsol@hostile-unsolicited-nopipelining.test"
    send(relay, SENDER, [recipient], b"Subject: unsolicited\r\n\r\nunsolicited-token-3\r\n")
    _, dsn, status, reason = outcome(relay, recipient)
    assert (status, dsn) == ("deferred", "4.5.0"), reason
    assert re.fullmatch(PROTOCOL_ERROR.format(host=re.escape(host)) + re.escape(
        "unexpected data after the reply 250 to MAIL FROM (the server did not offer PIPELINING) "
        "(RFC 5321 section 4.2)"), reason), reason
    sessions = by_session(since(world, host, mark))
    assert len(sessions) == 1, sessions
    [events] = sessions.values()
    assert [e for e in events if e["event"] == "surplus"]
    lines = commands(events)
    mail = next(i for i, c in enumerate(lines) if c.upper().startswith("MAIL FROM:"))
    after = lines[mail + 1:]
    assert not [c for c in after if c.upper().split(" ")[0] in ("RCPT", "DATA", "MAIL", "RSET")], lines
    assert set(c.upper() for c in after) <= {"QUIT"}, lines
    assert b"unsolicited-token-3" not in world.cleartext(host)
    assert not [m for m in world.messages(host) if b"unsolicited-token-3" in m["data_bytes"]]


def test_surplus_reply_with_pipelining_is_a_protocol_error(world, start_relay):
    """PIPELINING offered, one surplus 250 in the batch of replies: protocol error, deferred, no
    message data sent."""
    host = host_of(world, "unsolicited-pipelining")
    mark = len(world.hostile_events(host))
    relay = start_relay()
    recipient = "surplus@hostile-unsolicited-pipelining.test"
    send(relay, SENDER, [recipient], b"Subject: surplus\r\n\r\nsurplus-token-4\r\n")
    _, dsn, status, reason = outcome(relay, recipient)
    assert (status, dsn) == ("deferred", "4.5.0"), reason
    assert re.match(PROTOCOL_ERROR.format(host=re.escape(host)), reason), reason
    events = since(world, host, mark)
    assert [e for e in events if e["event"] == "surplus"]
    assert b"surplus-token-4" not in world.cleartext(host)
    assert not [m for m in world.messages(host) if b"surplus-token-4" in m["data_bytes"]]
    time.sleep(0.5)
    assert not sent(relay, recipient)


def test_two_250_after_the_dot_first_counts_and_the_connection_is_not_reused(world, start_relay):
    """``250 ok`` + ``250 again`` after the end of data: the first 250 delivers (status=sent,
    once), the surplus ends the connection: the next message to the same host goes on a new
    connection although the connection cache would keep one for 30 s."""
    host = host_of(world, "two-250-after-dot")
    mark = len(world.hostile_events(host))
    relay = start_relay(connection_cache_time_limit=30)
    first, second = "one@hostile-two-250-after-dot.test", "two@hostile-two-250-after-dot.test"
    content = b"Subject: twice\r\n\r\ntwice-token-5a\r\n"
    send(relay, SENDER, [first], content)
    assert wait_for(lambda: sent(relay, first), timeout=20), relay.log_text()[-3000:]
    send(relay, SENDER, [second], b"Subject: twice\r\n\r\ntwice-token-5b\r\n")
    assert wait_for(lambda: sent(relay, second), timeout=20), relay.log_text()[-3000:]
    time.sleep(0.5)
    for recipient in (first, second):
        statuses = [a[2] for a in attempts(relay, recipient)]
        assert statuses == ["sent"], (recipient, statuses)
    [(mta, dsn, _, reason)] = attempts(relay, first)
    assert dsn == "2.0.0" and reason.endswith("said: 250 2.0.0 ok"), reason
    assert re.search(r"to=<" + re.escape(first) + r">, .*status=sent, tls=none \(", relay.log_text())
    a = [m for m in world.messages(host) if b"twice-token-5a" in m["data_bytes"]]
    b = [m for m in world.messages(host) if b"twice-token-5b" in m["data_bytes"]]
    assert len(a) == 1 and len(b) == 1 and body_after_trace(a[0]["data_bytes"]) == content
    assert a[0]["session"] != b[0]["session"], "the second message went on the desynchronised connection"
    for sid, events in by_session(since(world, host, mark)).items():
        lines = [c.upper() for c in commands(events)]
        assert sum(c.startswith("MAIL FROM:") for c in lines) <= 1, lines
        if "DATA" in lines:        # nothing but QUIT after the double reply
            assert set(lines[lines.index("DATA") + 1:]) <= {"QUIT"}, lines
    assert "reusing the connection to " + host not in relay.log_text()
    # control: the same host, honest, has its connection reused (so the above was the surplus)
    world.set_hostile(host, "honest")
    third, fourth = "three@hostile-two-250-after-dot.test", "four@hostile-two-250-after-dot.test"
    for recipient in (third, fourth):
        send(relay, SENDER, [recipient], f"Subject: reuse\r\n\r\nreuse-{recipient}\r\n".encode())
        assert wait_for(lambda: sent(relay, recipient), timeout=20), relay.log_text()[-3000:]
    c, d = ([m for m in world.messages(host) if f"reuse-{r}".encode() in m["data_bytes"]] for r in (third, fourth))
    assert len(c) == len(d) == 1 and c[0]["session"] == d[0]["session"], "honest host: no reuse"
    assert "reusing the connection to " + host in relay.log_text()


# --- a tarpit shared by 25 domains, a slow final reply -------------------------------------------

TARPIT = [f"tarpit-{i:02d}" for i in range(1, 26)]


def open_at(events, t):
    """Connections open at time ``t`` (from the connect/close events before it)."""
    n = 0
    for e in events:
        if e["time"] > t:
            break
        if e["event"] in ("connect", "close"):
            n = e["open"]
    return n


def test_tarpit_shared_by_25_domains_does_not_hold_up_other_mail(world, start_relay):
    """25 domains whose MX is one address that accepts TCP and never speaks: at most
    address_concurrency (10) sessions wait there, the other sessions stay free, and a message
    to a healthy domain sent after the 25 goes out within seconds while the tarpit ones are
    still pending."""
    host = world.hostile_host(TARPIT[0])["name"]
    assert {world.hostile_host(d)["address"] for d in TARPIT} == {world.hostile_host(TARPIT[0])["address"]}
    mark = len(world.hostile_events(host))
    relay = start_relay(concurrency=20, address_concurrency=10, command_timeout=60)
    for d in TARPIT:
        send(relay, SENDER, [f"user@{d}.test"], f"Subject: tarpit\r\n\r\ntarpit-token-{d}\r\n".encode())
    healthy = "healthy@plain-mx.test"
    submitted = time.monotonic()
    send(relay, SENDER, [healthy], b"Subject: healthy\r\n\r\nhealthy-token-6\r\n")
    assert wait_for(lambda: sent(relay, healthy), timeout=10), relay.log_text()[-3000:]
    took = time.monotonic() - submitted
    assert took < 10, took
    done_at = time.time()
    assert len([m for m in world.messages("plain-mx") if b"healthy-token-6" in m["data_bytes"]]) == 1
    # the tarpit ones: none delivered or bounced, sessions were (and are) waiting there
    assert not [a for d in TARPIT for a in attempts(relay, f"user@{d}.test") if a[2] in ("sent", "bounced")]
    time.sleep(2)                  # more time for a relay that would open more connections
    events = since(world, host, mark)
    connects = [e for e in events if e["event"] == "connect"]
    assert connects, "the relay never connected to the tarpit"
    assert open_at(events, done_at) >= 1, "no tarpit session was open when the healthy message went out"
    most = hostile.max_open(events)
    assert 1 <= most <= 10, f"{most} connections to the tarpit address at once"
    assert not [e for e in events if e["event"] == "recv"], "the relay sent a command before any greeting"
    assert not [a for d in TARPIT for a in attempts(relay, f"user@{d}.test") if a[2] in ("sent", "bounced")]
    # (teardown: SIGKILL; a prompt SIGTERM is the next test's business)
    relay.kill9()


def test_sigterm_with_sessions_stuck_at_a_tarpit_stops_promptly_and_keeps_the_mail(world, start_relay):
    """SIGTERM while sessions wait for a greeting that never comes (command_timeout 60): the
    daemon stops well within systemd's TimeoutStopSec (45 s in systemd/tlsrelayd.service),
    without errors, and the interrupted messages are still queued and tried at once after a
    restart."""
    host = world.hostile_host(TARPIT[0])["name"]
    relay = start_relay(concurrency=20, address_concurrency=10, command_timeout=60)
    for d in TARPIT[:12]:
        send(relay, SENDER, [f"stop@{d}.test"], b"Subject: stop\r\n\r\nstop-token-7\r\n")
    mark = len(world.hostile_events(host))
    assert wait_for(lambda: open_at(world.hostile_events(host), time.time()) >= 10, timeout=10), \
        world.hostile_events(host)[-5:]
    time.sleep(1)                  # the other 2 wait for an address slot by now
    took = stop(relay, timeout=15)
    log = relay.log_text()
    problems = []
    if took is None:
        problems.append("still running 15 s after SIGTERM (killed)")
    errors = [line for line in log.splitlines() if ": error: " in line]
    if errors:
        problems.append(f"{len(errors)} error line(s) at shutdown, e.g. {errors[0]}")
    # the mail is all still there, and delivery resumes at once after a restart
    assert len(relay.queued()) == 12, relay.queued().keys()
    # A cancelled attempt is not a failed one: no attempt counted, no deferral logged.
    for queue_id in relay.queued():
        for path in (relay.state / "spool" / "state").glob(f"*/{queue_id}"):
            record = json.loads(path.read_text())
            assert record.get("attempts", 0) == 0, record
    assert "status=deferred" not in log, log[-3000:]
    mark = len(world.hostile_events(host))
    relay.start()
    reconnected = wait_for(lambda: [e for e in since(world, host, mark) if e["event"] == "connect"], timeout=5)
    if not reconnected:
        problems.append("no delivery attempt within 5 s of the restart")
    relay.kill9()
    assert not problems, "; ".join(problems) + "\n" + log[-3000:]


def test_slow_final_reply_does_not_hold_up_other_domains(world, start_relay):
    """5 messages to a host that answers the dot 5 s late, then one to another domain: that one
    goes out within 3 s; the slow ones are waited for (command_timeout 30) and each delivered
    once, not timed out and tried again (RFC 1047)."""
    host = host_of(world, "slow-final")
    world.set_hostile(host, "slow-final", delay=5)
    relay = start_relay(command_timeout=30)
    slow = [f"slow{i}@hostile-slow-final.test" for i in range(5)]
    for i, recipient in enumerate(slow):
        send(relay, SENDER, [recipient], f"Subject: slow\r\n\r\nslow-token-8-{i}\r\n".encode())
    other = "quick@plain-mx2.test"
    submitted = time.monotonic()
    send(relay, SENDER, [other], b"Subject: quick\r\n\r\nquick-token-8\r\n")
    assert wait_for(lambda: sent(relay, other), timeout=3), relay.log_text()[-3000:]
    assert time.monotonic() - submitted < 3
    assert not [r for r in slow if sent(relay, r)], "a slow message was sent before its late reply"
    assert wait_for(lambda: all(sent(relay, r) for r in slow), timeout=60), relay.log_text()[-3000:]
    for i, recipient in enumerate(slow):
        assert [a[2] for a in attempts(relay, recipient)] == ["sent"], attempts(relay, recipient)
        got = [m for m in world.messages(host) if f"slow-token-8-{i}\r\n".encode() in m["data_bytes"]]
        assert len(got) == 1, (recipient, len(got))
    assert "may arrive twice" not in relay.log_text()
    for line in re.findall(r"to=<slow\d@hostile-slow-final\.test>.*", relay.log_text()):
        assert float(re.search(r"attempt-time=([0-9.]+)", line).group(1)) >= 4.5, line


# --- what the peer says, and how it is logged ---------------------------------------------------

RAW_CONTROL = (b"\x1b", b"\x00", b"\xff", b"\xfe", b"\x07", b"\x7f")


def test_control_bytes_in_replies_are_logged_escaped(world, start_relay):
    """Greeting and replies with NUL, ESC sequences (colour, OSC window title), DEL and invalid
    UTF-8: the accepted recipient is delivered, the rejected one bounces, and the daemon's log
    carries those bytes only in escaped form (``\\xNN``)."""
    host = host_of(world, "control-bytes")
    relay = start_relay()
    recipient, rejected = "ctl@hostile-control-bytes.test", "reject@hostile-control-bytes.test"
    content = b"Subject: control\r\n\r\ncontrol-token-9\r\n"
    send(relay, SENDER, [recipient, rejected], content)
    _, dsn, status, reason = outcome(relay, recipient)
    assert (status, dsn) == ("sent", "2.0.0"), reason
    assert reason.endswith(r"said: 250 2.0.0 ok: queued as " + reason.split("queued as ")[1].split(" ")[0]
                           + r" \x00 \x1B[31mred\x1B[0m \x1B]0;pwned\x07 \x7F \xFF\xFE"), reason
    _, dsn, status, reason = outcome(relay, rejected)
    assert (status, dsn) == ("bounced", "5.1.1"), reason
    assert r"550 5.1.1 rejected \x00 \x1B[31mred" in reason, reason
    got = [m for m in world.messages(host) if b"control-token-9" in m["data_bytes"]]
    assert len(got) == 1 and got[0]["rcpt_tos"] == [recipient]
    assert body_after_trace(got[0]["data_bytes"]) == content
    raw = relay.log_path.read_bytes()
    for escaped in (rb"\x1B[31m", rb"\x00", rb"\xFF", rb"\x1B]0;pwned\x07", rb"\x7F"):
        assert escaped in raw, escaped
    for byte in RAW_CONTROL:
        assert byte not in raw, (byte, raw[max(0, raw.find(byte) - 200):raw.find(byte) + 50])


def test_control_bytes_in_a_rejection_do_not_reach_the_bounce_raw(world, start_relay):
    """The DSN for a recipient rejected with control bytes in the reply text (to the sender's
    own MX here): its Diagnostic-Code names the reply, without a raw NUL, ESC, BEL, DEL or
    invalid UTF-8 byte (RFC 3464 §2.3.6 is text; a mail reader would show the ESC sequences)."""
    relay = start_relay()
    rejected = "reject-dsn@hostile-control-bytes.test"
    send(relay, SENDER, [rejected], b"From: sender@plain-mx2.test\r\nSubject: control dsn\r\n\r\ncontrol-token-9b\r\n")
    _, dsn, status, reason = outcome(relay, rejected)
    assert (status, dsn) == ("bounced", "5.1.1"), reason
    reports = wait_for(lambda: [m for m in world.messages("plain-mx2") if b"control-token-9b" in m["data_bytes"]
                                and b"report-type=delivery-status" in m["data_bytes"]], timeout=20)
    assert reports and len(reports) == 1, relay.log_text()[-3000:]
    body = reports[0]["data_bytes"]
    diagnostic = re.search(rb"Diagnostic-Code: smtp; ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", body)
    assert diagnostic and b"550 5.1.1 rejected" in diagnostic.group(1), body[:3000]
    present = [b for b in RAW_CONTROL if b in body]
    assert not present, (present, diagnostic.group(0))


def test_absurd_size_limit_is_not_a_bounce(world, start_relay):
    """EHLO offers ``SIZE 99999999999999999999999999`` (more than any integer type): the limit is
    unknown, not "no limit" nor a reason to bounce; the message is delivered and MAIL FROM
    carries SIZE=<its size> (RFC 1870)."""
    host = host_of(world, "huge-size")
    mark = len(world.hostile_events(host))
    relay = start_relay()
    recipient = "size@hostile-huge-size.test"
    content = b"Subject: size\r\n\r\nsize-token-10\r\n"
    send(relay, SENDER, [recipient], content)
    _, dsn, status, reason = outcome(relay, recipient)
    assert (status, dsn) == ("sent", "2.0.0"), reason
    got = [m for m in world.messages(host) if b"size-token-10" in m["data_bytes"]]
    assert len(got) == 1 and body_after_trace(got[0]["data_bytes"]) == content
    mails = [c for e in by_session(since(world, host, mark)).values() for c in commands(e)
             if c.upper().startswith("MAIL FROM:")]
    assert len(mails) == 1, mails
    size = re.search(r" SIZE=(\d+)(?: |$)", mails[0], re.I)
    assert size, mails[0]
    assert len(content) <= int(size.group(1)) <= len(got[0]["data_bytes"]) + 1024, (mails[0], got[0]["size"])


# --- regressions: slowloris, endless reply, bad code ---------------------------------------------

REGRESSIONS = ("slowloris", "endless-reply", "bad-code")


def test_slowloris_endless_reply_and_bad_code_are_deferred_without_harm(world, start_relay):
    """A greeting trickled at one byte per second that never ends, an endless EHLO reply and
    ``999 what``: each deferred within about command_timeout (5 s), nothing of the message sent,
    and the daemon goes on answering."""
    hosts = {b: host_of(world, b) for b in REGRESSIONS}
    marks = {b: len(world.hostile_events(h)) for b, h in hosts.items()}
    relay = start_relay(command_timeout=5)
    for b in REGRESSIONS:
        send(relay, SENDER, [f"r@hostile-{b}.test"], f"Subject: {b}\r\n\r\nregression-token-{b}\r\n".encode())
    for b in REGRESSIONS:
        _, dsn, status, reason = outcome(relay, f"r@hostile-{b}.test", timeout=30)
        assert status == "deferred" and dsn.startswith("4."), (b, dsn, status, reason)
        line = re.search(r"to=<r@hostile-" + re.escape(b) + r"\.test>.*attempt-time=([0-9.]+)", relay.log_text())
        assert float(line.group(1)) < 5 + 3, line.group(0)          # an overall deadline, not per byte
        events = since(world, hosts[b], marks[b])
        lines = [c.upper() for e in by_session(events).values() for c in commands(e)]
        assert not [c for c in lines if c.split(" ")[0] in ("MAIL", "RCPT", "DATA")], (b, lines)
        assert f"regression-token-{b}".encode() not in world.cleartext(hosts[b])
    assert wait_for(lambda: re.search(r"to=<r@hostile-slowloris\.test>.*dsn=4\.4\.2, status=deferred "
                                      r"\(conversation with [^ ]+ timed out while waiting for initial server greeting\)",
                                      relay.log_text()), timeout=1), relay.log_text()[-2000:]
    endless = [e for e in since(world, hosts["endless-reply"], marks["endless-reply"]) if e["event"] == "endless"]
    assert endless and not any(e["capped"] for e in endless), endless
    assert all(e["bytes"] < hostile.ENDLESS_CAP for e in endless)
    assert_alive(relay)
    for b in REGRESSIONS:
        assert not sent(relay, f"r@hostile-{b}.test")
