"""Real Postfix, configured with relayhost = [127.0.0.1]:PORT, hands mail to tlsrelayd: in clear
(TLS off for that hop, the README's form) and over STARTTLS (smtp_tls_security_level encrypt,
and secure with the relay's name)."""
import re
import sys

import pytest

from postfix_client import running_postfix
from relay import ROOT, wait_for

sys.path.insert(0, str(ROOT / "testworld"))
from pki import PKI  # noqa: E402


@pytest.fixture
def postfix(relay):
    with running_postfix(relay.port) as client:
        yield client




def strip_trace(content: bytes) -> bytes:
    """Drops the leading Received: fields (ours and Postfix's) with their folded lines."""
    lines = content.split(b"\r\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"Received:"):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\r\n".join(lines[i:])


def test_postfix_relays_through_tlsrelay(relay, postfix):
    message = (b"From: Alice <alice@example.org>\r\n"
               b"To: Bob <bob@example.net>\r\n"
               b"Subject: via Postfix\r\n"
               b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n"
               b"Message-ID: <postfix-test-1@example.org>\r\n"
               b"MIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: 8bit\r\n"
               b"\r\n"
               b".a line that starts with a dot\r\n"
               b"8-bit: \xc3\xbcml\xc3\xa4ut\r\n"
               b"\r\n"
               b"last line\r\n")
    postfix.sendmail("alice@example.org", ["bob@example.net", "carol@example.com"], message.replace(b"\r\n", b"\n"),
                     extra=["-N", "failure,delay", "-V", "envid-42"])
    queued = wait_for(lambda: relay.queued(), timeout=60)
    assert queued, "nothing reached tlsrelay's spool; postfix log:\n" + postfix.maillog() + "\nrelay log:\n" + relay.log_text()
    assert len(queued) == 1
    queue_id, (envelope, content) = next(iter(queued.items()))
    tx = envelope["transaction"]
    assert tx["sender"] == {"localPart": "alice", "domain": "example.org"}
    assert sorted(r["mailbox"]["localPart"] + "@" + r["mailbox"]["domain"] for r in tx["recipients"]) == \
        ["bob@example.net", "carol@example.com"]
    # Postfix passes DSN parameters on (RFC 3461).
    assert all(r["notify"] == {"never": False, "success": False, "failure": True, "delay": True} for r in tx["recipients"])
    assert all(r["originalRecipient"]["addressType"] == "rfc822" for r in tx["recipients"])
    assert tx["parameters"]["envelopeID"] == "envid-42"
    assert tx["parameters"]["body"] == "8BITMIME"
    assert envelope["heloName"] == "client.example.org"
    # Byte-exact apart from trace headers.
    assert content.startswith(b"Received: from client.example.org ([127.0.0.1])")
    assert strip_trace(content) == message
    # Postfix saw the 250 with our queue id, and tlsrelay logged the message.
    assert wait_for(lambda: re.search(r"status=sent \(250 2\.0\.0 Ok: queued as " + queue_id, postfix.maillog()), timeout=20)
    # Postfix's form: the verified reverse name (libunbound's built-in localhost zones), then HELO.
    assert f"{queue_id}: client=localhost[127.0.0.1], helo=<client.example.org>, from=<alice@example.org>" in relay.log_text()


# --- over STARTTLS (RFC 3207): Postfix with smtp_tls_security_level encrypt or secure ----------

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: via Postfix over TLS\r\n"
           b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <postfix-tls-1@example.org>\r\n\r\nbody over starttls\r\n")


@pytest.fixture
def tls_cert(tmp_path):
    pki = PKI(str(tmp_path / "pki"))
    return pki, pki.issue("relay", "relay.example.org")


@pytest.mark.parametrize("level,established", [
    ("encrypt", "Trusted TLS connection established"),               # chain checked, name not
    ("secure match=relay.example.org", "Verified TLS connection established"),
], ids=["encrypt", "secure"])
def test_postfix_relays_over_starttls(relay_factory, tls_cert, level, established):
    pki, cert = tls_cert
    relay = relay_factory(name="tls", extra_toml="[delivery]\nhold = true\n", starttls="offered",
                          tls_certificate_chain_file=cert["chain_file"], tls_private_key_file=cert["key_file"])
    with running_postfix(relay.port, relay_tls=level, ca_file=pki.ca_file) as postfix:
        postfix.sendmail("alice@example.org", ["bob@example.net"], MESSAGE.replace(b"\r\n", b"\n"))
        queued = wait_for(lambda: relay.queued(), timeout=60)
        assert queued, "nothing reached tlsrelay's spool; postfix log:\n" + postfix.maillog() + "\nrelay log:\n" + relay.log_text()
        (queue_id, (envelope, content)), = queued.items()
        assert wait_for(lambda: re.search(r"status=sent \(250 2\.0\.0 Ok: queued as " + queue_id, postfix.maillog()), timeout=20)
        maillog = postfix.maillog()
    assert re.search(established + r" to 127\.0\.0\.1\[127\.0\.0\.1\]:" + str(relay.port) +
                     r": TLSv1\.3 with cipher TLS_AES_256_GCM_SHA384", maillog), maillog
    assert re.search(r"STARTTLS from (localhost|unknown)\[127\.0\.0\.1\]: using TLSv1\.3 with cipher TLS_AES_256_GCM_SHA384 \(256/256 bits\)",
                     relay.log_text()), relay.log_text()
    lines = content.split(b"\r\n")
    assert lines[0] == b"Received: from client.example.org ([127.0.0.1])"
    assert lines[1] == b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))"
    assert lines[2] == b"\tby relay.example.org (tlsrelay) with ESMTPS id " + queue_id.encode()
    assert strip_trace(content) == MESSAGE
    assert envelope["transaction"]["sender"] == {"localPart": "alice", "domain": "example.org"}


def test_postfix_at_encrypt_defers_when_the_relay_offers_no_starttls(relay_factory):
    """The control: smtp_tls_security_level encrypt is in force; without STARTTLS at the relay
    Postfix keeps the message."""
    relay = relay_factory(name="clear", extra_toml="[delivery]\nhold = true\n")
    with running_postfix(relay.port, relay_tls="encrypt") as postfix:
        postfix.sendmail("alice@example.org", ["bob@example.net"], MESSAGE.replace(b"\r\n", b"\n"))
        line = wait_for(lambda: re.search(r"status=deferred \(TLS is required, but was not offered by host 127\.0\.0\.1\[127\.0\.0\.1\]",
                                          postfix.maillog()), timeout=60)
        assert line, postfix.maillog()
    assert relay.queued() == {}
