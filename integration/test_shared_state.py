"""Several relays sharing their policy state in PostgreSQL (`[state] backend = "postgresql"`):
two tlsrelayd instances, A and B, on the test world and one real PostgreSQL 15 (pg.py).

- downgrade memory learnt by A protects B when STARTTLS is stripped (B defers and alerts);
- B uses the MTA-STS policy A fetched (the policy server sees one fetch);
- one TLS-RPT report covers the sessions of both (its counts are the sum), sent by one relay
  even when both are asked at once (the advisory lock);
- PostgreSQL stopped mid-run: nothing delivered below its policy (deferred 4.4.3), one crit
  alert, mail still accepted, delivery resumes when it is back;
- kill -9 of a relay in the middle of its updates leaves the store consistent;
- a schema newer than the binary stops start-up (exit 78) with a clear error;
- `--check-config` validates [state] without the database.
"""
import gzip
import json
import re
import subprocess
import time

import pytest

from pg import Postgres
from relay import BINARY, CTL, Relay, wait_for
from test_delivery_behaviour import attempts, send
from test_tlsrpt import CONTACT, FROM, ORG, report_summary, today

SENDER = "sender@plain-mx2.test"


@pytest.fixture(scope="module")
def pg():
    server = Postgres().init()
    yield server
    server.destroy()


@pytest.fixture
def db(pg):
    """A fresh, empty database (tlsrelayd creates the schema)."""
    if not pg.running():
        pg.start()
    pg.recreate_database()
    return pg


def ctl(relay, *args):
    return subprocess.run([str(CTL), "--config", str(relay.config), *args], capture_output=True, text=True, timeout=120)


def tlsrpt_section():
    values = {"enabled": True, "organization_name": ORG, "contact_info": CONTACT, "from": FROM,
              "send_delay": 0, "https_attempts": 1, "https_retry_delay": 1}
    return "\n[tlsrpt]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


@pytest.fixture
def pair(tmp_path, world, world_relay_toml, db):
    """Relays A and B on the same database; no connection reuse (every message meets the MX, or
    the attacker, on a new connection)."""
    toml = (world_relay_toml + "connection_cache_time_limit = 0\n" + '\n[policy]\ndowngrade_memory = "enforce"\n'
            + db.toml() + tlsrpt_section())
    relays = [Relay(tmp_path / name, extra_toml=toml) for name in ("a", "b")]
    yield relays
    for relay in relays:
        try:
            relay.stop()
        except Exception:
            relay.process.kill()
    world.clear_mx_behaviour("plain-mx")
    if not db.running():
        db.start()


def sent(relay, recipient, count=1, timeout=30):
    return wait_for(lambda: len([a for a in attempts(relay, recipient) if a[2] == "sent"]) >= count, timeout=timeout)


def test_downgrade_learnt_by_a_protects_b(world, pair, db):
    a, b = pair
    a.start()
    b.start()
    # A reaches plain-mx.test over TLS and dane-ee.test with DANE: both remembered in the database.
    send(a, SENDER, ["shared-1@plain-mx.test"], b"Subject: first\r\n\r\nshared-memory-first\r\n")
    send(a, SENDER, ["shared-1@dane-ee.test"], b"Subject: dane\r\n\r\nshared-memory-dane\r\n")
    assert sent(a, "shared-1@plain-mx.test") and sent(a, "shared-1@dane-ee.test"), a.log_text()[-3000:]
    rows = dict((d, (int(s), f)) for d, s, f in db.psql("SELECT domain, strongest, coalesce(first_refused::text, '') FROM tlsrelay_memory"))
    assert rows == {"plain-mx.test": (1, ""), "dane-ee.test": (3, "")}, rows
    # Relay B has never delivered there; its own state directory holds no memory at all.
    assert "plain-mx.test" not in b.log_text()
    assert not (b.state / "memory").exists() or not list((b.state / "memory").iterdir())
    # STARTTLS is stripped; B gets the next message.
    world.set_mx_behaviour("plain-mx", ehlo=["250 mx.plain-mx.test", "250 PIPELINING", "250 8BITMIME"])
    send(b, SENDER, ["shared-2@plain-mx.test"], b"Subject: second\r\n\r\nshared-memory-second\r\n")
    outcome = wait_for(lambda: attempts(b, "shared-2@plain-mx.test"))
    assert outcome[0][1:3] == ("4.7.5", "deferred"), outcome
    assert re.search(r"ALERT downgrade-refused: TLS policy alert \(starttls-not-supported\) for plain-mx\.test", b.log_text())
    assert b"shared-memory-second" not in world.cleartext("plain-mx")
    # B started the grace window in the shared row; the level stays tls.
    strongest, first = db.psql("SELECT strongest, first_refused FROM tlsrelay_memory WHERE domain = 'plain-mx.test'")[0]
    assert strongest == "1" and float(first) > 0
    # tlsrelayctl policy show reads the shared store, with the daemon (B) and without (A stopped).
    shown = json.loads(ctl(b, "policy", "show", "plain-mx.test", "--json").stdout)
    assert shown["downgrade_memory"]["strongest"] == "tls" and shown["state_backend"] == "postgresql", shown
    a.stop()
    offline = ctl(a, "policy", "show", "dane-ee.test", "--json")
    assert offline.returncode == 0 and json.loads(offline.stdout)["downgrade_memory"]["strongest"] == "dane", offline
    assert "read from postgresql://tlsrelay@127.0.0.1" in offline.stderr


def test_b_uses_the_policy_a_fetched(world, pair, db):
    a, b = pair
    a.start()
    b.start()
    before = len(world.sts_requests("sts-enforce"))
    send(a, SENDER, ["shared-sts-1@sts-enforce.test"], b"Subject: sts1\r\n\r\nshared-sts-1\r\n")
    assert sent(a, "shared-sts-1@sts-enforce.test"), a.log_text()[-3000:]
    assert len(world.sts_requests("sts-enforce")) == before + 1
    assert db.psql("SELECT domain FROM tlsrelay_sts_policy") == [["sts-enforce.test"]]
    send(b, SENDER, ["shared-sts-2@sts-enforce.test"], b"Subject: sts2\r\n\r\nshared-sts-2\r\n")
    assert sent(b, "shared-sts-2@sts-enforce.test"), b.log_text()[-3000:]
    assert re.search(r"MTA-STS policy of sts-enforce\.test \(cached\): mode enforce", b.log_text()), b.log_text()[-3000:]
    # The policy server saw one fetch for both relays.
    assert len(world.sts_requests("sts-enforce")) == before + 1
    assert "MTA-STS policy of sts-enforce.test fetched" not in b.log_text()


def test_one_report_covers_both_relays(world, pair, db):
    a, b = pair
    a.start()
    b.start()
    for i in range(2):
        send(a, SENDER, [f"rpt-a{i}@dane-ee.test"], f"Subject: a{i}\r\n\r\nrpt-a{i}\r\n".encode())
    send(b, SENDER, ["rpt-b0@dane-ee.test"], b"Subject: b0\r\n\r\nrpt-b0\r\n")
    send(b, SENDER, ["rpt-b1@attack-strip-starttls.test"], b"Subject: b1\r\n\r\nrpt-b1\r\n")
    assert sent(a, "rpt-a0@dane-ee.test") and sent(a, "rpt-a1@dane-ee.test") and sent(b, "rpt-b0@dane-ee.test")
    assert wait_for(lambda: attempts(b, "rpt-b1@attack-strip-starttls.test"))

    def listing(relay):
        result = ctl(relay, "tlsrpt", "list", "--json")
        assert result.returncode == 0, result
        return {d["domain"]: (d["successful"], d["failed"]) for d in json.loads(result.stdout)["domains"]}
    # Batches reach the database within a second; either relay lists the fleet's sum.
    expected = {"dane-ee.test": (3, 0), "attack-strip-starttls.test": (0, 1)}
    assert wait_for(lambda: listing(a) == expected, timeout=10), listing(a)
    assert listing(b) == expected
    shown = json.loads(ctl(b, "tlsrpt", "show", "dane-ee.test").stdout)
    assert report_summary(shown) == {"tlsa": (3, 0, {})}, shown
    # Both relays asked to send at once: one report goes out, the other relay skips.
    posts_before = len(world.tlsrpt_posts("dane-ee"))
    runs = [subprocess.Popen([str(CTL), "--config", str(r.config), "tlsrpt", "send", "dane-ee.test"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in (a, b)]
    outputs = [p.communicate(timeout=120) for p in runs]
    assert wait_for(lambda: len(world.tlsrpt_posts("dane-ee")) >= posts_before + 1, timeout=30), outputs
    time.sleep(2)
    posts = world.tlsrpt_posts("dane-ee")[posts_before:]
    assert len(posts) == 1, (outputs, posts)
    report = json.loads(gzip.decompress(posts[0]["body"]))
    assert report_summary(report) == {"tlsa": (3, 0, {})}, report
    # Reported in the database: nothing left for either relay.
    assert "dane-ee.test" not in listing(a) and "dane-ee.test" not in listing(b)
    again = ctl(a, "tlsrpt", "send", "dane-ee.test")
    assert len(world.tlsrpt_posts("dane-ee")) == posts_before + 1, again
    assert db.psql("SELECT sum(count), sum(reported) FROM tlsrelay_tlsrpt_counts WHERE domain = 'dane-ee.test'") == [["3", "3"]]


def test_database_outage_defers_with_one_alert(world, pair, db):
    a, _ = pair
    a.start()
    send(a, SENDER, ["outage-0@dane-ee.test"], b"Subject: o0\r\n\r\noutage-0\r\n")
    assert sent(a, "outage-0@dane-ee.test")
    db.stop()
    time.sleep(1.5)    # past cache_seconds = 1: nothing read before the outage is used
    # Mail is still accepted (250) while the store is down, and deferred with 4.4.3.
    for i in range(1, 4):
        send(a, SENDER, [f"outage-{i}@plain-mx.test"], f"Subject: o{i}\r\n\r\noutage-token-{i}\r\n".encode())
    for i in range(1, 4):
        outcome = wait_for(lambda: attempts(a, f"outage-{i}@plain-mx.test"))
        assert outcome and outcome[0][1:3] == ("4.4.3", "deferred"), (outcome, a.log_text()[-3000:])
        assert outcome[0][3].startswith("the policy state of plain-mx.test")
    log = a.log_text()
    assert re.search(r"to=<outage-1@plain-mx\.test>, .*status=deferred \(the policy state of plain-mx\.test \(downgrade memory, MTA-STS policy\) cannot be read: ", log)
    assert len(re.findall(r"ALERT configuration: .*policy state store postgresql://tlsrelay@127\.0\.0\.1:\d+/tlsrelay is unavailable", log)) == 1, log[-3000:]
    for i in range(1, 4):
        assert f"outage-token-{i}".encode() not in world.all_cleartext()
        assert not any(f"outage-token-{i}".encode() in m["data_bytes"] for m in world.messages("plain-mx"))
    db.start()
    # The relay notices by itself (a probe each second), then delivers what waited.
    assert wait_for(lambda: "is reachable again" in a.log_text(), timeout=15), a.log_text()[-2000:]
    flushed = ctl(a, "queue", "flush")
    assert flushed.returncode == 0, flushed
    for i in range(1, 4):
        assert sent(a, f"outage-{i}@plain-mx.test"), a.log_text()[-3000:]
    assert "policy state store postgresql://tlsrelay@127.0.0.1" in a.log_text() and "is reachable again" in a.log_text()
    assert db.psql("SELECT strongest FROM tlsrelay_memory WHERE domain = 'plain-mx.test'") == [["1"]]


def test_kill9_mid_update_leaves_the_store_consistent(world, pair, db):
    a, b = pair
    a.start()
    b.start()
    # A busy relay A: deliveries to three domains, each writing memory and TLS-RPT counts.
    recipients = [f"k{i}@{d}" for i in range(12) for d in ("dane-ee.test", "plain-mx.test", "sts-enforce.test")]
    for r in recipients:
        send(a, SENDER, [r], f"Subject: {r}\r\n\r\n{r}\r\n".encode())
    wait_for(lambda: len(re.findall(r"status=sent", a.log_text())) >= 6, timeout=30)
    a.kill9()
    delivered = len(re.findall(r"status=sent", a.log_text()))
    assert delivered >= 6
    # Every row is whole: levels as achieved, counts never below what was reported.
    rows = dict((d, int(s)) for d, s in db.psql("SELECT domain, strongest FROM tlsrelay_memory"))
    assert {k: v for k, v in rows.items() if k in ("dane-ee.test", "plain-mx.test")} == \
        {k: v for k, v in {"dane-ee.test": 3, "plain-mx.test": 1}.items() if k in rows}, rows
    assert set(rows.values()) <= {1, 2, 3}
    assert db.psql("SELECT count(*) FROM tlsrelay_tlsrpt_counts WHERE count < reported OR count < 0") == [["0"]]
    counted = int(db.psql("SELECT coalesce(sum(count), 0) FROM tlsrelay_tlsrpt_counts")[0][0])
    assert counted <= delivered + 3
    # A's session is gone with it: no lock or connection of A left behind.
    assert wait_for(lambda: db.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [["0"]], timeout=10)
    # B goes on with the same store, and A restarts on it and delivers the rest.
    send(b, SENDER, ["after-kill@dane-ee.test"], b"Subject: after\r\n\r\nafter-kill\r\n")
    assert sent(b, "after-kill@dane-ee.test")
    a.start()
    assert wait_for(lambda: len(re.findall(r"status=sent", a.log_text())) >= len(recipients), timeout=90), a.log_text()[-3000:]
    assert dict((d, int(s)) for d, s in db.psql("SELECT domain, strongest FROM tlsrelay_memory")) == \
        {"dane-ee.test": 3, "plain-mx.test": 1, "sts-enforce.test": 2}


def test_newer_schema_stops_start_up(tmp_path, world_relay_toml, db):
    first = Relay(tmp_path / "first", extra_toml=world_relay_toml + db.toml()).start()
    first.stop()
    assert db.psql("SELECT version FROM tlsrelay_schema") == [["1"]]
    db.psql("UPDATE tlsrelay_schema SET version = 99")
    relay = Relay(tmp_path / "newer", extra_toml=world_relay_toml + db.toml())
    relay.start(wait=False)
    assert relay.process.wait(timeout=30) == 78
    relay.stop()
    assert re.search(r"holds tlsrelay schema version 99, newer than this tlsrelayd knows \(1\)", relay.log_text()), relay.log_text()
    db.psql("UPDATE tlsrelay_schema SET version = 1")


def test_check_config_validates_state_without_the_database(tmp_path, world_relay_toml, db):
    relay = Relay(tmp_path / "check", extra_toml=world_relay_toml + db.toml(port=1))
    ok = subprocess.run([str(BINARY), "--check-config", "--config", str(relay.config)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok
    assert '[state]\nbackend = "postgresql"' in ok.stdout and "port = 1\n" in ok.stdout
    text = relay.config.read_text().replace('sslmode = "disable"', 'sslmode = "verify-full"')
    relay.config.write_text(text)
    bad = subprocess.run([str(BINARY), "--check-config", "--config", str(relay.config)], capture_output=True, text=True, timeout=30)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith("sslmode"))
    assert bad.returncode == 78 and f"{relay.config}:{line}: 'state.sslmode' = \"verify-full\" needs 'state.sslrootcert'" in bad.stderr, bad
    relay.config.write_text(text.replace('sslmode = "verify-full"', 'sslmode = "disable"').replace('backend = "postgresql"', 'backend = "mysql"'))
    wrong = subprocess.run([str(BINARY), "--check-config", "--config", str(relay.config)], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 78 and "'state.backend' must be \"files\" or \"postgresql\"" in wrong.stderr, wrong
