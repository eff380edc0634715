"""The Prometheus endpoint ([metrics] listen): scraped during real deliveries into the test
world — DANE, opportunistic TLS, an MTA-STS testing domain whose STARTTLS is stripped, a DANE
domain under a STARTTLS-stripping attack, a bounce — the counters move by exactly what each
scenario must cause; `promtool check metrics` (Debian's prometheus package) finds nothing; a
client that connects and sends nothing, and a flood of requests, do not hold up delivery; other
paths are 404; without the setting nothing listens.
"""
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from relay import Relay, free_port, wait_for
from smtpclient import RawSMTP

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.headers.get("Content-Type"), response.read().decode()


def samples(text):
    """{(name, frozenset(labels)): value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not an exposition line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(snapshot, name, **labels):
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def send(relay, sender, recipient, body):
    c = RawSMTP(relay.port)
    c.code()
    c.command("EHLO client.example.org")
    assert c.command(f"MAIL FROM:<{sender}>").startswith("250")
    assert c.command(f"RCPT TO:<{recipient}>").startswith("250")
    assert c.command("DATA").startswith("354")
    c.send(body + b"\r\n.\r\n")
    reply = c.code()
    c.command("QUIT")
    assert reply.startswith("250"), reply


def status_lines(relay):
    return re.findall(r"to=<([^>]*)>, .*?status=(\w+)", relay.log_text())


@pytest.fixture
def metrics_relay(tmp_path, world, world_relay_toml):
    port = free_port()
    relay = Relay(tmp_path / "metrics", extra_toml=world_relay_toml + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n').start()
    relay.metrics_port = port
    yield relay
    relay.stop()


# (recipient domain, what a correct relay must count for the one recipient)
SCENARIOS = [
    ("dane-ee.test", {("tlsrelay_deliveries_total", (("outcome", "delivered"), ("policy", "dane"))): 1,
                      ("tlsrelay_tls_handshakes_total", (("result", "success"), ("version", "TLSv1.3"))): 1}),
    ("plain-mx.test", {("tlsrelay_deliveries_total", (("outcome", "delivered"), ("policy", "opportunistic"))): 1,
                       ("tlsrelay_tls_handshakes_total", (("result", "success"), ("version", "TLSv1.3"))): 1}),
    ("attack-strip-starttls.test", {
        ("tlsrelay_deliveries_total", (("outcome", "deferred"), ("policy", "dane"))): 1,
        ("tlsrelay_policy_failures_total", (("result_type", "starttls-not-supported"), ("policy", "dane"), ("action", "deferred"))): 1,
        ("tlsrelay_starttls_not_offered_total", ()): 1,
        ("tlsrelay_alerts_total", (("kind", "policy-failure"),)): 1}),
    ("sts-testing-strip.test", {
        ("tlsrelay_deliveries_total", (("outcome", "delivered"), ("policy", "opportunistic"))): 1,
        ("tlsrelay_policy_failures_total", (("result_type", "starttls-not-supported"), ("policy", "mta-sts"), ("action", "delivered"))): 1,
        # Two connections without STARTTLS: the attempt under the testing policy, then the
        # fallback that delivers (RFC 8461 §5).
        ("tlsrelay_starttls_not_offered_total", ()): 2,
        ("tlsrelay_alerts_total", (("kind", "testing-policy-failure"),)): 1}),
]


def test_counters_move_by_exactly_what_each_scenario_causes(world, metrics_relay):
    relay = metrics_relay
    status, content_type, text = scrape(relay.metrics_port)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    before = samples(text)
    assert value(before, "tlsrelay_build_info", version=re.search(r'version="([^"]+)"', text).group(1)) == 1
    for domain, expected in SCENARIOS:
        sent_before = len(status_lines(relay))
        send(relay, "sender@plain-mx2.test", f"user@{domain}", f"Subject: metrics {domain}\r\n\r\nmetrics body".encode())
        assert wait_for(lambda: len(status_lines(relay)) > sent_before, timeout=30), relay.log_text()[-3000:]
        time.sleep(0.3)
        after = samples(scrape(relay.metrics_port)[2])
        for (name, labels), delta in expected.items():
            got = value(after, name, **dict(labels)) - value(before, name, **dict(labels))
            assert got == delta, f"{domain}: {name}{dict(labels)} moved by {got}, expected {delta}\n{relay.log_text()[-2000:]}"
        # Exactly one recipient outcome per message, nothing else.
        total = sum(v for (n, _), v in after.items() if n == "tlsrelay_deliveries_total") - \
            sum(v for (n, _), v in before.items() if n == "tlsrelay_deliveries_total")
        assert total == 1, f"{domain}: {total} recipient outcomes counted"
        before = after
    # The queue gauge sees the deferred message (attack-strip-starttls), and its age.
    assert value(before, "tlsrelay_queue_messages", state="deferred") == 1
    assert value(before, "tlsrelay_queue_oldest_message_age_seconds") > 0
    # Histograms filled by the deliveries above.
    assert value(before, "tlsrelay_dns_lookup_seconds_count", type="mx") >= 4
    assert value(before, "tlsrelay_dns_lookup_seconds_count", type="tlsa") >= 2
    assert value(before, "tlsrelay_tls_handshake_seconds_count") >= 2
    assert value(before, "tlsrelay_inbound_data_seconds_count") == 4
    assert value(before, "tlsrelay_inbound_messages_total") == 4
    assert value(before, "tlsrelay_mta_sts_fetches_total", result="success") >= 1
    assert value(before, "tlsrelay_mta_sts_cache_entries") >= 1
    assert value(before, "tlsrelay_downgrade_memory_entries", level="dane") >= 1
    # No label value is a domain, an address or a queue id.
    for (name, labels) in before:
        for key, label in labels:
            assert not re.search(r"\.test|127\.|@", label), f"unbounded label {key}={label} on {name}"


def test_exposition_passes_promtool(metrics_relay):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: make test-deps installs Debian's prometheus package"
    text = scrape(metrics_relay.metrics_port)[2]
    assert "# HELP tlsrelay_deliveries_total " in text
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        (result.stdout + result.stderr).decode()


def test_other_paths_and_methods(metrics_relay):
    port = metrics_relay.metrics_port
    with pytest.raises(urllib.error.HTTPError) as missing:
        scrape(port, "/")
    assert missing.value.code == 404
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(request, timeout=5)
    assert post.value.code == 405


def test_slow_clients_and_a_flood_do_not_hold_up_delivery(metrics_relay):
    relay = metrics_relay
    port = relay.metrics_port
    # 40 clients that connect and send nothing (more than the endpoint admits at once) ...
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    # ... and a flood of scrapes from 4 threads meanwhile.
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            try:
                scrape(port)
            except Exception:
                pass

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        start = time.time()
        send(relay, "sender@plain-mx2.test", "user@dane-ee.test", b"Subject: during a flood\r\n\r\nflood body")
        assert wait_for(lambda: any(s == "sent" for _, s in status_lines(relay)), timeout=15), relay.log_text()[-2000:]
        assert time.time() - start < 15
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s in idle:
            s.close()
    # Once the idle clients are gone, their slots free up and the endpoint answers again.
    def answers():
        try:
            return scrape(port)[0] == 200
        except OSError:
            return False
    assert wait_for(answers, timeout=10)


def test_no_endpoint_unless_configured(tmp_path, world, world_relay_toml):
    relay = Relay(tmp_path / "plain", extra_toml=world_relay_toml).start()
    try:
        assert "metrics at" not in relay.log_text()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", 9125), timeout=1).close()
    finally:
        relay.stop()


def test_example_alert_rules_are_valid():
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: make test-deps installs Debian's prometheus package"
    rules = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "etc" / "tlsrelay-alerts.yml")
    result = subprocess.run([promtool, "check", "rules", rules], capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert b"SUCCESS: 2 rules found" in result.stdout, result.stdout.decode()


def test_example_alert_rules_fire(tmp_path):
    """promtool's rule unit test: an enforced policy failure fires TLSRelayAttacksDeferred, a
    message older than a day fires TLSRelayOldMailInQueue after 15 minutes."""
    promtool = shutil.which("promtool")
    assert promtool
    rules = __import__("pathlib").Path(__file__).resolve().parent.parent / "etc" / "tlsrelay-alerts.yml"
    (tmp_path / "test.yml").write_text(f"""rule_files: ["{rules}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tlsrelay_policy_failures_total{{action="deferred",policy="dane",result_type="starttls-not-supported"}}'
        values: '0 0 1 1 1'
      - series: 'tlsrelay_policy_failures_total{{action="delivered",policy="mta-sts",result_type="starttls-not-supported"}}'
        values: '0 5 9 12 12'
      - series: 'tlsrelay_queue_oldest_message_age_seconds'
        values: '90000+60x30'
    alert_rule_test:
      - eval_time: 4m
        alertname: TLSRelayAttacksDeferred
        exp_alerts:
          - exp_labels: {{severity: critical, result_type: starttls-not-supported}}
            exp_annotations:
              summary: "tlsrelay deferred mail because a TLS policy failed (starttls-not-supported)"
              description: "1 delivery attempts refused in the last hour; see journalctl -u tlsrelay -p crit."
      - eval_time: 10m
        alertname: TLSRelayOldMailInQueue
        exp_alerts: []
      - eval_time: 20m
        alertname: TLSRelayOldMailInQueue
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "tlsrelay holds a message older than a day"
              description: "The oldest queued message is 1d 1h 20m 0s old; see tlsrelayctl queue list."
""")
    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "test.yml")], capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
