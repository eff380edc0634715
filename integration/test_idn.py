"""Internationalized domains (IDNA 2008, RFC 5890/5891 via libidn2) end to end in the test world.

A client writes a U-label domain (with SMTPUTF8); tlsrelayd converts it to its A-label (UTS #46
non-transitional: faß → xn--fa-hia), routes and looks up MX / TLSA / MTA-STS by the A-label,
checks certificate names against the A-label MX name and puts the A-label on the wire, so an
ASCII local part needs no SMTPUTF8 at the next hop (RFC 6531 §3.2) while a UTF-8 local part to
a next hop without SMTPUTF8 bounces 5.6.7 (RFC 6531 §3.4). Domains IDNA 2008 refuses get
553 5.1.3 at RCPT (5.1.7 at MAIL). World scenarios: idn-dane (bücher.test), idn-sts (faß.test),
idn-no-smtputf8 (müller.test, MX without SMTPUTF8).
"""
import json
import re
import smtplib
import subprocess

import pytest
from aiosmtpd.controller import Controller

from postfix_client import running_postfix
from relay import CTL, Relay, free_port, wait_for
from test_delivery_behaviour import body_after_trace

BUECHER, BUECHER_A = "bücher.test", "xn--bcher-kva.test"
FASS, FASS_A = "faß.test", "xn--fa-hia.test"
MUELLER, MUELLER_A = "müller.test", "xn--mller-kva.test"


class DSNRelay:
    """The upstream MTA (delivery.dsn_relay): records every DSN it is sent."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                              "mail_options": list(envelope.mail_options), "data": envelope.original_content})
        return "250 2.0.0 Ok: queued"


@pytest.fixture(scope="module")
def dsn_relay():
    upstream = DSNRelay()
    controller = Controller(upstream, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=True)
    controller.start()
    upstream.address = f"[127.0.0.1]:{controller.port}"
    yield upstream
    controller.stop()


@pytest.fixture(scope="module")
def relay(world, dsn_relay, tmp_path_factory):
    toml = world.relay_sections(
        dns_extra="timeout = 3\n",
        delivery_extra="min_backoff = 3600\nmax_backoff = 3600\nconnect_timeout = 5\ncommand_timeout = 10\n",
        dsn_relay=dsn_relay.address)
    relay = Relay(tmp_path_factory.mktemp("idn"), extra_toml=toml).start()
    yield relay
    relay.stop()


def submit(relay, sender, recipients, content, options=("SMTPUTF8", "BODY=8BITMIME")):
    """One transaction through smtplib (UTF-8 addresses once SMTPUTF8 is on MAIL FROM); returns
    the queue id."""
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo("client.example.org")
        code, reply = s.mail(sender, list(options))
        assert code == 250, reply
        for r in recipients:
            code, reply = s.rcpt(r)
            assert code == 250, (r, reply)
        code, reply = s.data(content)
        assert code == 250, reply
    return reply.decode().split()[-1]


def status_line(relay, queue_id, recipient, timeout=30):
    """The final status of one recipient: (relay, dsn, status, tls, text)."""
    pattern = (re.escape(queue_id) + r": to=<" + re.escape(recipient) + r">, relay=([^,]*), .*?dsn=([0-9.]+), "
               r"status=(sent|bounced|deferred)(?:, tls=([\w-]+))? \((.*)\)")
    m = wait_for(lambda: re.search(pattern, relay.log_text()), timeout=timeout)
    assert m, f"no status line for {recipient}:\n{relay.log_text()[-3000:]}"
    return m.groups()


def mine(world, host, token):
    return [m for m in world.messages(host) if token in m["data_bytes"]]


def client_lines(world, host, token=None):
    """The command lines the relay sent a host, in the sessions that carried ``token`` (all
    sessions when None)."""
    sessions = world.sessions(host)
    if token is not None:
        ids = {m["session"] for m in mine(world, host, token)}
        sessions = [s for s in sessions if s["id"] in ids]
    return [line[3:] for s in sessions for line in s["transcript"] if line.startswith("C: ")]


def message(token, to):
    # ASCII header fields, 8-bit UTF-8 body (BODY=8BITMIME): nothing in it needs SMTPUTF8.
    return (f"From: sender@example.org\r\nTo: <{to}>\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@idn.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"Grüße aus der Bücherei, {token}\r\n.leading dot\r\n").encode()


def test_u_label_domain_delivered_over_dane_with_the_a_label_on_the_wire(world, relay):
    token = "idn-dane-token"
    content = message(token, "user@" + BUECHER_A)
    queue_id = submit(relay, "absender@" + BUECHER, ["user@" + BUECHER], content)
    log = relay.log_text()
    assert f"{queue_id}: client=localhost[127.0.0.1], helo=<client.example.org>, from=<absender@{BUECHER}>, size=" in log
    assert re.search(re.escape(queue_id) + r": .*, nrcpt=1, IDN bücher\.test \(xn--bcher-kva\.test\) \(queued\)", log), log
    host = world.scenario("idn-dane")["mx"][0]
    peer, dsn, status, tls, text = status_line(relay, queue_id, "user@" + BUECHER)
    assert (dsn, status, tls) == ("2.0.0", "sent", "dane") and peer.startswith(f"mx.{BUECHER_A}["), text
    log = relay.log_text()
    assert (f"{queue_id}: delivering to {BUECHER} ({BUECHER_A}): DNS, DANE and MTA-STS use the A-label form (RFC 5891)") in log
    leaf = host["tlsa"][0]
    assert re.search(re.escape(f"{queue_id}: Verified TLS connection established to mx.{BUECHER_A}[{host['address']}]:25: ")
                     + r"TLSv1\.[23] with cipher \S+; DANE TLSA " + re.escape(leaf) + " matched at depth 0", log), log
    got = mine(world, "idn-dane", token.encode())
    assert len(got) == 1
    m = got[0]
    assert m["mail_from"] == "absender@" + BUECHER_A and m["rcpt_tos"] == ["user@" + BUECHER_A]
    assert "SMTPUTF8" not in m["mail_options"], m["mail_options"]    # ASCII local parts: not needed
    assert m["tls"] and m["sni"] == f"mx.{BUECHER_A}"
    assert body_after_trace(m["data_bytes"]) == content                 # content unchanged
    lines = client_lines(world, "idn-dane", token.encode())
    assert f"RCPT TO:<user@{BUECHER_A}>" in lines
    assert all(line.isascii() for line in lines), lines
    assert token.encode() not in world.cleartext(host["name"])


def test_non_transitional_a_label_and_mta_sts_by_the_a_label(world, relay):
    """faß.test is xn--fa-hia.test (UTS #46 non-transitional), never fass.test (NXDOMAIN here);
    its MTA-STS policy is fetched from mta-sts.<A-label> and names the A-label MX."""
    token = "idn-sts-token"
    content = message(token, "user@" + FASS_A)
    queue_id = submit(relay, "sender@example.org", ["user@" + FASS], content)
    assert re.search(re.escape(queue_id) + r": .*, nrcpt=1, IDN faß\.test \(xn--fa-hia\.test\) \(queued\)", relay.log_text())
    peer, dsn, status, tls, text = status_line(relay, queue_id, "user@" + FASS)
    assert (dsn, status, tls) == ("2.0.0", "sent", "mta-sts") and peer.startswith(f"mx.{FASS_A}["), text
    log = relay.log_text()
    assert f"{queue_id}: delivering to {FASS} ({FASS_A}): DNS, DANE and MTA-STS use the A-label form (RFC 5891)" in log
    assert f"{queue_id}: MTA-STS policy of {FASS_A}: mode enforce, mx mx.{FASS_A}" in log
    assert "fass.test" not in log
    requests = world.sts_requests("idn-sts")
    assert requests and all(r["sni"] == r["host"] == f"mta-sts.{FASS_A}" and r["status"] == 200 for r in requests)
    got = mine(world, "idn-sts", token.encode())
    assert len(got) == 1 and got[0]["rcpt_tos"] == ["user@" + FASS_A] and got[0]["tls"]
    assert body_after_trace(got[0]["data_bytes"]) == content


def test_ascii_local_part_needs_no_smtputf8_at_the_next_hop(world, relay):
    token = "idn-ascii-local-token"
    content = message(token, "user@" + MUELLER_A)
    queue_id = submit(relay, "sender@example.org", ["user@" + MUELLER], content)
    peer, dsn, status, tls, text = status_line(relay, queue_id, "user@" + MUELLER)
    assert (dsn, status, tls) == ("2.0.0", "sent", "dane"), text
    got = mine(world, "idn-no-smtputf8", token.encode())
    assert len(got) == 1
    assert got[0]["rcpt_tos"] == ["user@" + MUELLER_A] and "SMTPUTF8" not in got[0]["mail_options"]
    assert body_after_trace(got[0]["data_bytes"]) == content
    # The world's side: this MX really does not announce SMTPUTF8.
    transcript = [line for s in world.sessions("idn-no-smtputf8") if s["id"] == got[0]["session"] for line in s["transcript"]]
    assert any(line.startswith("S: 250-8BITMIME") for line in transcript)
    assert not any("SMTPUTF8" in line for line in transcript), transcript


def test_utf8_local_part_to_a_next_hop_without_smtputf8_bounces_5_6_7(world, relay, dsn_relay):
    token = "idn-utf8-local-token"
    sender = "sender-567@example.org"
    queue_id = submit(relay, sender, ["jürgen@" + MUELLER], message(token, "user@" + MUELLER_A))
    peer, dsn, status, tls, text = status_line(relay, queue_id, "jürgen@" + MUELLER)
    assert (dsn, status) == ("5.6.7", "bounced"), text
    assert "SMTPUTF8" in text
    dsns = wait_for(lambda: [d for d in dsn_relay.messages if d["rcpt_tos"] == [sender]], timeout=30)
    assert dsns and len(dsns) == 1, relay.log_text()[-3000:]
    report = dsns[0]["data"]
    assert dsns[0]["mail_from"] in ("", "<>")
    assert b"report-type=delivery-status" in report and b"Status: 5.6.7" in report
    assert "jürgen@müller.test".encode() in report and token.encode() in report
    assert f"goes to the DSN relay {dsn_relay.address}" in relay.log_text()
    # Nothing non-ASCII was sent to the MX and nothing arrived there.
    assert mine(world, "idn-no-smtputf8", token.encode()) == []
    assert all(line.isascii() for line in client_lines(world, "idn-no-smtputf8")), client_lines(world, "idn-no-smtputf8")


def test_mixed_transaction_only_the_utf8_local_part_bounces(world, relay, dsn_relay):
    """One transaction to müller.test: user@ (ASCII local part) is deliverable without SMTPUTF8,
    only jürgen@ needs it and bounces 5.6.7."""
    token = "idn-mixed-token"
    sender = "sender-mixed@example.org"
    queue_id = submit(relay, sender, ["user@" + MUELLER, "jürgen@" + MUELLER], message(token, "user@" + MUELLER_A))
    assert status_line(relay, queue_id, "jürgen@" + MUELLER)[1:3] == ("5.6.7", "bounced")
    peer, dsn, status, tls, text = status_line(relay, queue_id, "user@" + MUELLER)
    assert (dsn, status, tls) == ("2.0.0", "sent", "dane"), text
    got = mine(world, "idn-no-smtputf8", token.encode())
    assert len(got) == 1 and got[0]["rcpt_tos"] == ["user@" + MUELLER_A]
    dsns = wait_for(lambda: [d for d in dsn_relay.messages if d["rcpt_tos"] == [sender]], timeout=30)
    assert dsns and b"Status: 5.6.7" in dsns[0]["data"] and b"rfc822; user@" not in dsns[0]["data"]


def test_utf8_local_part_to_an_smtputf8_next_hop(world, relay):
    token = "idn-utf8-smtputf8-token"
    content = message(token, "user@" + BUECHER_A)
    queue_id = submit(relay, "sender@example.org", ["jürgen@" + BUECHER], content)
    peer, dsn, status, tls, text = status_line(relay, queue_id, "jürgen@" + BUECHER)
    assert (dsn, status, tls) == ("2.0.0", "sent", "dane"), text
    got = mine(world, "idn-dane", token.encode())
    assert len(got) == 1
    # The UTF-8 local part stays, the domain goes as the A-label, SMTPUTF8 on MAIL FROM.
    assert got[0]["rcpt_tos"] == ["jürgen@" + BUECHER_A] and "SMTPUTF8" in got[0]["mail_options"]
    assert body_after_trace(got[0]["data_bytes"]) == content


@pytest.mark.parametrize("domain,reason", [
    ("\u0301a.test", "combining"),    # starts with a combining mark (RFC 5891 §4.2.3.2)
    ("☃.test", "disallowed"),         # U+2603 is DISALLOWED in IDNA 2008
])
def test_invalid_idn_is_refused_and_nothing_is_queued(relay_factory, domain, reason):
    relay = relay_factory("invalid-idn")
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.ehlo("client.example.org")
        assert s.mail("a@example.org", ["SMTPUTF8"])[0] == 250
        code, reply = s.rcpt("user@" + domain)
        text = reply.decode()
        assert code == 553 and text.startswith(f"5.1.3 {domain} is not a valid internationalized domain name (RFC 5891): "), text
        assert reason in text
        assert s.rcpt("ok@example.net")[0] == 250                  # the transaction goes on
        assert s.rset()[0] == 250
        code, reply = s.mail(f"a@{domain}", ["SMTPUTF8"])
        assert code == 553 and reply.decode().startswith(f"5.1.7 {domain} is not a valid internationalized domain name (RFC 5891): ")
        assert s.rcpt("ok@example.net")[0] == 503                  # no transaction was opened
        assert s.mail("a@example.org", ["SMTPUTF8"])[0] == 250
        assert s.rcpt("user@" + domain)[0] == 553
        assert s.docmd("DATA")[0] in (503, 554)                    # no valid recipient: no message
    assert relay.queued() == {} and relay.temporary_files() == []
    log = relay.log_text()
    # (the command as the client wrote it: smtplib writes "rcpt TO:")
    assert re.search(r"NOQUEUE: reject: rcpt TO:<user@" + re.escape(domain) + r"> from \S+\[127\.0\.0\.1\]: 553 5\.1\.3 ", log, re.I), log
    assert "(queued)" not in log


def ctl(relay, *args):
    return subprocess.run([str(CTL), *args, "--config", str(relay.config)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("scenario,written,ascii,evidence", [
    ("idn-dane", BUECHER, BUECHER_A, "DANE TLSA 3 1 1 matched at depth 0"),
    ("idn-sts", FASS, FASS_A, "policy: mta-sts; TLS required, WebPKI for mx.xn--fa-hia.test"),
])
def test_check_names_both_forms_and_checks_the_a_label(world, relay, scenario, written, ascii, evidence):
    result = ctl(relay, "check", written)
    out = result.stdout
    assert out.splitlines()[0] == f"{written} ({ascii})", out
    assert result.returncode == 0, out + result.stderr
    assert f"10 mx.{ascii} [DNSSEC: secure]" in out and evidence in out, out
    report = json.loads(ctl(relay, "check", written, "--json").stdout)
    assert report["deliverable"] is True


def test_check_refuses_an_invalid_idn(relay):
    result = ctl(relay, "check", "☃.test")
    assert result.returncode == 2
    assert "☃.test is not a valid internationalized domain name" in result.stderr


def test_queue_flush_by_u_label_domain(world, relay):
    token = "idn-flush-token"
    world.set_mx_behaviour("idn-dane", rcpt={"*": "450 4.2.0 Mailbox busy, try later"})
    try:
        queue_id = submit(relay, "sender@example.org", ["flush@" + BUECHER], message(token, "flush@" + BUECHER_A))
        assert status_line(relay, queue_id, "flush@" + BUECHER)[1:3] == ("4.2.0", "deferred")
        world.clear_mx_behaviour("idn-dane")
        flushed = ctl(relay, "queue", "flush", "--domain", BUECHER)
        assert flushed.returncode == 0 and "1 message(s) scheduled" in flushed.stdout, flushed.stdout + flushed.stderr
    finally:
        world.clear_mx_behaviour("idn-dane")
    sent = wait_for(lambda: re.search(re.escape(queue_id) + r": to=<flush@bücher\.test>, .*status=sent, tls=dane", relay.log_text()), timeout=30)
    assert sent, relay.log_text()[-3000:]
    got = mine(world, "idn-dane", token.encode())
    assert len(got) == 1 and got[0]["rcpt_tos"] == ["flush@" + BUECHER_A]


def test_postfix_passes_a_utf8_recipient_domain_through(world, relay):
    """Real Postfix (smtputf8_enable = yes) sends the U-label address with SMTPUTF8; the MX gets
    the A-label."""
    token = "idn-postfix-token"
    content = (f"From: alice@example.org\nTo: user@{BUECHER}\nSubject: Grüße {token}\n"
               f"Date: Sun, 29 Nov 2026 10:00:00 +0000\nMessage-ID: <{token}@example.org>\nMIME-Version: 1.0\n"
               "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
               f"Grüße, {token}\n").encode()
    with running_postfix(relay.port) as postfix:
        postfix.sendmail("alice@example.org", ["user@" + BUECHER], content)
        queued = wait_for(lambda: re.search(r"(\w+): client=localhost\[127\.0\.0\.1\], helo=<client\.example\.org>, "
                                            r"from=<alice@example\.org>, size=\d+, nrcpt=1, IDN bücher\.test \(xn--bcher-kva\.test\) \(queued\)",
                                            relay.log_text()), timeout=60)
        assert queued, "postfix log:\n" + postfix.maillog() + "\nrelay log:\n" + relay.log_text()[-3000:]
        assert wait_for(lambda: re.search(r"to=<user@bücher\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent", postfix.maillog()), timeout=30), postfix.maillog()
    queue_id = queued.group(1)
    peer, dsn, status, tls, text = status_line(relay, queue_id, "user@" + BUECHER)
    assert (dsn, status, tls) == ("2.0.0", "sent", "dane"), text
    got = mine(world, "idn-dane", token.encode())
    assert len(got) == 1 and got[0]["rcpt_tos"] == ["user@" + BUECHER_A] and got[0]["mail_from"] == "alice@example.org"
    # Byte-exact apart from the trace fields (Postfix's and ours).
    assert body_after_trace(got[0]["data_bytes"]) == content.replace(b"\n", b"\r\n")
