"""REQUIRETLS and TLS-Required: No end to end (RFC 8689) on the loopback test world.

A REQUIRETLS message goes only to an MX host authenticated by DANE (usable TLSA behind a
DNSSEC-secure MX answer) or by MTA-STS enforce, that announces REQUIRETLS inside TLS; it then
carries REQUIRETLS on MAIL FROM (recorded by the world's MX, testworld/mx.py). Where no host can
take it the recipients bounce with 5.7.30 and a DSN goes to the DSN relay; an attack on a DANE
domain defers it (4.7.5) as usual. Never a byte of it in clear: every MX session's cleartext is
checked. `TLS-Required: No` waives the recipient policies (DANE, MTA-STS, downgrade memory) for
its message only, unless the message has REQUIRETLS or policy.honor_tls_required_no is false.

The world's REQUIRETLS hosts are the scenarios requiretls-dane, requiretls-sts,
requiretls-sts-testing and requiretls-nopolicy; the ordinary ones (dane-ee, sts-enforce) do not
announce it. The real MX behind an attacker is scripted to announce it even in clear
(behaviour "requiretls": "always"), so a relay fooled by the attacker would visibly deliver.
"""
import json
import re
import smtplib
import sys
import time
import urllib.request

import pytest
from aiosmtpd.controller import Controller

from relay import ROOT, Relay, free_port, wait_for
from test_tlsrelayctl import ctl

sys.path.insert(0, str(ROOT / "testworld"))
from pki import PKI  # noqa: E402

HOST = "relay.example.org"
# The sender's request may follow tls= (", requiretls" / ", tls-required=no"; from commit 8e47525 on).
STATUS = re.compile(r"(\w+): to=<([^>]+)>, relay=([^,]*), delay=[^,]*, attempt-time=[^,]*, dsn=([0-9.]+), "
                    r"status=(\w+)(?:, tls=([\w-]+))?(?:, (requiretls|tls-required=no))? \((.*)\)")


class Upstream:
    """The DSN relay (the upstream Postfix of the README's topology): records what it gets."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                              "mail_options": list(envelope.mail_options), "data": envelope.original_content,
                              "tls": session.ssl is not None})
        return "250 2.0.0 Ok: queued"

    def to(self, recipient):
        return [m for m in self.messages if m["rcpt_tos"] == [recipient]]


@pytest.fixture(scope="module")
def upstream():
    recorder = Upstream()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    recorder.port = controller.port
    yield recorder
    controller.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = PKI(str(tmp_path_factory.mktemp("pki")))
    p.relay_cert = p.issue("relay", HOST)
    return p


@pytest.fixture
def make_relay(tmp_path, world, upstream, pki):
    """make(name, policy="", metrics=False): a started relay on the world, offering STARTTLS
    (REQUIRETLS is only accepted under TLS), DSNs to `upstream`, `policy` appended to its config."""
    relays = []

    def make(name, policy="", metrics=False, seed=None):
        extra = world.relay_sections(
            dns_extra="timeout = 3\n",
            delivery_extra="min_backoff = 3600\nmax_backoff = 3600\nconnect_timeout = 5\ncommand_timeout = 10\n",
            dsn_relay=f"[127.0.0.1]:{upstream.port}") + policy
        if metrics:
            metrics_port = free_port()
            extra += f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        relay = Relay(tmp_path / name, extra_toml=extra, starttls="offered",
                      tls_certificate_chain_file=pki.relay_cert["chain_file"],
                      tls_private_key_file=pki.relay_cert["key_file"])
        relay.metrics_port = metrics_port if metrics else None
        if seed:
            seed(relay)
        relays.append(relay.start())
        return relay

    yield make
    for relay in relays:
        relay.stop()


@pytest.fixture
def scripted(world):
    """Script MX hosts for one test: set(host, **behaviour); every one is restored afterwards."""
    hosts = []

    def script(host, **spec):
        hosts.append(host)
        world.set_mx_behaviour(host, **spec)

    yield script
    for host in hosts:
        world.clear_mx_behaviour(host)


def submit(relay, pki, sender, recipients, content, requiretls=True):
    """Submits one message over STARTTLS (verified: test CA, relay.example.org); returns its queue id."""
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.example.org", timeout=10) as s:
        s.ehlo()
        s._host = HOST
        s.starttls(context=__import__("ssl").create_default_context(cafile=pki.ca_file))
        s.ehlo()
        assert s.has_extn("requiretls")
        assert s.mail(sender, ["REQUIRETLS"] if requiretls else [])[0] == 250
        for r in recipients:
            assert s.rcpt(r)[0] == 250, r
        code, reply = s.data(content)
        assert code == 250, reply
        return reply.decode().split()[-1]


def outcomes(relay, queue_id):
    """{recipient: {relay, dsn, status, tls, reason}} of the status lines of one message."""
    return {m.group(2): {"relay": m.group(3), "dsn": m.group(4), "status": m.group(5), "tls": m.group(6),
                         "request": m.group(7), "reason": m.group(8)}
            for m in STATUS.finditer(relay.log_text()) if m.group(1) == queue_id}


def wait_outcomes(relay, queue_id, recipients, timeout=60):
    got = wait_for(lambda: (lambda o: o if set(recipients) <= set(o) else None)(outcomes(relay, queue_id)), timeout=timeout)
    assert got, f"no outcome for all of {recipients}:\n" + relay.log_text()[-4000:]
    return got


def carrying(world, host, token):
    return [m for m in world.messages(host) if token in m["data_bytes"]]


def session_ids(world, host):
    return {s["id"] for s in world.sessions(host)}


def new_sessions(world, host, known, timeout=10):
    """The sessions opened since `known`, once all are closed."""
    def closed():
        new = [s for s in world.sessions(host) if s["id"] not in known]
        return new if new and all(s["closed"] for s in new) else None
    return wait_for(closed, timeout=timeout) or []


def mx(world, scenario):
    return world.scenario(scenario)["mx"][0]


def message(sender, subject, token, extra=b""):
    return (f"From: {sender}\r\nSubject: {subject}\r\n".encode() + extra +
            b"\r\nconfidential body " + token + b"\r\n")


# --- where a REQUIRETLS message may go -----------------------------------------------------------

DELIVERED = {"requiretls-dane": "dane", "requiretls-sts": "mta-sts"}
SKIPPED = ["requiretls-sts-testing", "requiretls-nopolicy", "insecure-mx-signed"]   # never connected
NOT_ANNOUNCING = ["dane-ee", "sts-enforce"]                                          # bounced after the TLS EHLO


def test_requiretls_delivered_exactly_where_allowed(world, make_relay, pki, upstream, scripted):
    """One REQUIRETLS message to seven domains: delivered over DANE and over MTA-STS enforce to
    MX hosts announcing REQUIRETLS, with REQUIRETLS on MAIL FROM; bounced with 5.7.30 without a
    connection for MTA-STS testing, no policy, and DANE behind an insecure MX answer (whose MX
    is scripted to announce REQUIRETLS, so only the rule stops it); bounced after the TLS EHLO
    by the MX hosts that do not announce it. One redacted DSN to the DSN relay."""
    scripted("mx.insecure-mx-signed.test", requiretls=True)
    relay = make_relay("where")
    token = b"requiretls-where-%d" % time.time_ns()
    sender = "rt-where@plain-mx.test"
    names = list(DELIVERED) + SKIPPED + NOT_ANNOUNCING
    recipients = {name: f"where@{world.scenario(name)['domain']}" for name in names}
    known = {name: session_ids(world, mx(world, name)["name"]) for name in names}
    queue_id = submit(relay, pki, sender, list(recipients.values()), message(sender, "where may it go", token))
    result = wait_outcomes(relay, queue_id, recipients.values())
    log = relay.log_text()

    for name, security in DELIVERED.items():
        host = mx(world, name)["name"]
        outcome = result[recipients[name]]
        assert (outcome["status"], outcome["dsn"], outcome["tls"]) == ("sent", "2.0.0", security), outcome
        assert outcome["request"] in (None, "requiretls"), outcome      # (named on newer binaries)
        got = carrying(world, host, token)
        assert len(got) == 1, got
        assert got[0]["tls"] and got[0]["requiretls"] and "REQUIRETLS" in got[0]["mail_options"], got[0]
        assert got[0]["rcpt_tos"] == [recipients[name]]

    for name in SKIPPED:
        host = mx(world, name)["name"]
        outcome = result[recipients[name]]
        assert (outcome["status"], outcome["dsn"], outcome["relay"]) == ("bounced", "5.7.30", "none"), (name, outcome)
        assert f"{queue_id}: MX host {host} skipped (rule requiretls-unauthenticated): REQUIRETLS: " in log, name
        assert new_sessions(world, host, known[name], timeout=0.5) == [], name     # not even a connection

    for name in NOT_ANNOUNCING:
        host = mx(world, name)
        outcome = result[recipients[name]]
        assert (outcome["status"], outcome["dsn"]) == ("bounced", "5.7.30"), (name, outcome)
        assert f"REQUIRETLS: host {host['name']}[{host['address']}]:25 does not announce REQUIRETLS in its TLS session" in log, name
        sessions = new_sessions(world, host["name"], known[name])
        assert len(sessions) == 1 and sessions[0]["tls"], sessions
        commands = [line[3:].split()[0].upper() for line in sessions[0]["transcript"] if line.startswith("C: ")]
        # Nothing after the EHLO in TLS but (see the next test) QUIT: no MAIL FROM, no message.
        assert [c for c in commands if c != "QUIT"] == ["EHLO", "STARTTLS", "EHLO"], sessions[0]["transcript"]

    for name in names:
        host = mx(world, name)["name"]
        assert token not in world.cleartext(host), f"{name}: message bytes in clear"
        if name not in DELIVERED:
            assert carrying(world, host, token) == [], name

    dsns = wait_for(lambda: upstream.to(sender), timeout=30)
    assert dsns and len(dsns) == 1, upstream.messages
    dsn = dsns[0]["data"]
    assert dsns[0]["mail_from"] in ("", "<>")
    assert b"report-type=delivery-status" in dsn
    bounced = [n for n in names if n not in DELIVERED]
    for name in bounced:
        assert re.search(rb"Final-Recipient: rfc822; ?" + re.escape(recipients[name].encode()) +
                         rb"\r?\nAction: failed\r?\nStatus: 5\.7\.30", dsn), (name, dsn.decode(errors="replace"))
    assert b"REQUIRETLS" in dsn
    for name in DELIVERED:
        assert recipients[name].encode() not in dsn
    # Redacted (RFC 8689 §4.4): the DSN travels without REQUIRETLS, so neither the message nor
    # its headers go back in it.
    assert b"Subject: where may it go" not in dsn and token not in dsn
    assert b"text/rfc822-headers" not in dsn and b"message/rfc822" not in dsn
    assert b"does not\r\ninclude the message or its headers" in dsn


def test_next_hop_without_requiretls_gets_quit(world, make_relay, pki):
    """The session with a next hop that does not announce REQUIRETLS ends after the EHLO in TLS
    with QUIT (RFC 5321 §4.1.1.10): after the handshake the MX receives exactly the EHLO and QUIT."""
    host = mx(world, "dane-ee")
    relay = make_relay("quit")
    known = session_ids(world, host["name"])
    recipient = f"quit@{world.scenario('dane-ee')['domain']}"
    queue_id = submit(relay, pki, "rt-quit@plain-mx.test", [recipient], message("rt-quit@plain-mx.test", "quit", b"quit-token"))
    assert wait_outcomes(relay, queue_id, [recipient])[recipient]["dsn"] == "5.7.30"
    sessions = new_sessions(world, host["name"], known)
    assert len(sessions) == 1 and sessions[0]["tls"], sessions
    assert sessions[0]["tls_bytes"] == len(b"EHLO relay.example.org\r\n") + len(b"QUIT\r\n"), sessions[0]


@pytest.mark.parametrize("level,delivered", [("none", False), ("may", False), ("encrypt", False), ("dane", True)])
def test_local_level_below_authenticated_tls_never_weakens_requiretls(world, make_relay, pki, upstream, level, delivered):
    """requiretls-dane.test would take the message (the test above); a local level none, may or
    encrypt for it governs the domain and is below authenticated TLS: bounced with 5.7.30,
    without a connection. Level dane keeps DANE: delivered with REQUIRETLS."""
    scenario = world.scenario("requiretls-dane")
    host = scenario["mx"][0]["name"]
    relay = make_relay(f"level-{level}", policy=f'\n[[policy.domain]]\nname = "{scenario["domain"]}"\nlevel = "{level}"\n')
    token = b"requiretls-level-%s-%d" % (level.encode(), time.time_ns())
    sender = f"rt-level-{level}@plain-mx.test"
    recipient = f"level-{level}@{scenario['domain']}"
    known = session_ids(world, host)
    queue_id = submit(relay, pki, sender, [recipient], message(sender, f"level {level}", token))
    outcome = wait_outcomes(relay, queue_id, [recipient])[recipient]
    if delivered:
        assert (outcome["status"], outcome["tls"]) == ("sent", "dane"), outcome
        got = carrying(world, host, token)
        assert len(got) == 1 and got[0]["requiretls"] and got[0]["tls"], got
    else:
        assert (outcome["status"], outcome["dsn"], outcome["relay"]) == ("bounced", "5.7.30", "none"), outcome
        assert f"MX host {host} skipped (rule requiretls-local-level): REQUIRETLS: local level {level} for {scenario['domain']}" in relay.log_text()
        assert new_sessions(world, host, known, timeout=0.5) == []
        dsn = wait_for(lambda: upstream.to(sender), timeout=30)
        assert dsn and b"Status: 5.7.30" in dsn[0]["data"] and token not in dsn[0]["data"]
    assert token not in world.cleartext(host)


def test_attacks_on_a_requiretls_message_defer_and_never_send_in_clear(world, make_relay, pki, upstream, scripted):
    """A forged certificate (the attacker terminates TLS with a foreign CA's) and a stripped
    STARTTLS on DANE domains: deferred 4.7.5, not bounced, not sent; the real MX behind each
    attacker announces REQUIRETLS even in clear, so a relay that accepted either would deliver."""
    names = ["attack-mitm-cert", "attack-strip-starttls"]
    for name in names:
        scripted(mx(world, name)["name"], requiretls="always")
    relay = make_relay("attacks")
    token = b"requiretls-attack-%d" % time.time_ns()
    sender = "rt-attack@plain-mx.test"
    recipients = {name: f"attack@{world.scenario(name)['domain']}" for name in names}
    before = {name: len(world.attacker_events(name)) for name in names}
    queue_id = submit(relay, pki, sender, list(recipients.values()), message(sender, "under attack", token))
    result = wait_outcomes(relay, queue_id, recipients.values())
    for name in names:
        outcome = result[recipients[name]]
        assert (outcome["status"], outcome["dsn"]) == ("deferred", "4.7.5"), (name, outcome)
        backend = mx(world, name)["backend"]["name"]
        assert carrying(world, backend, token) == [], name
        assert token not in world.cleartext(backend), name
    assert "X509_V_ERR_DANE_NO_MATCH" in result[recipients["attack-mitm-cert"]]["reason"]
    assert "did not offer STARTTLS" in result[recipients["attack-strip-starttls"]]["reason"]
    events = {name: [e["event"] for e in world.attacker_events(name)[before[name]:]] for name in names}
    assert "tls-handshake-failed" in events["attack-mitm-cert"] and "tls-terminated" not in events["attack-mitm-cert"], events
    assert "stripped-starttls" in events["attack-strip-starttls"], events
    assert queue_id in relay.queued()                    # still queued for a retry
    assert f"{queue_id}: sender non-delivery notification" not in relay.log_text()   # a deferral is not a bounce
    assert upstream.to(sender) == []


# --- TLS-Required: No ----------------------------------------------------------------------------

def memory_files(relay):
    d = relay.state / "memory"
    return {p.name: p.read_bytes() for p in d.iterdir()} if d.exists() else {}


def tls_required_no_deliveries(relay):
    if not relay.metrics_port:
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.metrics_port}/metrics", timeout=5) as r:
        m = re.search(r'^tlsrelay_deliveries_total\{outcome="delivered",policy="tls-required-no"\} (\S+)$',
                      r.read().decode(), re.M)
    return float(m.group(1)) if m else 0.0


def test_tls_required_no_waives_dane_and_downgrade_memory(world, make_relay, pki):
    """TLS-Required: No to a DANE domain behind a forged-certificate attacker, with downgrade
    memory enforced and remembering DANE for it: delivered over unauthenticated TLS, the notice
    lines logged, the memory unchanged (file and tlsrelayctl's view) and nothing new
    remembered. The same relay then defers an ordinary message to the same domain and does write
    memory for an ordinary delivery: the waiver is the header's, for its message only."""
    forged = world.scenario("attack-mitm-cert")
    stripped = world.scenario("attack-strip-starttls")
    dane = world.scenario("dane-ee")

    def seed(relay):
        (relay.state / "memory").mkdir(parents=True)
        (relay.state / "memory" / f"{forged['domain']}.json").write_text(json.dumps(
            {"domain": forged["domain"], "strongest": "dane", "achievedAt": time.time() - 3600}))

    relay = make_relay("tls-required-no", policy='\n[policy]\ndowngrade_memory = "enforce"\n', metrics=True, seed=seed)
    memory_before = memory_files(relay)
    policy_before = json.loads(ctl(relay, "policy", "show", forged["domain"], "--json").stdout)
    assert policy_before["downgrade_memory"]["strongest"] == "dane", policy_before
    events_before = len(world.attacker_events("attack-mitm-cert"))
    token = b"tls-required-no-%d" % time.time_ns()
    sender = "trn@plain-mx.test"
    recipients = {s["name"]: f"trn@{s['domain']}" for s in (forged, stripped, dane)}
    queue_id = submit(relay, pki, sender, list(recipients.values()),
                      message(sender, "no tls needed", token, extra=b"TLS-Required: No\r\n"), requiretls=False)
    result = wait_outcomes(relay, queue_id, recipients.values())
    log = relay.log_text()
    assert f"{queue_id}: client=" in log and "nrcpt=3, TLS-Required: No (queued)" in log

    # Opportunistic TLS, no certificate check: the forged MX gets it over TLS, the stripped one in clear.
    expected_tls = {"attack-mitm-cert": "tls", "attack-strip-starttls": "none", "dane-ee": "tls"}
    for name, tls in expected_tls.items():
        outcome = result[recipients[name]]
        assert (outcome["status"], outcome["dsn"], outcome["tls"]) == ("sent", "2.0.0", tls), (name, outcome)
        assert outcome["request"] in (None, "tls-required=no"), outcome  # (named on newer binaries)
        s = world.scenario(name)
        receiver = (s["mx"][0]["backend"] or s["mx"][0])["name"]
        assert len(carrying(world, receiver, token)) == 1, name
        assert (f"{queue_id}: TLS-Required: No: the sender asks that recipient TLS policies be ignored "
                f"(RFC 8689 section 5); {s['domain']} gets opportunistic TLS and nothing is remembered") in log, name
        mxname = s["mx"][0]["name"]
        assert (f"{queue_id}: TLS-Required: No: {s['domain']} is protected by DANE (TLSA records of {mxname}); "
                f"not applied to this message via {mxname}, as its sender asked (RFC 8689 section 5)") in log, name
    events = [e["event"] for e in world.attacker_events("attack-mitm-cert")[events_before:]]
    assert "tls-terminated" in events, events             # the forged certificate was accepted
    assert token not in world.cleartext(dane["mx"][0]["name"])
    assert tls_required_no_deliveries(relay) == 3

    # Downgrade memory: not enforced, not written.
    assert memory_files(relay) == memory_before
    assert json.loads(ctl(relay, "policy", "show", forged["domain"], "--json").stdout) == policy_before

    # Control, same relay: without the header the policies apply and memory is written.
    control = b"tls-required-control-%d" % time.time_ns()
    plain = {"attack-mitm-cert": f"control@{forged['domain']}", "dane-ee": f"control@{dane['domain']}"}
    control_id = submit(relay, pki, sender, list(plain.values()), message(sender, "ordinary", control), requiretls=False)
    result = wait_outcomes(relay, control_id, plain.values())
    assert (result[plain["attack-mitm-cert"]]["status"], result[plain["attack-mitm-cert"]]["dsn"]) == ("deferred", "4.7.5")
    assert (result[plain["dane-ee"]]["status"], result[plain["dane-ee"]]["tls"]) == ("sent", "dane")
    assert carrying(world, forged["mx"][0]["backend"]["name"], control) == []
    memory = wait_for(lambda: memory_files(relay).get(f"{dane['domain']}.json"), timeout=10)
    assert memory and json.loads(memory)["strongest"] == "dane"
    assert tls_required_no_deliveries(relay) == 3
    # (Checked again now that the relay has surely written what it would have written then.)
    after = memory_files(relay)
    assert f"{stripped['domain']}.json" not in after, after
    assert json.loads(after[f"{forged['domain']}.json"])["strongest"] == "dane"


def test_tls_required_no_is_ignored_on_a_requiretls_message(world, make_relay, pki, scripted):
    """REQUIRETLS and TLS-Required: No together: the header is ignored. The forged MX (whose real
    MX announces REQUIRETLS even in clear) is not used; the REQUIRETLS DANE domain is reached
    with DANE and REQUIRETLS, not with opportunistic TLS."""
    forged = world.scenario("attack-mitm-cert")
    scripted(forged["mx"][0]["name"], requiretls="always")
    relay = make_relay("both")
    token = b"requiretls-and-no-%d" % time.time_ns()
    sender = "rt-both@plain-mx.test"
    recipients = {"attack-mitm-cert": f"both@{forged['domain']}",
                  "requiretls-dane": f"both@{world.scenario('requiretls-dane')['domain']}"}
    queue_id = submit(relay, pki, sender, list(recipients.values()),
                      message(sender, "both", token, extra=b"TLS-Required: No\r\n"))
    result = wait_outcomes(relay, queue_id, recipients.values())
    log = relay.log_text()
    assert "nrcpt=2, REQUIRETLS, TLS-Required: No (ignored: REQUIRETLS) (queued)" in log
    assert f"{queue_id}: TLS-Required: No ignored: the message has REQUIRETLS (RFC 8689 section 5)" in log
    assert f"{queue_id}: TLS-Required: No: the sender asks" not in log
    outcome = result[recipients["attack-mitm-cert"]]
    assert (outcome["status"], outcome["dsn"]) == ("deferred", "4.7.5"), outcome
    assert carrying(world, forged["mx"][0]["backend"]["name"], token) == []
    assert token not in world.cleartext(forged["mx"][0]["backend"]["name"])
    outcome = result[recipients["requiretls-dane"]]
    assert (outcome["status"], outcome["tls"]) == ("sent", "dane"), outcome
    got = carrying(world, "requiretls-dane", token)
    assert len(got) == 1 and got[0]["requiretls"], got


def test_tls_required_no_not_honoured_when_configured_off(world, make_relay, pki):
    forged = world.scenario("attack-mitm-cert")
    dane = world.scenario("dane-ee")
    relay = make_relay("not-honoured", policy="\n[policy]\nhonor_tls_required_no = false\n")
    token = b"tls-required-no-off-%d" % time.time_ns()
    sender = "trn-off@plain-mx.test"
    recipients = {"attack-mitm-cert": f"off@{forged['domain']}", "dane-ee": f"off@{dane['domain']}"}
    queue_id = submit(relay, pki, sender, list(recipients.values()),
                      message(sender, "not honoured", token, extra=b"TLS-Required: No\r\n"), requiretls=False)
    result = wait_outcomes(relay, queue_id, recipients.values())
    log = relay.log_text()
    assert (f"{queue_id}: TLS-Required: No not honoured (policy.honor_tls_required_no = false): "
            f"the recipient policies of {forged['domain']} apply") in log
    assert f"{queue_id}: TLS-Required: No: the sender asks" not in log
    outcome = result[recipients["attack-mitm-cert"]]
    assert (outcome["status"], outcome["dsn"]) == ("deferred", "4.7.5"), outcome
    assert carrying(world, forged["mx"][0]["backend"]["name"], token) == []
    outcome = result[recipients["dane-ee"]]
    assert (outcome["status"], outcome["tls"]) == ("sent", "dane"), outcome
