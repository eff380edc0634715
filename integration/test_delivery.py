"""End to end: tlsrelayd delivers into the loopback test world (DNSSEC-signed zone served by
NSD, STARTTLS MX servers, a real Postfix smtpd, MTA-STS web servers, attacking proxies) and
every scenario ends as RFC 5321 / RFC 7505 / RFC 7672 / RFC 8461 say: delivered over the right
TLS, deferred with 4.7.5 and an alert read back from journald without a byte of the message
reaching anyone, or bounced with a DSN.
"""
import re
import smtplib
import sys
import time

import pytest

from relay import ROOT, Relay, free_port

sys.path.insert(0, str(ROOT / "testworld"))
import scenarios as world_scenarios  # noqa: E402

NAMES = [s.name for s in world_scenarios.SCENARIOS]
SENDER = "sender@dane-ee.test"   # bounces go back into the world, never outside it


def token_for(name):
    return f"tlsrelay-e2e-{name}-token"


def message_for(name, recipient):
    return (f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: {token_for(name)}\r\n"
            f"Message-ID: <{name}@e2e.example>\r\n\r\nconfidential body {token_for(name)}\r\n").encode()


@pytest.fixture(scope="module")
def delivered(world, world_relay_toml, tmp_path_factory):
    """Starts tlsrelayd on the world's DNS and CA, sends one message per scenario, waits until
    each one is delivered, deferred or bounced, and yields (relay, {name: log line})."""
    work = tmp_path_factory.mktemp("relay")
    metrics_port = free_port()
    extra = world_relay_toml + f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    relay = Relay(work, extra_toml=extra, journal=True).start()
    relay.metrics_port = metrics_port
    try:
        with smtplib.SMTP("127.0.0.1", relay.port) as s:
            s.ehlo("client.example.org")
            for name in NAMES:
                recipient = world.scenario(name)["recipient"]
                s.sendmail(SENDER, [recipient], message_for(name, recipient))
        outcomes = {}
        deadline = time.time() + 90
        while time.time() < deadline and len(outcomes) < len(NAMES):
            log = relay.log_text()
            for name in NAMES:
                recipient = world.scenario(name)["recipient"]
                m = re.search(r"to=<" + re.escape(recipient) + r">, relay=([^,]*), delay=[^,]*, attempt-time=[^,]*, dsn=([0-9.]+), status=(\w+)(?:, tls=([\w-]+))? \((.*)\)", log)
                if m:
                    outcomes[name] = m
            time.sleep(0.2)
        yield relay, outcomes
    finally:
        relay.stop()


RESULT_TYPES = {"starttls-not-supported", "certificate-host-mismatch", "certificate-expired", "tlsa-invalid",
                "dnssec-invalid", "certificate-not-trusted", "validation-failure"}
EXPECTED_RESULT_TYPES = {
    "dane-bogus-tlsa": {"dnssec-invalid"}, "dane-bogus-a": {"dnssec-invalid"}, "dane-bogus-mx": {"dnssec-invalid"},
    "dane-tlsa-servfail": {"tlsa-invalid"}, "attack-strip-starttls": {"starttls-not-supported"},
    "attack-starttls-454": {"starttls-not-supported"}, "attack-inject": {"validation-failure"},
    "dane-tlsa-mismatch": {"tlsa-invalid"}, "dane-ta-badname": {"certificate-host-mismatch"},
    "attack-mitm-cert": {"tlsa-invalid"},
    # RFC 8460 §4.3.1: the MX certificate's own failure; sts-webpki-invalid is the policy host's.
    "sts-enforce-otherca": {"certificate-not-trusted"}, "sts-enforce-wrongname": {"certificate-host-mismatch"},
    "sts-enforce-expired": {"certificate-expired"}, "sts-enforce-mx-mismatch": {"validation-failure"},
    "attack-sts-strip-starttls": {"starttls-not-supported"}, "dane-sts-tlsa-mismatch": {"tlsa-invalid"},
    # Only unusable TLSA records do not drop MTA-STS enforce's WebPKI check.
    "dane-unusable-sts-otherca": {"certificate-not-trusted"},
}
POLICY_SOURCE = {name: "mta-sts" for name in NAMES if name.startswith(("sts", "attack-sts")) or name == "dane-unusable-sts-otherca"}


def wait_for_alerts(relay, domain, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        alerts = relay.journal_entries(RECIPIENT_DOMAIN=domain)
        if alerts:
            return alerts
        time.sleep(0.2)
    return []


ACTION = {"deliver": "sent", "defer": "deferred", "bounce": "bounced"}


@pytest.mark.parametrize("name", NAMES)
def test_scenario(world, delivered, name):
    relay, outcomes = delivered
    scenario = world.scenario(name)
    expected = scenario["expected"]
    assert name in outcomes, f"no delivery attempt logged for {name}:\n{relay.log_text()[-3000:]}"
    match = outcomes[name]
    dsn, status = match.group(2), match.group(3)
    assert status == ACTION[expected["action"]], f"{name}: {match.group(0)}"
    token = token_for(name).encode()
    if expected["action"] == "deliver":
        assert dsn.startswith("2."), match.group(0)
        messages = world.wait_for_messages(name, timeout=10)
        mine = [m for m in messages if token in m["data_bytes"]]
        assert len(mine) == 1, f"{name}: expected host did not receive the message"
        assert bool(mine[0]["tls"]) == bool(expected["tls"]), f"{name}: tls={mine[0]['tls']}"
        # The status=sent line says what protected the session; "none" for clear text.
        assert (match.group(4) == "none") == (not expected["tls"]), match.group(0)
        if expected["security"] == "dane":
            assert match.group(4) == "dane", match.group(0)
        assert mine[0]["data_bytes"].split(b"\r\n", 3)[-1].endswith(b"confidential body " + token + b"\r\n")
        host = expected["via"]["host"] if expected["via"] else scenario["mx"][0]["name"]
        if expected["security"] == "dane":
            assert re.search(r"Verified TLS connection established to " + re.escape(host) + r"\[[0-9.]+\]:25: TLSv1\.[23] with cipher \S+; DANE TLSA",
                             relay.log_text()), f"{name}: no verified DANE session logged"
        if expected["security"] in ("mta-sts", "mta-sts-testing"):
            assert re.search(r"MTA-STS policy of " + re.escape(scenario["domain"]) + r".*: mode " + expected["security"].replace("mta-sts-testing", "testing").replace("mta-sts", "enforce"),
                             relay.log_text()), f"{name}: MTA-STS policy not applied"
        if expected["security"] == "mta-sts":
            assert re.search(r"Verified TLS connection established to " + re.escape(host) + r"\[", relay.log_text()), \
                f"{name}: no WebPKI-verified session logged"
        if name == "sts-testing-otherca":
            # RFC 8461 §5: delivered, and the failure reported at warning level.
            warnings = wait_for_alerts(relay, scenario["domain"])
            assert any(a["PRIORITY"] == "4" and a["MESSAGE_ID"] == "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e03"
                       and a["TLSRPT_RESULT_TYPE"] == "certificate-not-trusted" for a in warnings), warnings
    else:
        assert dsn == expected["status"], f"{name}: {match.group(0)}"
    if expected["action"] != "deliver" or expected["security"] in ("dane", "encrypt", "mta-sts"):
        # Nothing of a protected or undelivered message may reach any host in clear.
        for host in scenario["mx"]:
            assert token not in world.cleartext(host["name"]), f"{name}: message bytes reached {host['name']} in clear"
    if expected["action"] == "defer":
        queued = [e for e, _ in relay.queued().values()
                  if any(r["mailbox"]["localPart"] + "@" + r["mailbox"]["domain"] == scenario["recipient"] for r in e["transaction"]["recipients"])]
        assert queued, f"{name}: deferred message is no longer queued"
        if expected["status"] == "4.7.5":
            # The alert, read back from a real journald (RFC 8460 result type, crit priority).
            alerts = wait_for_alerts(relay, scenario["domain"])
            assert alerts, f"{name}: no alert in the journal"
            alert = alerts[0]
            assert alert["PRIORITY"] == "2"
            assert alert["MESSAGE_ID"] in ("2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e01", "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e02")
            assert alert["TLSRPT_RESULT_TYPE"] in EXPECTED_RESULT_TYPES.get(name, RESULT_TYPES), alert["TLSRPT_RESULT_TYPE"]
            assert alert["POLICY_SOURCE"] == POLICY_SOURCE.get(name, "dane")
            assert "QUEUE_ID" in alert and "REASON" in alert and alert["SYSLOG_IDENTIFIER"] == "tlsrelayd"


def test_bounces_produce_dsns(world, delivered):
    relay, outcomes = delivered
    bounced = [n for n in NAMES if world.scenario(n)["expected"]["action"] == "bounce"]
    assert bounced
    deadline = time.time() + 30
    while time.time() < deadline:
        reports = [m for m in world.messages("dane-ee") if b"report-type=delivery-status" in m["data_bytes"]]
        if len(reports) >= len(bounced):
            break
        time.sleep(0.2)
    assert len(reports) == len(bounced), relay.log_text()[-3000:]
    for name in bounced:
        scenario = world.scenario(name)
        report = [m for m in reports if scenario["recipient"].encode() in m["data_bytes"]]
        assert report, f"no DSN for {name}"
        body = report[0]["data_bytes"]
        assert report[0]["mail_from"] in ("", "<>")
        assert f"Final-Recipient: rfc822; {scenario['recipient']}\r\nAction: failed\r\nStatus: {scenario['expected']['status']}".encode() in body
        assert token_for(name).encode() in body   # RET absent: the whole message comes back


def test_metrics_agree_with_the_log(world, delivered):
    """Every scenario through the Prometheus endpoint as well: one recipient outcome counted per
    status line, by outcome; the policy that decided each delivered or deferred scenario."""
    relay, outcomes = delivered
    from test_metrics import samples, scrape, value
    time.sleep(1)
    snapshot = samples(scrape(relay.metrics_port)[2])
    lines = re.findall(r"status=(sent|deferred|bounced)", relay.log_text())
    for status, outcome in (("sent", "delivered"), ("deferred", "deferred"), ("bounced", "bounced")):
        counted = sum(v for (n, labels), v in snapshot.items() if n == "tlsrelay_deliveries_total" and ("outcome", outcome) in labels)
        assert counted == lines.count(status), f"{outcome}: metrics {counted}, log {lines.count(status)}"
    expected = [world.scenario(n)["expected"] for n in NAMES]
    dane_delivered = sum(1 for e in expected if e["action"] == "deliver" and e["security"] == "dane")
    assert value(snapshot, "tlsrelay_deliveries_total", outcome="delivered", policy="dane") >= dane_delivered
    refused = sum(1 for e in expected if e["action"] == "defer" and e["status"] == "4.7.5")
    deferred_by_policy = sum(v for (n, labels), v in snapshot.items()
                             if n == "tlsrelay_policy_failures_total" and ("action", "deferred") in labels)
    assert deferred_by_policy >= refused
    for (name, labels), v in snapshot.items():
        if name == "tlsrelay_policy_failures_total":
            assert dict(labels)["result_type"] in RESULT_TYPES | {"sts-webpki-invalid", "sts-policy-fetch-error", "sts-policy-invalid", "dane-required"}, labels
