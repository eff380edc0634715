"""The inbound ESMTP server against real clients: Python's smtplib, swaks and raw sockets.

Every error path is checked for its reply code and enhanced status code (RFC 3463), and that
nothing is queued when a message is refused.
"""
import re
import smtplib
import subprocess
import time

import pytest

from smtpclient import RawSMTP


def ehlo(port, **kw):
    c = RawSMTP(port, **kw)
    assert c.code().startswith("220 ")
    code, lines = (c.send("EHLO client.example.org\r\n"), c.reply())[1]
    assert code == 250
    return c, lines


def test_ehlo_advertises_extensions(relay):
    c, lines = ehlo(relay.port)
    assert lines == ["relay.example.org", "PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8",
                     "ENHANCEDSTATUSCODES", "DSN"]
    assert c.command("QUIT").startswith("221 2.0.0")


def test_smtplib_message_is_queued_byte_exact(relay):
    body = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\n\r\n"
            b".leading dot line\r\nline two\r\n\r\n")
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo("client.example.org")
        refused = s.sendmail("a@example.org", ["b@example.net", "c@example.net"], body,
                             mail_options=["BODY=7BIT", "RET=HDRS", "ENVID=abc"],
                             rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;b@example.net"])
        assert refused == {}
    queued = relay.queued()
    assert len(queued) == 1
    envelope, content = next(iter(queued.values()))
    header, rest = content.split(b"\r\n", 1)
    assert header.startswith(b"Received: from client.example.org ([127.0.0.1])")
    # Received header is three folded lines only when there is one recipient; here two.
    assert rest.split(b"\r\n", 1)[0].startswith(b"\tby relay.example.org (tlsrelay) with ESMTP id ")
    assert rest.split(b"\r\n", 1)[1] == body
    tx = envelope["transaction"]
    assert tx["sender"] == {"localPart": "a", "domain": "example.org"}
    assert [r["mailbox"]["localPart"] for r in tx["recipients"]] == ["b", "c"]
    assert tx["recipients"][0]["notify"] == {"never": False, "success": False, "failure": True, "delay": True}
    assert tx["recipients"][0]["originalRecipient"] == {"addressType": "rfc822", "address": "b@example.net"}
    assert tx["parameters"]["ret"] == "HDRS" and tx["parameters"]["envelopeID"] == "abc"
    assert envelope["heloName"] == "client.example.org" and envelope["clientAddress"] == "127.0.0.1"
    assert envelope["size"] == len(content)
    assert relay.temporary_files() == []
    assert "nrcpt=2 (queued)" in relay.log_text()


def test_smtputf8_and_8bitmime(relay):
    body = "From: jöran@exämple.org\r\nSubject: grüße\r\n\r\nnon-ASCII body: ünïcödé 用户\r\n".encode()
    c, _ = ehlo(relay.port)
    assert c.command("MAIL FROM:<jöran@exämple.org> SMTPUTF8 BODY=8BITMIME").startswith("250 2.1.0")
    assert c.command("RCPT TO:<用户@example.net>").startswith("250 2.1.5")
    # IDNA 2008: the domain is kept as written and its A-label stored beside it for routing.
    assert c.command("RCPT TO:<用户@例子.广告>").startswith("250 2.1.5")
    assert c.command("DATA").startswith("354")
    c.send(body + b".\r\n")
    assert c.code().startswith("250 2.0.0 Ok: queued as ")
    envelope, content = next(iter(relay.queued().values()))
    assert content.endswith(body)
    assert b"with UTF8SMTP id" in content
    assert envelope["transaction"]["parameters"]["smtputf8"] is True
    assert envelope["transaction"]["parameters"]["body"] == "8BITMIME"
    assert envelope["transaction"]["recipients"][0]["mailbox"] == {"localPart": "用户", "domain": "example.net"}
    idn = envelope["transaction"]["recipients"][1]["mailbox"]
    assert (idn["localPart"], idn["domain"]) == ("用户", "例子.广告")
    assert all(label.startswith("xn--") for label in idn["asciiDomain"].split(".")), idn
    assert envelope["transaction"]["sender"]["asciiDomain"] == "xn--exmple-cua.org"
    # Without SMTPUTF8 a non-ASCII address is refused (RFC 6531 §3.5).
    assert c.command("MAIL FROM:<jöran@exämple.org>").startswith("553 5.6.7")


def test_pipelining_replies_in_order(relay):
    c = RawSMTP(relay.port)
    c.code()
    c.send("EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
           "RCPT TO:<bad address>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
    codes = [c.reply()[0] for _ in range(6)]
    assert codes == [250, 250, 250, 501, 250, 354]
    # Content, end of data and the next transaction in one write.
    c.send("Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n")
    assert c.code().startswith("250 2.0.0 Ok: queued as")
    assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
    c.send("Subject: two\r\n\r\n.\r\nQUIT\r\n")
    assert c.code().startswith("250 2.0.0")
    assert c.code().startswith("221")
    queued = relay.queued()
    assert len(queued) == 2
    senders = sorted((e["transaction"].get("sender") or {}).get("localPart", "<>") for e, _ in queued.values())
    assert senders == ["<>", "a"]


@pytest.mark.parametrize("payload", [
    b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@example.org>\r\n.\r\n",
    b"Subject: x\r\n\r\nline\r\n.\nMAIL FROM:<evil@example.org>\r\n.\r\n",
    b"Subject: x\r\n\r\nline\n.\r\nMAIL FROM:<evil@example.org>\r\n.\r\n",
    b"Subject: x\r\n\r\nline\r.\rMAIL FROM:<evil@example.org>\r\n.\r\n",
    b"Subject: x\r\n\r\nbare\rCR\r\n.\r\n",
])
def test_smuggling_and_bare_line_endings_are_refused(relay, payload):
    c, _ = ehlo(relay.port)
    c.command("MAIL FROM:<a@example.org>")
    c.command("RCPT TO:<b@example.net>")
    assert c.command("DATA").startswith("354")
    c.send(payload)
    assert c.code().startswith("554 5.5.2")
    # The session is intact and nothing was queued: the smuggled MAIL was content, not a command.
    assert c.command("NOOP").startswith("250 2.0.0")
    assert relay.queued() == {}
    assert relay.temporary_files() == []


def test_refusals_are_logged_and_non_utf8_is_named(relay):
    c, _ = ehlo(relay.port)
    c.command("MAIL FROM:<a@example.org>")
    assert c.command("RCPT TO:<b@[192.0.2.1]>").startswith("550 5.7.1")
    c.send(b"NOOP \xff\r\n")
    assert "not UTF-8" in c.code()
    log = relay.log_text()
    assert re.search(r"NOQUEUE: reject: RCPT TO:<b@\[192\.0\.2\.1\]> from (localhost|unknown)\[127\.0\.0\.1\]: 550 5\.7\.1 .*; helo=<client\.example\.org>", log), log


def test_bare_lf_in_command(relay):
    c = RawSMTP(relay.port)
    c.code()
    c.send("EHLO client.example.org\nNOOP\r\n")
    assert c.code().startswith("500 5.5.2")
    assert c.code().startswith("250 2.0.0")


@pytest.mark.parametrize("line,expected", [
    ("MAIL FROM:<a@example.org> SIZE=99999999", "552 5.3.4"),
    ("MAIL FROM:<a@example.org> BODY=BINARYMIME", "555 5.5.4"),
    ("MAIL FROM:<a@example.org> FOO=1", "555 5.5.4"),
    ("MAIL FROM:<broken", "501 5.5.2"),
    ("MAIL FROM:<a@b@c>", "501 5.1.7"),
    ("RCPT TO:<b@example.net>", "503 5.5.1"),
    ("DATA", "503 5.5.1"),
    ("VRFY someone", "252 2.5.0"),
    ("EXPN list", "502 5.5.1"),
    ("STARTTLS", "502 5.5.1"),
    ("AUTH LOGIN", "502 5.5.1"),
    ("BDAT 1 LAST", "502 5.5.1"),
    ("XYZZY", "500 5.5.2"),
    ("HELP", "214 2.0.0"),
])
def test_command_error_paths(relay_factory, line, expected):
    relay = relay_factory(max_message_size=1048576)
    c, _ = ehlo(relay.port)
    assert c.command(line).startswith(expected)


def test_recipient_errors(relay):
    c, _ = ehlo(relay.port)
    c.command("MAIL FROM:<a@example.org>")
    assert c.command("RCPT TO:<b@[192.0.2.1]>").startswith("550 5.7.1")
    assert c.command("RCPT TO:<postmaster>").startswith("501 5.1.3")
    assert c.command("RCPT TO:<b@example.net> NOTIFY=NEVER,DELAY").startswith("501 5.5.4")
    assert c.command("DATA").startswith("554 5.5.1")


def test_message_too_large_is_refused_after_data(relay_factory):
    relay = relay_factory(max_message_size=4096)
    c, lines = ehlo(relay.port)
    assert "SIZE 4096" in lines
    c.command("MAIL FROM:<a@example.org>")
    c.command("RCPT TO:<b@example.net>")
    c.command("DATA")
    c.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100 + b".\r\n")
    assert c.code().startswith("552 5.3.4")
    assert relay.queued() == {} and relay.temporary_files() == []


def test_line_limits(relay_factory):
    relay = relay_factory(max_line_length=1000, max_command_line_length=512)
    c, _ = ehlo(relay.port)
    assert c.command("NOOP " + "x" * 600).startswith("500 5.5.2")
    c.command("MAIL FROM:<a@example.org>")
    c.command("RCPT TO:<b@example.net>")
    c.command("DATA")
    c.send(b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")
    assert c.code().startswith("554 5.6.0")
    assert relay.queued() == {}


def test_recipient_limit(relay_factory):
    relay = relay_factory(max_recipients=100)
    c, _ = ehlo(relay.port)
    c.command("MAIL FROM:<a@example.org>")
    for i in range(100):
        assert c.command(f"RCPT TO:<r{i}@example.net>").startswith("250 2.1.5")
    assert c.command("RCPT TO:<r100@example.net>").startswith("452 4.5.3")


def test_client_outside_allowed_clients_gets_554(relay_factory):
    relay = relay_factory(allowed_clients=["127.0.0.1/32"])
    c = RawSMTP(relay.port, source="127.0.0.2")
    assert c.code().startswith("554 5.7.1")
    # RFC 5321 §3.1: the server waits for QUIT and answers anything else with 503.
    assert c.command("EHLO intruder.example").startswith("503 5.5.1")
    assert c.command("MAIL FROM:<a@example.org>").startswith("503 5.5.1")
    assert c.command("QUIT").startswith("221")
    assert c.closed()
    assert "554 5.7.1" in relay.log_text()
    # A refused client that never says QUIT is closed after server's bound (10 s).
    silent = RawSMTP(relay.port, source="127.0.0.2")
    assert silent.code().startswith("554 5.7.1")
    started = time.time()
    assert silent.closed(wait=20)
    assert time.time() - started < 15
    ok = RawSMTP(relay.port, source="127.0.0.1")
    assert ok.code().startswith("220 ")


def test_connection_limit(relay_factory):
    relay = relay_factory(max_connections=2)
    held = [RawSMTP(relay.port) for _ in range(2)]
    for c in held:
        assert c.code().startswith("220")
    third = RawSMTP(relay.port)
    assert third.code().startswith("421 4.7.0")
    assert third.closed()
    held[0].command("QUIT")
    held[0].close()
    deadline = time.time() + 5
    while time.time() < deadline:
        c = RawSMTP(relay.port)
        if c.code().startswith("220"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("slot was not freed after QUIT")


def test_idle_timeout(relay_factory):
    relay = relay_factory(idle_timeout=1)
    c = RawSMTP(relay.port)
    c.code()
    assert c.code().startswith("421 4.4.2")
    assert c.closed()


def test_too_many_errors_disconnects(relay):
    c, _ = ehlo(relay.port)
    replies = [c.command("BOGUS") for _ in range(19)]
    assert all(r.startswith("500 5.5.2") for r in replies)
    c.send("BOGUS\r\n")
    assert c.code().startswith("500 5.5.2")
    assert c.code().startswith("421 4.7.0")
    assert c.closed()


def test_swaks(relay):
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{relay.port}", "--from", "a@example.org", "--to", "b@example.net",
         "--ehlo", "swaks.example.org", "--pipeline", "--body", "hello from swaks"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    envelope, content = next(iter(relay.queued().values()))
    assert b"hello from swaks" in content
    # swaks for a refused recipient: exit code 24 = "RCPT TO" rejected
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{relay.port}", "--from", "a@example.org", "--to", "b@[192.0.2.1]"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 24
    assert "550 5.7.1" in result.stdout


def test_sigterm_finishes_open_transaction(relay):
    c, _ = ehlo(relay.port)
    c.command("MAIL FROM:<a@example.org>")
    c.command("RCPT TO:<b@example.net>")
    assert c.command("DATA").startswith("354")
    c.send(b"Subject: during shutdown\r\n\r\n")
    relay.process.send_signal(15)
    time.sleep(0.3)
    c.send(b"still here\r\n.\r\n")
    assert c.code().startswith("250 2.0.0")
    assert c.command("NOOP").startswith("421 4.3.2")
    assert relay.process.wait(timeout=20) == 0
    assert len(relay.queued()) == 1


def test_client_that_never_reads_replies_cannot_grow_memory(relay):
    """Replies to a client that does not read pile up; the server stops reading from it instead."""
    c = RawSMTP(relay.port)
    c.code()
    c.sock.sendall(b"EHLO client.example.org\r\n")
    c.sock.setblocking(False)
    chunk = b"NOOP\r\n" * 100000
    sent, deadline = 0, time.time() + 5
    while time.time() < deadline and sent < 60_000_000:
        try:
            sent += c.sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    rss_kib = int([l for l in open(f"/proc/{relay.process.pid}/status") if l.startswith("VmRSS")][0].split()[1])
    assert sent < 30_000_000, f"the server kept reading: {sent} bytes accepted"
    assert rss_kib < 300 * 1024, f"RSS grew to {rss_kib} KiB"
