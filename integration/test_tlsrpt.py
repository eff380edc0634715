"""TLS reporting (RFC 8460) end to end.

A day of mixed traffic through tlsrelayd into the test world (DANE and MTA-STS deliveries,
STARTTLS stripping, a MITM certificate, bad certificates, a bogus TLSA RRset, a host outside
an MTA-STS policy, no-policy domains), a kill -9 in the middle, then `tlsrelayctl tlsrpt
list/show/send`. Every report is read back where the world received it — the HTTPS collector
(tlsrpt_sink.py) and each domain's own MX for the `mailto:` rua — and checked three ways: the
counts against what the MX hosts and attackers saw, an independent parser (parsedmarc, both its
JSON and its mail parser), and a JSON schema of RFC 8460 §4.4 written here. Also: a report is
sent once (also across a restart), report mails are delivered through a stripping attacker and
to bad certificates (TLS-Required: No) without being counted, a malformed rua URI is skipped
with a warning, the daily run sends a past day at start-up, HTTPS POSTs are retried, and the
commands say clearly when TLS reporting is off.
"""
import datetime
import email
import email.policy
import gzip
import ipaddress
import json
import re
import subprocess
import time

import jsonschema
import parsedmarc
import pytest

from relay import CTL, Relay, wait_for
from test_delivery_behaviour import send

SUBMITTER = "relay.example.org"          # tlsrpt.submitter unset: server.hostname
ORG = "Example Org"
CONTACT = "tlsrpt-contact@example.org"   # RFC 8460 §4.4 contact-info: an RFC 5322 addr-spec
FROM = "tlsrpt-noreply@plain-mx.test"
SENDER = "sender@plain-mx.test"

# The day's traffic: scenario -> (policy-type, result type of its one kind of session (None =
# TLS negotiated), messages before the kill -9, messages after it).
DAY = {
    "dane-ee": ("tlsa", None, 2, 1),
    "dane-ta": ("tlsa", None, 1, 0),                         # malformed rua beside an https: one
    "sts-enforce": ("sts", None, 1, 0),
    "plain-mx2": ("no-policy-found", None, 1, 0),            # + one TLS-Required: No message after
    "attack-strip-starttls": ("tlsa", "starttls-not-supported", 2, 1),
    "attack-mitm-cert": ("tlsa", "tlsa-invalid", 1, 0),
    "dane-ta-badname": ("tlsa", "certificate-host-mismatch", 1, 0),
    "dane-bogus-tlsa": ("tlsa", "dnssec-invalid", 1, 0),
    "sts-enforce-mx-mismatch": ("sts", "validation-failure", 1, 0),
    # RFC 8460 §4.3.1: a certificate problem of the MX under MTA-STS is a negotiation failure
    # (§4.3.2.2 sts-webpki-invalid is about the policy host's certificate).
    "sts-enforce-otherca": ("sts", "certificate-not-trusted", 1, 0),
    "sts-enforce-expired": ("sts", "certificate-expired", 1, 0),
    "attack-strip-nopolicy": ("no-policy-found", "starttls-not-supported", 1, 0),
}
GREETING_NAME = "greet-helo.example"     # banner of mx.sts-enforce-otherca.test for the day


# --- RFC 8460 §4.4 as a JSON schema ---------------------------------------------------------------

RESULT_TYPES = ["starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
                "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
                "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid"]
_IP = {"type": "string", "format": "ip-address"}
_HOST = {"type": "string", "format": "hostname"}
_COUNT = {"type": "integer", "minimum": 0}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "additionalProperties": False,
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object", "required": ["start-datetime", "end-datetime"], "additionalProperties": False,
            "properties": {"start-datetime": {"type": "string", "format": "date-time"},
                           "end-datetime": {"type": "string", "format": "date-time"}}},
        "contact-info": {"type": "string", "format": "addr-spec"},            # RFC 5322 §3.4.1
        "report-id": {"type": "string", "minLength": 1},
        "policies": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["policy", "summary"], "additionalProperties": False,
            "properties": {
                "policy": {
                    "type": "object", "required": ["policy-type", "policy-domain"], "additionalProperties": False,
                    "properties": {
                        "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                        "policy-string": {"type": "array", "items": {"type": "string"}},
                        "policy-domain": _HOST,
                        "mx-host": {"type": "array", "items": {"type": "string"}}},
                    # sts: the policy and its mx patterns (RFC 8460 §4.4, RFC 8461 §4.1)
                    "if": {"properties": {"policy-type": {"const": "sts"}}},
                    "then": {"required": ["policy-string", "mx-host"]}},
                "summary": {
                    "type": "object", "additionalProperties": False,
                    "required": ["total-successful-session-count", "total-failure-session-count"],
                    "properties": {"total-successful-session-count": _COUNT,
                                   "total-failure-session-count": _COUNT}},
                "failure-details": {"type": "array", "items": {
                    "type": "object", "required": ["result-type", "failed-session-count"],
                    "additionalProperties": False,
                    "properties": {
                        "result-type": {"enum": RESULT_TYPES},
                        "sending-mta-ip": _IP,
                        "receiving-mx-hostname": _HOST,
                        "receiving-mx-helo": {"type": "string"},
                        "receiving-ip": _IP,
                        "failed-session-count": {"type": "integer", "minimum": 1},
                        "additional-information": {"type": "string", "format": "uri"},   # RFC 3986
                        "failure-reason-code": {"type": "string"}}}}}}},
    },
}

FORMATS = jsonschema.FormatChecker(formats=())
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"


@FORMATS.checks("date-time")
def _date_time(value):     # RFC 3339 §5.6
    return bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value)) and \
        bool(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")))


@FORMATS.checks("uri")
def _uri(value):           # RFC 3986 §3: scheme ":" and only URI characters
    return bool(_URI.fullmatch(value))


@FORMATS.checks("addr-spec")
def _addr_spec(value):     # RFC 5322 §3.4.1, dot-atom forms
    return bool(re.fullmatch(rf"{_ATEXT}(\.{_ATEXT})*@{_LABEL}(\.{_LABEL})+", value))


@FORMATS.checks("hostname")
def _hostname(value):
    return len(value) <= 253 and bool(re.fullmatch(rf"{_LABEL}(\.{_LABEL})*", value))


@FORMATS.checks("ip-address", raises=ValueError)
def _ip(value):
    return bool(ipaddress.ip_address(value))


VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=FORMATS)


def schema_errors(report):
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(report)]


def test_the_schema_discriminates():
    """The schema rejects what RFC 8460 §4.4 forbids (so that its verdicts below mean something)."""
    good = {"organization-name": "O", "date-range": {"start-datetime": "2026-12-01T00:00:00Z",
                                                     "end-datetime": "2026-12-01T23:59:59Z"},
            "contact-info": "a@example.org", "report-id": "r1",
            "policies": [{"policy": {"policy-type": "sts", "policy-domain": "example.org",
                                     "policy-string": ["version: STSv1"], "mx-host": ["*.example.org"]},
                          "summary": {"total-successful-session-count": 1, "total-failure-session-count": 1},
                          "failure-details": [{"result-type": "starttls-not-supported", "failed-session-count": 1,
                                               "sending-mta-ip": "127.0.0.1", "receiving-ip": "::1",
                                               "additional-information": "https://example.org/x?y=1"}]}]}
    assert schema_errors(good) == []
    bad = [("contact-info", "mailto:a@example.org"), ("contact-info", "a"),
           ("date-range", {"start-datetime": "2026-12-01 00:00:00", "end-datetime": "2026-12-01T23:59:59Z"}),
           ("policies", [])]
    for key, value in bad:
        assert schema_errors(dict(good, **{key: value})), (key, value)
    detail = good["policies"][0]["failure-details"][0]
    for key, value in [("additional-information", "TLS failed: no STARTTLS"), ("result-type", "tls-failed"),
                       ("sending-mta-ip", "localhost"), ("failed-session-count", 0), ("failed_session_count", 1)]:
        broken = json.loads(json.dumps(good))
        broken["policies"][0]["failure-details"][0] = dict(detail, **{key: value})
        assert schema_errors(broken), (key, value)
    no_mx = json.loads(json.dumps(good))
    del no_mx["policies"][0]["policy"]["mx-host"]
    assert schema_errors(no_mx)


# --- helpers ----------------------------------------------------------------------------------------

def tlsrpt_toml(world, **settings):
    values = {"enabled": True, "organization_name": ORG, "contact_info": CONTACT, "from": FROM,
              "send_delay": 0, "https_attempts": 3, "https_retry_delay": 1}
    values.update(settings)
    return (world.relay_sections(dns_extra="timeout = 3\n",
                                 delivery_extra="min_backoff = 3600\nmax_backoff = 3600\nconnect_timeout = 5\n"
                                                "command_timeout = 10\n")
            + "[tlsrpt]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))


def attempts(relay, recipient):
    """(relay, dsn, status, rest of the line) of every delivery attempt logged for recipient (the
    line of a TLS-Required: No message also says tls-required=no)."""
    return re.findall(r"to=<" + re.escape(recipient) + r">, relay=([^,]*), .*?dsn=([0-9.]+), status=(\w+)([^\n]*)",
                      relay.log_text())


def ctl(relay, *args):
    return subprocess.run([str(CTL), "--config", str(relay.config), *args], capture_output=True, text=True, timeout=120)


def today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def listing(relay, date=None):
    """{domain: (successful, failed)} of `tlsrpt list --json`."""
    result = ctl(relay, "tlsrpt", "list", "--json", *(["--date", date] if date else []))
    assert result.returncode == 0, result
    answer = json.loads(result.stdout)
    assert answer["date"] == (date or today()), answer
    return {d["domain"]: (d["successful"], d["failed"]) for d in answer["domains"]}


def unix(stamp):
    return int(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def away_from_midnight():
    """The day's sessions must fall on one UTC day: never start within 4 minutes of midnight."""
    left = 86400 - time.time() % 86400
    if left < 240:
        time.sleep(left + 2)


def observed(world, name, relay, recipients):
    """What the receiving side saw of the sessions to a scenario's MX: TLS negotiations started
    (STARTTLS at an aiosmtpd MX, connections to an attacker), or, where no connection is made,
    the delivery attempts logged."""
    sc = world.scenario(name)
    host = sc["mx"][0]
    if host["attacker"]:
        return sum(1 for e in world.attacker_events(name) if e["event"] == "connect")
    if name in ("dane-bogus-tlsa", "sts-enforce-mx-mismatch"):
        return sum(len(attempts(relay, r)) for r in recipients)
    return len(world.sessions(host["name"]))


def results_lines(relay, domain):
    """The stored session results of a domain today (state/tlsrpt/results/DAY.jsonl)."""
    path = relay.state / "tlsrpt" / "results" / f"{today()}.jsonl"
    return [json.loads(l)["r"] for l in path.read_text().splitlines()
            if l.strip() and json.loads(l)["r"]["policy"]["domain"] == domain]


def report_mails(world, name):
    domain = world.scenario(name)["domain"]
    return [m for m in world.messages(name) if m["rcpt_tos"] == [f"tlsrpt@{domain}"]]


def attachment(message_bytes):
    """(parsed mail, the application/tlsrpt+gzip part) of a report mail."""
    mail = email.message_from_bytes(message_bytes, policy=email.policy.default)
    parts = [p for p in mail.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1, mail
    return mail, parts[0]


def report_summary(report):
    """policy-type -> (successful, failed, {result-type: count}) of one parsed JSON report."""
    out = {}
    for p in report["policies"]:
        details = {}
        for d in p.get("failure-details", []):
            details[d["result-type"]] = details.get(d["result-type"], 0) + d["failed-session-count"]
        out[p["policy"]["policy-type"]] = (p["summary"]["total-successful-session-count"],
                                           p["summary"]["total-failure-session-count"], details)
    return out


def expected_summary(name, count):
    policy_type, result_type, _, _ = DAY[name]
    if result_type is None:
        return {policy_type: (count, 0, {})}
    return {policy_type: (0, count, {result_type: count})}


def without_result_types(summary):
    return {t: (ok, failed, sorted(details.values())) for t, (ok, failed, details) in summary.items()}


# --- the day ------------------------------------------------------------------------------------------

class Day:
    pass


@pytest.fixture(scope="module")
def day(world, tmp_path_factory):
    away_from_midnight()
    d = Day()
    d.world = world
    relay = d.relay = Relay(tmp_path_factory.mktemp("tlsrpt") / "relay", extra_toml=tlsrpt_toml(world))
    world.set_mx_behaviour("sts-enforce-otherca", greeting=f"220 {GREETING_NAME} ESMTP scripted banner")
    relay.start()
    try:
        d.recipients = {name: [] for name in DAY}

        def deliver(phase, counts, tls_required_no=()):
            before = {name: observed(world, name, relay, d.recipients[name]) for name in DAY}
            sent = []
            for name, n in counts.items():
                for i in range(n):
                    rcpt = f"{phase}-{i}@{world.scenario(name)['domain']}"
                    d.recipients[name].append(rcpt)
                    header = b"TLS-Required: No\r\n" if name in tls_required_no else b""
                    send(relay, SENDER, [rcpt], header + f"Subject: {phase} {name}\r\n\r\ntlsrpt day\r\n".encode())
                    sent.append(rcpt)
            assert wait_for(lambda: all(attempts(relay, r) for r in sent), timeout=90), relay.log_text()[-4000:]
            # An aiosmtpd MX records a session whose TLS failed when the relay has closed it.
            failing = [world.scenario(n)["mx"][0]["name"] for n in counts
                       if DAY[n][1] and not world.scenario(n)["mx"][0]["attacker"]]
            assert wait_for(lambda: all(s["closed"] for h in failing for s in world.sessions(h)), timeout=15)
            return {name: observed(world, name, relay, d.recipients[name]) - before[name] for name in DAY}

        d.seen1 = deliver("p1", {name: v[2] for name, v in DAY.items()})
        d.list1 = listing(relay)
        relay.kill9()
        relay.start()
        d.list_after_kill = listing(relay)
        d.seen2 = deliver("p2", {name: v[3] for name, v in DAY.items() if v[3]})
        d.not_counted_seen = deliver("p2n", {"plain-mx2": 1}, tls_required_no={"plain-mx2"})["plain-mx2"]
        d.list2 = listing(relay)
        d.lines_before_send = {name: len(results_lines(relay, world.scenario(name)["domain"])) for name in DAY}

        # The reports a domain would get now, then the sending: one domain on its own, the rest of today.
        d.shown = {}
        for name in DAY:
            d.shown[name] = ctl(relay, "tlsrpt", "show", world.scenario(name)["domain"])
        d.observed_before_reports = {name: observed(world, name, relay, d.recipients[name]) for name in DAY}
        d.posts_before = len(world.tlsrpt_posts())
        posts_before = {name: len(world.tlsrpt_posts(name)) for name in DAY}
        mails_before = {name: len(report_mails(world, name)) for name in DAY}
        d.send_one = ctl(relay, "tlsrpt", "send", "dane-ee.test")
        d.send_rest = ctl(relay, "tlsrpt", "send", "--date", today())
        d.posts_after_send = len(world.tlsrpt_posts())
        d.mailto = [n for n in DAY if any(u.startswith("mailto:") for u in world.tlsrpt_record(n)["rua"])]

        def report_mail_outcomes():
            return {n: [a for a in attempts(relay, f"tlsrpt@{world.scenario(n)['domain']}") if a[2] == "sent"]
                    for n in d.mailto}
        wait_for(lambda: all(report_mail_outcomes().values()), timeout=60)
        d.report_mail_status = {n: found for n, found in report_mail_outcomes().items() if found}
        wait_for(lambda: all(len(report_mails(world, n)) > mails_before[n] for n in d.report_mail_status), timeout=20)
        d.posts = {name: world.tlsrpt_posts(name)[posts_before[name]:] for name in DAY}
        d.mails = {name: report_mails(world, name)[mails_before[name]:] for name in DAY}
        d.list_after_reports = listing(relay)
        d.lines_after_reports = {name: len(results_lines(relay, world.scenario(name)["domain"])) for name in DAY}
        d.observed_after_reports = {name: observed(world, name, relay, d.recipients[name]) for name in DAY}

        # A second sending, and one after a restart, send nothing.
        d.log_before_resend = relay.log_text().count("TLS-RPT: report ")
        d.resend = ctl(relay, "tlsrpt", "send", "--date", today())
        d.resend_one = ctl(relay, "tlsrpt", "send", "dane-ee.test")
        relay.stop()
        relay.start()
        d.resend_after_restart = ctl(relay, "tlsrpt", "send", "--date", today())
        d.log_after_resend = relay.log_text().count("TLS-RPT: report ")
        d.posts_after_resend = len(world.tlsrpt_posts())
        yield d
    finally:
        relay.stop()
        world.clear_mx_behaviour()


def expected_counts(d, seen):
    out = {}
    for name, count in seen.items():
        ok = DAY[name][1] is None
        out[d.world.scenario(name)["domain"]] = (count, 0) if ok else (0, count)
    return out


def test_sessions_are_counted_as_the_mx_hosts_saw_them(day):
    """One session per TLS negotiation the receiving side saw (per delivery attempt where the
    policy lookup itself failed), under the right domain, successes and failures apart."""
    assert all(day.seen1[n] >= 1 for n in DAY), day.seen1
    assert day.list1 == expected_counts(day, day.seen1), day.relay.log_text()[-3000:]


def test_kill9_loses_no_counted_session(day):
    assert day.list_after_kill == day.list1


def test_sessions_after_the_restart_add_up_and_tls_required_no_is_not_counted(day):
    assert day.not_counted_seen == 1, "the TLS-Required: No message made no session at its MX"
    total = {n: day.seen1[n] + day.seen2[n] for n in DAY}
    assert day.list2 == expected_counts(day, total)


def test_show_is_what_is_sent(day):
    for name in DAY:
        posts = day.posts[name]
        assert len(posts) == 1, (name, posts)
        sent = json.loads(gzip.decompress(posts[0]["body"]))
        assert day.shown[name].returncode == 0, day.shown[name]
        shown = json.loads(day.shown[name].stdout)
        assert {k: v for k, v in sent.items() if k not in ("report-id", "date-range")} == \
            {k: v for k, v in shown.items() if k not in ("report-id", "date-range")}, name
        assert sent["date-range"]["start-datetime"] == shown["date-range"]["start-datetime"] == f"{today()}T00:00:00Z"


def test_send_reports_each_domain_once_to_each_rua(day):
    world = day.world
    assert day.send_one.returncode == 0, day.send_one
    assert day.send_rest.returncode == 0, day.send_rest
    assert "dane-ee.test" in day.send_one.stdout and "dane-ee.test" not in day.send_rest.stdout
    assert day.posts_after_send - day.posts_before == len(DAY)
    for name in DAY:
        record = world.tlsrpt_record(name)
        assert record, name
        post = day.posts[name][0]
        assert post["method"] == "POST" and post["status"] == 200 and post["sni"] == "tlsrpt-collector.test"
        assert post["header"]["content-type"] == "application/tlsrpt+gzip", post["header"]
        mail_expected = any(u.startswith("mailto:") for u in record["rua"])
        assert len(day.mails[name]) == (1 if mail_expected else 0), (name, day.mails[name])
        if mail_expected:
            _, part = attachment(day.mails[name][0]["data_bytes"])
            # One report, the same bytes at every rua URI.
            assert part.get_content() == post["body"], name
    assert sorted(day.report_mail_status) == sorted(day.mailto), (day.report_mail_status, day.relay.log_text()[-3000:])


def test_reports_have_the_right_counts_policies_and_details(day):
    world = day.world
    for name in DAY:
        sc = world.scenario(name)
        report = json.loads(gzip.decompress(day.posts[name][0]["body"]))
        count = day.seen1[name] + day.seen2[name]
        got = report_summary(report)
        if name in ("sts-enforce-otherca", "sts-enforce-expired"):   # their result type: its own test
            assert without_result_types(got) == without_result_types(expected_summary(name, count)), (name, report)
        else:
            assert got == expected_summary(name, count), (name, report)
        assert report["organization-name"] == ORG and report["contact-info"] == CONTACT
        (policy,) = report["policies"]
        p = policy["policy"]
        assert p["policy-domain"] == sc["domain"]
        host = sc["mx"][0]
        if p["policy-type"] == "sts":
            assert p["policy-string"] == sc["mta_sts"]["policy_lines"], p
            assert p["mx-host"] == sc["mta_sts"]["mx_patterns"], p
        elif p["policy-type"] == "tlsa" and name != "dane-bogus-tlsa":
            assert sorted(p["policy-string"]) == sorted(host["tlsa"]), p
        else:
            assert not p.get("policy-string"), p
        for detail in policy.get("failure-details", []):
            assert detail["receiving-mx-hostname"] == host["name"], detail
            if name not in ("dane-bogus-tlsa", "sts-enforce-mx-mismatch"):      # no connection made
                assert detail["sending-mta-ip"] == "127.0.0.1" and detail["receiving-ip"] == host["address"], detail
                helo = GREETING_NAME if name == "sts-enforce-otherca" else host["name"]
                assert detail["receiving-mx-helo"] == helo, detail


def test_mx_certificate_failures_under_mta_sts_use_the_negotiation_result_types(day):
    """RFC 8460 §4.3.1: certificate-not-trusted (untrusted CA) and certificate-expired are the
    result types of an MX certificate that fails an MTA-STS policy's PKIX check; §4.3.2.2's
    sts-webpki-invalid means the *policy* could not be authenticated using PKIX validation."""
    for name in ("sts-enforce-otherca", "sts-enforce-expired"):
        report = json.loads(gzip.decompress(day.posts[name][0]["body"]))
        types = [d["result-type"] for p in report["policies"] for d in p.get("failure-details", [])]
        assert types == [DAY[name][1]], (name, types)


def test_every_report_is_valid_rfc8460_json(day):
    errors = {}
    for name in DAY:
        report = json.loads(gzip.decompress(day.posts[name][0]["body"]))
        if schema_errors(report):
            errors[name] = schema_errors(report)
        for p in report["policies"]:
            # The summary is the sum of the details.
            assert p["summary"]["total-failure-session-count"] == sum(d["failed-session-count"] for d in p.get("failure-details", []))
    assert not errors, json.dumps(errors, indent=1)


def test_parsedmarc_reads_every_report(day):
    """parsedmarc (an independent implementation) reads each POSTed report and each report mail
    to the same report and the same counts."""
    for name in DAY:
        body = gzip.decompress(day.posts[name][0]["body"])
        parsed = parsedmarc.parse_smtp_tls_report_json(body)
        report = json.loads(body)
        assert parsed["organization_name"] == ORG and parsed["contact_info"] == CONTACT
        assert parsed["report_id"] == report["report-id"]
        assert (parsed["begin_date"], parsed["end_date"]) == (report["date-range"]["start-datetime"], report["date-range"]["end-datetime"])
        counts = {p["policy_type"]: (p["successful_session_count"], p["failed_session_count"],
                                     {f["result_type"]: f["failed_session_count"] for f in p.get("failure_details", [])})
                  for p in parsed["policies"]}
        assert counts == report_summary(report), name
        assert [p["policy_domain"] for p in parsed["policies"]] == [day.world.scenario(name)["domain"]]
        for mail in day.mails[name]:
            from_mail = parsedmarc.parse_report_email(mail["data_bytes"], offline=True)
            assert from_mail["report_type"] == "smtp_tls", name
            assert from_mail["report"] == parsed, name


def test_report_mails_follow_rfc8460_section_5_3(day):
    world = day.world
    for name in day.mailto:
        sc = world.scenario(name)
        domain = sc["domain"]
        (message,) = day.mails[name]
        assert message["mail_from"] == FROM and message["rcpt_tos"] == [f"tlsrpt@{domain}"]
        mail, part = attachment(message["data_bytes"])
        report = json.loads(gzip.decompress(part.get_content()))
        assert mail.get_content_type() == "multipart/report" and mail.get_param("report-type") == "tlsrpt"
        assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "application/tlsrpt+gzip"]
        assert str(mail["Subject"]) == f"Report Domain: {domain} Submitter: {SUBMITTER} Report-ID: <{report['report-id']}>"
        assert str(mail["TLS-Report-Domain"]) == domain and str(mail["TLS-Report-Submitter"]) == SUBMITTER
        assert str(mail["TLS-Required"]) == "No" and str(mail["From"]) == FROM and str(mail["To"]) == f"tlsrpt@{domain}"
        assert re.fullmatch(rf"{re.escape(SUBMITTER)}!{re.escape(domain)}!\d+!\d+!([A-Za-z0-9]+)\.json\.gz",
                            part.get_filename()), part.get_filename()


def test_report_file_name_names_the_report_range(day):
    """RFC 8460 §5.1: the file name's begin and end timestamps are those of the range the report
    covers (here today 00:00 to the time of `send`, as its date-range says)."""
    mismatched = {}
    for name in day.mailto:
        (message,) = day.mails[name]
        _, part = attachment(message["data_bytes"])
        report = json.loads(gzip.decompress(part.get_content()))
        begin, end = part.get_filename().split("!")[2:4]
        want = (unix(report["date-range"]["start-datetime"]), unix(report["date-range"]["end-datetime"]))
        if (int(begin), int(end)) != want:
            mismatched[name] = (part.get_filename(), report["date-range"])
    assert not mismatched, mismatched


def test_report_mails_arrive_despite_broken_tls_and_are_not_counted(day):
    """TLS-Required: No (RFC 8689 §5): the report about a stripping attacker or a bad certificate
    reaches that very MX, and its own delivery is no session of the report."""
    for name in ("attack-strip-starttls", "attack-mitm-cert", "dane-ta-badname", "sts-enforce-otherca"):
        assert name in day.report_mail_status, (name, day.relay.log_text()[-3000:])
        assert day.mails[name], name
    (strip,) = day.mails["attack-strip-starttls"]
    assert strip["tls"] is False                               # in clear, past the attacker
    assert day.report_mail_status["attack-strip-starttls"][0][3].startswith(", tls=none, tls-required=no"), \
        day.report_mail_status["attack-strip-starttls"]
    for name in ("attack-strip-starttls", "attack-mitm-cert", "dane-ta-badname", "sts-enforce-otherca"):
        # The report mails made new sessions at these MX hosts (or their attackers) ...
        assert day.observed_after_reports[name] > day.observed_before_reports[name], name
    for name in DAY:
        # ... and no report mail's session was counted.
        assert day.lines_after_reports[name] == day.lines_before_send[name], name
    assert day.list_after_reports == {}, day.list_after_reports


def test_malformed_rua_is_skipped_with_a_warning_and_the_good_one_gets_the_report(day):
    record = day.world.tlsrpt_record("dane-ta")
    assert record["ignored"] == ["tlsrpt@x.test"] and len(record["rua"]) == 1
    log = day.relay.log_text()
    assert re.search(r"warning: TLS-RPT: _smtp\._tls\.dane-ta\.test: ignored .*\"tlsrpt@x\.test\"", log), log[-3000:]
    assert len(day.posts["dane-ta"]) == 1 and day.mails["dane-ta"] == []
    assert "to=<tlsrpt@x.test>" not in log
    assert re.search(r"notice: TLS-RPT: report \S+ for dane-ta\.test \(\S+ to \S+, 0 failed session\(s\)\) POSTed to "
                     r"https://tlsrpt-collector\.test/tlsrpt/dane-ta\.test: 200 OK", log)


def test_a_report_is_sent_once(day):
    for result in (day.resend, day.resend_one, day.resend_after_restart):
        assert result.returncode == 0 and result.stdout.strip() == "nothing to send", result
    assert day.log_after_resend == day.log_before_resend
    assert day.posts_after_resend == day.posts_before + len(DAY)


# --- the daily run, HTTPS retries, TLS reporting off ----------------------------------------------------

def test_daily_run_sends_a_past_day_at_start_up(world, tmp_path):
    """A day already over at start-up goes out at once with send_delay = 0: the whole UTC day,
    00:00:00 to 23:59:59, in the report and in its file name, and once only."""
    away_from_midnight()
    relay = Relay(tmp_path / "daily", extra_toml=tlsrpt_toml(world)).start()
    try:
        recipients = ["daily@dane-ee.test", "daily@attack-strip-starttls.test"]
        for r in recipients:
            send(relay, SENDER, [r], b"Subject: daily\r\n\r\ndaily\r\n")
        assert wait_for(lambda: all(attempts(relay, r) for r in recipients), timeout=60)
        counted = listing(relay)
        assert counted == {"dane-ee.test": (1, 0), "attack-strip-starttls.test": (0, 1)}, counted
        relay.stop()
        # Move the day's sessions one day back: yesterday is now a complete day not reported.
        results = relay.state / "tlsrpt" / "results"
        now = datetime.datetime.now(datetime.timezone.utc)
        yesterday = (now - datetime.timedelta(days=1)).strftime("%Y-%m-%d")
        lines = [json.loads(l) for l in (results / f"{today()}.jsonl").read_text().splitlines() if l.strip()]
        (results / f"{yesterday}.jsonl").write_text("".join(json.dumps(dict(l, t=l["t"] - 86400)) + "\n" for l in lines))
        (results / f"{today()}.jsonl").unlink()
        posts_before = len(world.tlsrpt_posts("dane-ee")), len(world.tlsrpt_posts("attack-strip-starttls"))
        mails_before = len(report_mails(world, "attack-strip-starttls"))
        relay.start()
        pattern = r"notice: TLS-RPT: report \S+ for {} \({}T00:00:00Z to {}T23:59:59Z, {} failed session\(s\)\) POSTed"
        for domain, failed in (("dane-ee\\.test", 0), ("attack-strip-starttls\\.test", 1)):
            assert wait_for(lambda: re.search(pattern.format(domain, yesterday, yesterday, failed), relay.log_text()), timeout=30), \
                relay.log_text()[-3000:]
        day_start = unix(f"{yesterday}T00:00:00Z")
        for name, summary in (("dane-ee", {"tlsa": (1, 0, {})}), ("attack-strip-starttls", {"tlsa": (0, 1, {"starttls-not-supported": 1})})):
            posts = world.tlsrpt_posts(name)
            assert len(posts) == posts_before[name != "dane-ee"] + 1
            report = json.loads(gzip.decompress(posts[-1]["body"]))
            assert report["date-range"] == {"start-datetime": f"{yesterday}T00:00:00Z", "end-datetime": f"{yesterday}T23:59:59Z"}
            assert report_summary(report) == summary, report
        assert wait_for(lambda: len(report_mails(world, "attack-strip-starttls")) > mails_before, timeout=30)
        _, part = attachment(report_mails(world, "attack-strip-starttls")[-1]["data_bytes"])
        assert part.get_filename().split("!")[:4] == [SUBMITTER, "attack-strip-starttls.test", str(day_start), str(day_start + 86399)]
        assert listing(relay, yesterday) == {}
        # Once only, also after a restart.
        relay.stop()
        relay.start()
        again = ctl(relay, "tlsrpt", "send")
        assert again.returncode == 0 and again.stdout.strip() == "nothing to send", again
        assert ctl(relay, "tlsrpt", "send", "--date", yesterday).stdout.strip() == "nothing to send"
        assert len(world.tlsrpt_posts("dane-ee")) == posts_before[0] + 1
    finally:
        relay.stop()


def test_https_post_is_retried_with_doubling_pauses(world, tmp_path):
    away_from_midnight()
    relay = Relay(tmp_path / "retry", extra_toml=tlsrpt_toml(world, https_attempts=3, https_retry_delay=1)).start()
    try:
        for round_, fail in ((1, 2), (2, 5)):
            r = f"retry{round_}@dane-ta.test"           # dane-ta: https: only
            send(relay, SENDER, [r], b"Subject: retry\r\n\r\nretry\r\n")
            assert wait_for(lambda: attempts(relay, r), timeout=60)
            before = len(world.tlsrpt_posts("dane-ta"))
            world.set_tlsrpt_collector(fail=fail, status=503)
            result = ctl(relay, "tlsrpt", "send", "dane-ta.test")
            posts = world.tlsrpt_posts("dane-ta")[before:]
            assert [p["status"] for p in posts] == ([503, 503, 200] if fail == 2 else [503, 503, 503]), posts
            gaps = [b["time"] - a["time"] for a, b in zip(posts, posts[1:])]
            assert gaps[0] >= 0.9 and gaps[1] >= 1.9 and gaps[1] - gaps[0] >= 0.5, gaps   # 1 s, then 2 s
            assert len({p["body_b64"] for p in posts}) == 1          # the same report each time
            if fail == 2:
                assert result.returncode == 0 and "POSTed to https://tlsrpt-collector.test/tlsrpt/dane-ta.test: 200 OK" in result.stdout, result
            else:
                assert result.returncode == 1 and "503" in result.stdout + result.stderr, result
                assert re.search(r"warning: TLS-RPT: report \S+ for dane-ta\.test to https://tlsrpt-collector\.test/tlsrpt/dane-ta\.test: "
                                 r".*503.*\(after 3 attempt\(s\)\)", relay.log_text()), relay.log_text()[-2000:]
    finally:
        world.clear_tlsrpt_collector()
        relay.stop()


def test_tlsrpt_commands_say_when_reporting_is_off(world, world_relay_toml, tmp_path):
    relay = Relay(tmp_path / "off", extra_toml=world_relay_toml).start()
    try:
        for args in (["list"], ["list", "--json"], ["show", "dane-ee.test"], ["send"], ["send", "dane-ee.test", "--date", today()]):
            result = ctl(relay, "tlsrpt", *args)
            assert result.returncode == 1, (args, result)
            assert "TLS reporting is off in the running daemon (tlsrpt.enabled was false when it started" in result.stderr, (args, result)
            assert result.stdout == "", (args, result)
    finally:
        relay.stop()
    assert not (relay.state / "tlsrpt" / "results").exists() or not any((relay.state / "tlsrpt" / "results").iterdir())
