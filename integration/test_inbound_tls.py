"""Inbound STARTTLS (RFC 3207) and the receiving side of REQUIRETLS and TLS-Required (RFC 8689
§4.1, §5) against real clients: Python's smtplib and ssl, swaks (Net::SSLeay) and raw sockets.

The relay presents a certificate from a test CA made here (testworld/pki.py); clients verify it
against that CA and the name relay.example.org, and compare the presented leaf with the file.
Every refusal is checked for its reply and enhanced status code, and for nothing queued.
"""
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from relay import BINARY, ROOT, free_port, wait_for
from smtpclient import RawSMTP

sys.path.insert(0, str(ROOT / "testworld"))
from pki import PKI  # noqa: E402

HOST = "relay.example.org"
CLEAR_KEYWORDS = [HOST, "PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "STARTTLS"]
TLS_KEYWORDS = [HOST, "PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "REQUIRETLS"]
STARTTLS_LOG = re.compile(r"STARTTLS from (?:localhost|unknown)\[127\.0\.0\.1\]: using (TLSv1\.[23]) with cipher (\S+) \((\d+)/(\d+) bits\)")


_sessions = []


def smtp(port):
    """A RawSMTP session, closed after the test (before the relay is stopped: the daemon's
    SIGTERM waits for open sessions)."""
    c = RawSMTP(port)
    _sessions.append(c)
    return c


@pytest.fixture(autouse=True)
def close_sessions(relay_factory):
    yield
    while _sessions:
        _sessions.pop().close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def cert(pki):
    return pki.issue("relay", HOST)


@pytest.fixture
def tls_relay(relay_factory, cert):
    """make(starttls="offered", required=False, **server): a relay whose listeners offer
    STARTTLS with `cert`; required=True adds a second listener in starttls_required
    (relay.required_port)."""
    def make(starttls="offered", required=False, name="tls", chain=None, key=None, start=True, **server):
        # hold: queued messages stay queued (no delivery to example.net, no DNS at stop).
        relay = relay_factory(name=name, start=False, extra_toml="[delivery]\nhold = true\n", starttls=starttls,
                              tls_certificate_chain_file=chain or cert["chain_file"],
                              tls_private_key_file=key or cert["key_file"], **server)
        if required:
            relay.required_port = free_port()
            relay.server["listen"].append(f"127.0.0.1:{relay.required_port}")
            relay.server["starttls_required"] = [f"127.0.0.1:{relay.required_port}"]
            relay.write_config()
        if start:
            relay.start()
        return relay
    return make


def client_context(pki, version=None):
    """Verifies the chain against the test CA and the name relay.example.org."""
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def leaf_der(path):
    return x509.load_pem_x509_certificates(open(path, "rb").read())[0].public_bytes(serialization.Encoding.DER)


def ehlo(c, name="client.example.org"):
    c.send(f"EHLO {name}\r\n")
    code, lines = c.reply()
    assert code == 250, lines
    return lines


def starttls(c, pki, version=None):
    """STARTTLS on a RawSMTP session; the socket is then the verified TLS one."""
    reply = c.command("STARTTLS")
    assert reply.startswith("220 2.0.0"), reply
    assert c.buffer == b"", c.buffer
    c.sock = client_context(pki, version).wrap_socket(c.sock, server_hostname=HOST)
    return c


def tls_session(relay, pki, port=None, version=None):
    c = smtp(port or relay.port)
    assert c.code().startswith("220 ")
    assert ehlo(c) == CLEAR_KEYWORDS
    starttls(c, pki, version)
    assert ehlo(c) == TLS_KEYWORDS
    return c


def transaction(c, body, mail="MAIL FROM:<a@example.org>", rcpt="b@example.net"):
    """One message on an open session; returns its queue id."""
    assert c.command(mail).startswith("250 2.1.0")
    assert c.command(f"RCPT TO:<{rcpt}>").startswith("250 2.1.5")
    assert c.command("DATA").startswith("354")
    c.send(body + b".\r\n")
    reply = c.code()
    assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    return reply.split()[-1]


def swaks(*args):
    return subprocess.run(["swaks", *args], capture_output=True, text=True, timeout=60)


# --- keywords and the STARTTLS command -------------------------------------------------------

def test_keywords_before_and_after_starttls_with_smtplib(tls_relay, pki, cert):
    """EHLO in clear lists STARTTLS, not REQUIRETLS; after the handshake (certificate from the
    test CA, for relay.example.org, the configured leaf) the client must EHLO again, and then
    REQUIRETLS is listed and STARTTLS is not."""
    relay = tls_relay()
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.example.org", timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("requiretls"), s.esmtp_features
        s._host = HOST                      # smtplib passes it as server_hostname: name checked
        code, _ = s.starttls(context=client_context(pki))
        assert code == 220
        assert s.sock.getpeercert(binary_form=True) == leaf_der(cert["cert_file"])
        assert s.sock.version() == "TLSv1.3" and s.sock.cipher()[0] == "TLS_AES_256_GCM_SHA384"
        # RFC 3207 §4.2: the session is reset; no MAIL before a new EHLO.
        code, text = s.docmd("MAIL FROM:<a@example.org>")
        assert (code, text[:5]) == (503, b"5.5.1"), text
        s.ehlo()
        assert s.has_extn("requiretls") and not s.has_extn("starttls"), s.esmtp_features
        code, text = s.docmd("STARTTLS")
        assert code == 503 and b"5.5.1" in text and b"TLS is already active" in text
        assert s.docmd("NOOP")[0] == 250
    line = wait_for(lambda: STARTTLS_LOG.search(relay.log_text()), timeout=5)
    assert line and line.groups() == ("TLSv1.3", "TLS_AES_256_GCM_SHA384", "256", "256"), relay.log_text()[-2000:]


def test_exact_keyword_lists_and_a_second_starttls(tls_relay, pki):
    relay = tls_relay()
    c = tls_session(relay, pki)            # asserts both lists, in order
    assert c.command("STARTTLS").startswith("503 5.5.1")
    assert c.command("QUIT").startswith("221 2.0.0")


def test_swaks_starttls_keywords_and_certificate(tls_relay, pki, cert, tmp_path):
    relay = tls_relay()
    peer = tmp_path / "peer.pem"
    result = swaks("--server", "127.0.0.1", "--port", str(relay.port), "--ehlo", "swaks.example.org",
                   "-tls", "--tls-verify", "--tls-ca-path", pki.ca_file, "--tls-get-peer-cert", str(peer),
                   "--quit-after", "EHLO")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # swaks marks replies in clear with "<-" and in TLS with "<~".
    clear = re.findall(r"^<-  250[ -](.*)$", out, re.M)
    inside = re.findall(r"^<~  250[ -](.*)$", out, re.M)
    assert clear == CLEAR_KEYWORDS, out
    assert inside == TLS_KEYWORDS, out
    assert "=== TLS started with cipher TLSv1.3:TLS_AES_256_GCM_SHA384:256" in out, out
    assert leaf_der(peer) == leaf_der(cert["cert_file"])


def test_swaks_message_over_starttls_is_queued_with_esmtps(tls_relay, pki):
    relay = tls_relay()
    result = swaks("--server", "127.0.0.1", "--port", str(relay.port), "--ehlo", "swaks.example.org",
                   "-tls", "--tls-verify", "--tls-ca-path", pki.ca_file,
                   "--from", "a@example.org", "--to", "b@example.net", "--body", "swaks over tls")
    assert result.returncode == 0, result.stdout + result.stderr
    queue_id = re.search(r"<~  250 2\.0\.0 Ok: queued as (\w+)", result.stdout).group(1)
    envelope, content = relay.queued()[queue_id]
    assert b"swaks over tls" in content
    assert b"\r\n\tby relay.example.org (tlsrelay) with ESMTPS id " + queue_id.encode() in content
    assert not envelope["transaction"]["parameters"].get("requireTLS")


def test_starttls_command_errors(tls_relay, pki):
    relay = tls_relay()
    c = smtp(relay.port)
    c.code()
    assert c.command("STARTTLS").startswith("503 5.5.1")                  # before EHLO
    ehlo(c)
    assert c.command("STARTTLS now").startswith("501 5.5.4")              # no arguments
    assert c.command("MAIL FROM:<a@example.org>").startswith("250")
    assert c.command("STARTTLS").startswith("503 5.5.1")                  # inside a transaction
    assert c.command("RSET").startswith("250")
    starttls(c, pki)                                                      # and now it works
    assert ehlo(c) == TLS_KEYWORDS
    log = relay.log_text()
    assert re.search(r"NOQUEUE: reject: STARTTLS now from \S+: 501 5\.5\.4", log), log


def test_listener_without_starttls_and_required_listener(tls_relay, pki):
    """starttls = "off" applies to every listener but those in starttls_required."""
    relay = tls_relay(starttls="off", required=True)
    c = smtp(relay.port)
    c.code()
    lines = ehlo(c)
    assert "STARTTLS" not in lines and "REQUIRETLS" not in lines, lines
    assert c.command("STARTTLS").startswith("502 5.5.1")
    assert c.command("MAIL FROM:<a@example.org> REQUIRETLS").startswith("530 5.7.10")
    transaction(c, b"Subject: clear\r\n\r\nclear on the other listener\r\n")   # off: clear is fine
    r = smtp(relay.required_port)
    r.code()
    assert ehlo(r) == CLEAR_KEYWORDS


# --- the required listener -------------------------------------------------------------------

@pytest.mark.parametrize("command", ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA",
                                     "VRFY someone", "EXPN list"])
def test_required_listener_refuses_before_starttls(tls_relay, pki, command):
    relay = tls_relay(required=True)
    c = smtp(relay.required_port)
    c.code()
    assert ehlo(c) == CLEAR_KEYWORDS
    assert c.command(command) == "530 5.7.0 Must issue a STARTTLS command first"
    for harmless in ("NOOP", "RSET", "HELP"):
        assert c.command(harmless)[:1] == "2", harmless
    starttls(c, pki)
    assert ehlo(c) == TLS_KEYWORDS
    queue_id = transaction(c, b"Subject: required\r\n\r\nafter starttls\r\n")
    assert queue_id in relay.queued()
    # The offered listener of the same relay takes mail in clear.
    o = smtp(relay.port)
    o.code()
    ehlo(o)
    transaction(o, b"Subject: offered\r\n\r\nclear\r\n")
    assert len(relay.queued()) == 2


def test_swaks_on_the_required_listener(tls_relay, pki):
    relay = tls_relay(required=True)
    args = ("--server", "127.0.0.1", "--port", str(relay.required_port), "--from", "a@example.org",
            "--to", "b@example.net", "--body", "required listener")
    refused = swaks(*args)
    assert refused.returncode == 23, refused.stdout           # 23: MAIL FROM refused
    assert "<** 530 5.7.0 Must issue a STARTTLS command first" in refused.stdout
    assert relay.queued() == {}
    accepted = swaks(*args, "-tls", "--tls-verify", "--tls-ca-path", pki.ca_file)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert len(relay.queued()) == 1


# --- pipelining behind STARTTLS (RFC 3207 §4.2, CVE-2011-0411) --------------------------------

@pytest.mark.parametrize("behind", [b"MAIL FROM:<a@example.org>\r\n", b"NOOP\r\n",
                                    b"EHLO injected.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"])
def test_commands_behind_starttls_are_refused(tls_relay, pki, behind):
    relay = tls_relay()
    c = smtp(relay.port)
    c.code()
    ehlo(c)
    c.send(b"STARTTLS\r\n" + behind)                       # one write, one segment
    code, lines = c.reply()
    assert code == 554 and lines[-1].startswith("5.7.0 Error: commands sent behind STARTTLS are not allowed"), lines
    assert lines[-1].endswith("closing")
    assert c.closed(), c.buffer                              # no 220, no reply to what was behind
    log = relay.log_text()
    assert re.search(r"NOQUEUE: reject: STARTTLS from \S+\[127\.0\.0\.1\]: 554 5\.7\.0 ", log), log
    assert not STARTTLS_LOG.search(log)                     # no handshake happened
    assert relay.queued() == {}
    # The same commands one at a time, after the 220 and the handshake, are fine.
    ok = tls_session(relay, pki)
    assert ok.command("MAIL FROM:<a@example.org>").startswith("250")


# --- REQUIRETLS and TLS-Required on the way in -------------------------------------------------

@pytest.mark.parametrize("stall", ["nothing", "part-of-client-hello"])
def test_a_stalled_handshake_does_not_hold_the_connection(tls_relay, stall):
    """A client that stops after the 220 to STARTTLS (or in its ClientHello) is closed within
    the idle timeout, and the connection slot is free again: 3 such clients with
    max_connections = 3 do not lock out a fourth once they are closed."""
    relay = tls_relay(idle_timeout=2, max_connections=3)
    stalled = []
    for _ in range(3):
        c = smtp(relay.port)
        assert c.code().startswith("220 ")
        ehlo(c)
        assert c.command("STARTTLS").startswith("220 2.0.0")
        if stall == "part-of-client-hello":
            c.sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        stalled.append(c)
    started = time.monotonic()
    for c in stalled:
        c.sock.settimeout(15)
        assert c.sock.recv(4096) == b"", "the stalled handshake was not closed"
    assert time.monotonic() - started < 10
    assert wait_for(lambda: "TLS handshake not finished after 2 s" in relay.log_text() or "timeout after 2 s" in relay.log_text(), timeout=5)
    fresh = smtp(relay.port)
    assert fresh.code().startswith("220 "), "a slot stayed taken"


def test_requiretls_refused_in_clear_accepted_and_stored_under_tls(tls_relay, pki):
    relay = tls_relay()
    c = smtp(relay.port)
    c.code()
    ehlo(c)
    reply = c.command("MAIL FROM:<a@example.org> REQUIRETLS")
    assert reply.startswith("530 5.7.10 REQUIRETLS needs a TLS-protected session"), reply
    assert c.command("RCPT TO:<b@example.net>").startswith("503 5.5.1")        # no transaction
    starttls(c, pki)
    ehlo(c)
    assert c.command("MAIL FROM:<a@example.org> REQUIRETLS=YES").startswith("501 5.5.4")
    queue_id = transaction(c, b"Subject: requiretls\r\n\r\nmust stay in tls\r\n",
                           mail="MAIL FROM:<a@example.org> REQUIRETLS")
    plain_id = transaction(c, b"Subject: no flag\r\n\r\nplain\r\n")
    envelope, _ = relay.queued()[queue_id]
    assert envelope["version"] == 2
    assert envelope["transaction"]["parameters"]["requireTLS"] is True, envelope
    assert not envelope.get("tlsRequiredNo")
    plain, _ = relay.queued()[plain_id]
    assert not plain["transaction"]["parameters"].get("requireTLS") and not plain.get("tlsRequiredNo")
    log = relay.log_text()
    assert re.search(re.escape(queue_id) + r": client=\S+, helo=<client\.example\.org>, from=<a@example\.org>, size=\d+, nrcpt=1, REQUIRETLS \(queued\)", log), log
    assert re.search(re.escape(plain_id) + r": client=.*, nrcpt=1 \(queued\)", log), log


def test_requiretls_with_smtplib(tls_relay, pki):
    relay = tls_relay()
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.example.org", timeout=10) as s:
        s.ehlo()
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.sendmail("a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nx\r\n", mail_options=["REQUIRETLS"])
        assert refused.value.smtp_code == 530 and refused.value.smtp_error.startswith(b"5.7.10")
        s._host = HOST
        s.starttls(context=client_context(pki))
        s.ehlo()
        assert s.sendmail("a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nx\r\n", mail_options=["REQUIRETLS"]) == {}
    (envelope, _), = relay.queued().values()
    assert envelope["transaction"]["parameters"]["requireTLS"] is True


@pytest.mark.parametrize("header,flagged", [
    (b"TLS-Required: No\r\n", True),
    (b"tls-required:   NO\r\n", True),          # field names and the value are case-insensitive
    (b"TLS-Required:\r\n No\r\n", True),         # folded
    (b"TLS-Required: Yes\r\n", False),
    (b"X-TLS-Required: No\r\n", False),
    (b"", False),
])
def test_tls_required_header_is_recorded(tls_relay, pki, header, flagged):
    relay = tls_relay()
    c = smtp(relay.port)
    c.code()
    ehlo(c)
    # The same field in the body is content, never a header field.
    queue_id = transaction(c, b"From: a@example.org\r\n" + header + b"Subject: t\r\n\r\nTLS-Required: No\r\n")
    envelope, content = relay.queued()[queue_id]
    assert bool(envelope.get("tlsRequiredNo")) is flagged, envelope
    assert b"\r\n" + header + b"Subject: t\r\n" in content
    line = re.search(re.escape(queue_id) + r": client=.*\(queued\)", relay.log_text()).group(0)
    assert line.endswith(", TLS-Required: No (queued)") is flagged, line


# --- the Received header notes the TLS ---------------------------------------------------------

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["TLSv1.3", "TLSv1.2"])
def test_received_header_notes_tls(tls_relay, pki, version):
    relay = tls_relay()
    c = tls_session(relay, pki, version=version)
    name, proto, bits = c.sock.cipher()
    assert proto == c.sock.version()
    body = b"Subject: tls\r\n\r\nover tls\r\n"
    queue_id = transaction(c, body)
    _, content = relay.queued()[queue_id]
    lines = content.split(b"\r\n")
    assert lines[0] == b"Received: from client.example.org ([127.0.0.1])"
    assert lines[1] == f"\t(using {proto} with cipher {name} ({bits}/{bits} bits))".encode(), lines[:4]
    assert lines[2] == b"\tby relay.example.org (tlsrelay) with ESMTPS id " + queue_id.encode()
    assert lines[3].startswith(b"\tfor <b@example.net>; ")
    assert content.endswith(body)
    m = wait_for(lambda: STARTTLS_LOG.search(relay.log_text()), timeout=5)
    assert m and m.group(1) == proto and m.group(2) == name
    # SMTPUTF8 under TLS: UTF8SMTPS (RFC 6531 §3.7.3).
    utf8_id = transaction(c, "Subject: grüße\r\n\r\nünï\r\n".encode(), mail="MAIL FROM:<jöran@example.org> SMTPUTF8")
    _, utf8 = relay.queued()[utf8_id]
    assert b"\tby relay.example.org (tlsrelay) with UTF8SMTPS id " + utf8_id.encode() in utf8
    # The same listener in clear: ESMTP, no "using" line.
    clear = smtp(relay.port)
    clear.code()
    ehlo(clear)
    clear_id = transaction(clear, body)
    _, plain = relay.queued()[clear_id]
    assert plain.split(b"\r\n")[1] == b"\tby relay.example.org (tlsrelay) with ESMTP id " + clear_id.encode()
    assert b"(using " not in plain


# --- NUL in message data -----------------------------------------------------------------------

NUL_PAYLOADS = [
    b"Subject: x\r\n\r\nline\r\n\x00.\r\nMAIL FROM:<evil@example.org>\r\n",     # CRLF NUL . CRLF
    b"Subject: x\r\n\r\nline\r\n.\x00\r\nMAIL FROM:<evil@example.org>\r\n",     # CRLF . NUL CRLF
    b"Subject: a\x00b\r\n\r\nbody\r\n",                                          # in a header
    b"\x00Subject: x\r\n\r\nbody\r\n",                                           # first octet
    b"Subject: x\r\n\r\nbody\x00\r\n",                                           # just before the end
]


@pytest.mark.parametrize("tls", [False, True], ids=["clear", "tls"])
@pytest.mark.parametrize("payload", NUL_PAYLOADS, ids=["crlf-nul-dot", "dot-nul-crlf", "header", "first", "last"])
def test_nul_in_message_data_is_refused(tls_relay, pki, payload, tls):
    relay = tls_relay()
    c = tls_session(relay, pki) if tls else smtp(relay.port)
    if not tls:
        c.code()
        ehlo(c)
    assert c.command("MAIL FROM:<a@example.org>").startswith("250")
    assert c.command("RCPT TO:<b@example.net>").startswith("250")
    assert c.command("DATA").startswith("354")
    c.send(payload + b".\r\n")
    reply = c.code()
    assert reply.startswith("554 5.6.0 Message contains a NUL character"), reply
    # Refused only at the real end of data: the next reply answers the next command, and what
    # followed ".NUL" was content, not a MAIL command (no transaction is open).
    assert c.command("NOOP").startswith("250 2.0.0")
    assert c.command("RCPT TO:<b@example.net>").startswith("503 5.5.1")
    assert relay.queued() == {} and relay.temporary_files() == []
    assert re.search(r"NOQUEUE: reject: END-OF-MESSAGE from \S+\[127\.0\.0\.1\]: 554 5\.6\.0 ", relay.log_text())
    # The session goes on: a clean message is queued.
    assert transaction(c, b"Subject: clean\r\n\r\nno nul\r\n") in relay.queued()


# --- certificate and key files -----------------------------------------------------------------

def _write_config(directory, chain, key):
    config = directory / "tlsrelay.toml"
    config.write_text(f'''state_directory = "{directory / 'state'}"
[server]
listen = ["127.0.0.1:{free_port()}"]
hostname = "{HOST}"
allowed_clients = ["127.0.0.0/8"]
starttls = "offered"
tls_certificate_chain_file = "{chain}"
tls_private_key_file = "{key}"
''')
    os.chmod(config, 0o644)
    return config


@pytest.fixture
def world_readable_dir():
    """A directory the user nobody can traverse (pytest's tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix="tlsrelay-tls-")
    os.chmod(d, 0o755)
    yield __import__("pathlib").Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("case", ["garbage-chain", "empty-chain", "key-mismatch", "key-is-a-certificate",
                                  "missing-key", "unreadable-key"])
def test_bad_certificate_or_key_stops_startup(pki, cert, world_readable_dir, case):
    d = world_readable_dir
    chain, key = d / "chain.pem", d / "key.pem"
    shutil.copy(cert["chain_file"], chain)
    shutil.copy(cert["key_file"], key)
    os.chmod(chain, 0o644)
    os.chmod(key, 0o644)
    user = None
    if case == "garbage-chain":
        chain.write_text("this is not PEM\n")
        bad, reason = chain, "cannot load the certificate chain {path}: no start line"
    elif case == "empty-chain":
        chain.write_text("")
        bad, reason = chain, "cannot load the certificate chain {path}: no start line"
    elif case == "key-mismatch":
        shutil.copy(pki.issue("other", HOST)["key_file"], key)
        bad, reason = key, "the private key {path} does not belong to the first certificate of " + str(chain) + ": key values mismatch"
    elif case == "key-is-a-certificate":
        shutil.copy(cert["cert_file"], key)
        bad, reason = key, "cannot load the private key {path}: "
    elif case == "missing-key":
        key.unlink()
        bad, reason = key, "'server.tls_private_key_file' {path}: No such file or directory"
    else:
        os.chmod(key, 0o600)                       # root's, and the daemon runs as nobody
        user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        bad, reason = key, "'server.tls_private_key_file' {path}: Permission denied"
    config = _write_config(d, chain, key)
    expected = reason.format(path=bad)
    for args in (["--check-config"], []):
        result = subprocess.run((user or []) + [str(BINARY), *args, "--config", str(config)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 78, (args, result.returncode, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert str(bad) in result.stderr


def test_good_files_pass_check_config(cert, world_readable_dir):
    """The control for the test above: the same configuration with the right files is valid."""
    config = _write_config(world_readable_dir, cert["chain_file"], cert["key_file"])
    result = subprocess.run([str(BINARY), "--check-config", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'starttls = "offered"' in result.stdout


def test_sighup_rereads_the_certificate(tls_relay, pki, cert, tmp_path):
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    shutil.copy(cert["chain_file"], chain)
    shutil.copy(cert["key_file"], key)
    relay = tls_relay(chain=str(chain), key=str(key))
    before = tls_session(relay, pki)
    assert before.sock.getpeercert(binary_form=True) == leaf_der(cert["cert_file"])

    new = pki.issue("relay-renewed", HOST)
    assert leaf_der(new["cert_file"]) != leaf_der(cert["cert_file"])
    shutil.copy(new["chain_file"], chain)
    shutil.copy(new["key_file"], key)
    relay.process.send_signal(1)
    assert wait_for(lambda: "STARTTLS certificate re-read" in relay.log_text(), timeout=10), relay.log_text()[-2000:]
    after = tls_session(relay, pki)
    assert after.sock.getpeercert(binary_form=True) == leaf_der(new["cert_file"])
    # A session that was in TLS before the reload keeps its own and goes on.
    assert transaction(before, b"Subject: old session\r\n\r\nstill fine\r\n") in relay.queued()

    # A broken key on reload: the reload is refused as a whole (as a bad file is), the
    # certificate in use stays, the daemon says why and runs on.
    key.write_text("not a key\n")
    relay.process.send_signal(1)
    assert wait_for(lambda: f"reload: configuration not changed: STARTTLS certificate: cannot load the private key {key}" in relay.log_text(),
                    timeout=10), relay.log_text()[-2000:]
    assert relay.process.poll() is None
    still = tls_session(relay, pki)
    assert still.sock.getpeercert(binary_form=True) == leaf_der(new["cert_file"])
