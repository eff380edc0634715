"""The floor rule end to end (issue: one policy engine): where one layer of policy meets another,
no attempt may end below the highest floor. Each test is a combination that sent mail in clear or
without authentication before the planner, on the real test world (signed zone, real TLS,
attacking proxies), and `tlsrelayctl check` says the same as the delivery, from the daemon's own
state."""
import json
import re
import time

from relay import Relay
from test_delivery_behaviour import attempts, send, wait_for
from test_tlsrelayctl import ctl


def remember(relay, domain, strongest):
    """Downgrade memory as the daemon writes it: `domain` was once delivered with `strongest`."""
    (relay.state / "memory").mkdir(parents=True, exist_ok=True)
    (relay.state / "memory" / f"{domain}.json").write_text(json.dumps(
        {"domain": domain, "strongest": strongest, "achievedAt": time.time() - 3600}))


def test_memory_enforce_holds_under_sts_testing_when_starttls_is_stripped(world, tmp_path, world_relay_toml):
    """Remembered at mta-sts under `enforce`, the domain now publishes MTA-STS `testing`, and an
    attacker strips STARTTLS: the testing fallback must not go below the memory's floor (it used
    to retry opportunistic and deliver in clear, with an alert saying "report")."""
    relay = Relay(tmp_path / "sts-testing-memory", extra_toml=world_relay_toml + '\n[policy]\ndowngrade_memory = "enforce"\n', journal=True)
    scenario = world.scenario("sts-testing-strip")
    domain = scenario["domain"]
    remember(relay, domain, "mta-sts")
    # check, before the daemon runs, reads the same memory and says the same.
    result = ctl(relay, "check", domain, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1, result.stdout
    assert report["verdict"]["action"] == "deferred" and report["verdict"]["status"] == "4.7.5", report["verdict"]
    assert report["downgrade_memory"]["strongest"] == "mta-sts" and report["downgrade_memory"]["mode"] == "enforce"
    assert report["hosts"][0]["floor"] == "mta-sts" and report["hosts"][0]["rule"] == "memory-enforce", report["hosts"]
    relay.start()
    recipient = scenario["recipient"]
    try:
        send(relay, "sender@plain-mx.test", [recipient], b"Subject: floor\r\n\r\nfloor-token-sts-testing\r\n")
        outcome = wait_for(lambda: attempts(relay, recipient))
        assert outcome[0][1:3] == ("4.7.5", "deferred"), outcome
        # The reason names the policy that decided.
        assert f"required by downgrade memory ({domain} was delivered with mta-sts before)" in outcome[0][3], outcome
        for host in scenario["mx"]:
            assert b"floor-token-sts-testing" not in world.cleartext(host["name"])
        alerts = wait_for(lambda: relay.journal_entries(RECIPIENT_DOMAIN=domain, POLICY_SOURCE="tofu") or None, timeout=10)
        assert any(a["PRIORITY"] == "2" and a["TLSRPT_RESULT_TYPE"] == "starttls-not-supported" for a in alerts), alerts
        memory = json.loads((relay.state / "memory" / f"{domain}.json").read_text())
        assert memory["strongest"] == "mta-sts" and memory["downgradeFirstSeen"] > 0
    finally:
        relay.stop()


def test_sts_testing_strip_without_memory_is_delivered_and_check_agrees(world, tmp_path, world_relay_toml):
    """The same domain without memory: MTA-STS testing never blocks (RFC 8461 §5); check shows
    the reported failure and the fallback attempt a delivery makes."""
    relay = Relay(tmp_path / "sts-testing-plain", extra_toml=world_relay_toml)
    domain = world.scenario("sts-testing-strip")["domain"]
    result = ctl(relay, "check", domain, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout
    attempts_made = [c["attempt"] for c in report["hosts"][0]["connections"]]
    assert attempts_made == ["first", "testing-fallback"], report["hosts"]
    assert any(a["policy_source"] == "mta-sts" and not a["enforced"] and a["result_type"] == "starttls-not-supported"
               for a in report["alerts"]), report["alerts"]


def test_local_dane_only_with_only_unusable_tlsa_is_deferred(world, tmp_path, world_relay_toml):
    """`dane-only` for a domain whose TLSA RRset holds only unusable records (usage 0 and 1): the
    documented deferral, not unauthenticated TLS that any self-signed MITM would receive."""
    scenario = world.scenario("dane-unusable")
    domain = scenario["domain"]
    relay = Relay(tmp_path / "dane-only", extra_toml=world_relay_toml + f'''
[[policy.domain]]
name = "{domain}"
level = "dane-only"
reason = "DANE is mandatory for this partner"
''', journal=True)
    result = ctl(relay, "check", domain, "--json")
    assert result.returncode == 1, result.stdout
    assert json.loads(result.stdout)["hosts"][0]["rule"] == "local-dane-only-refused"
    relay.start()
    recipient = scenario["recipient"]
    try:
        send(relay, "sender@plain-mx.test", [recipient], b"Subject: dane-only\r\n\r\ndane-only-token\r\n")
        outcome = wait_for(lambda: attempts(relay, recipient))
        assert outcome[0][1:3] == ("4.7.5", "deferred"), outcome
        assert "only unusable TLSA records" in outcome[0][3] and "local level dane-only" in outcome[0][3]
        assert not [m for m in world.messages(scenario["mx"][0]["name"]) if b"dane-only-token" in m["data_bytes"]]
        alerts = wait_for(lambda: relay.journal_entries(RECIPIENT_DOMAIN=domain) or None, timeout=10)
        assert any(a["TLSRPT_RESULT_TYPE"] == "dane-required" and a["POLICY_SOURCE"] == "local" for a in alerts), alerts
    finally:
        relay.stop()


def test_check_reads_the_daemons_mta_sts_cache_and_writes_nothing(world, tmp_path, world_relay_toml):
    """check enforces the policy the daemon still holds: a cached enforce policy for a domain
    whose live policy is testing (same TXT id, fetched just now) is what check applies."""
    relay = Relay(tmp_path / "check-cache", extra_toml=world_relay_toml)
    scenario = world.scenario("sts-testing-otherca")
    domain = scenario["domain"]
    sts = scenario["mta_sts"]
    cache = relay.state / "mta-sts"
    cache.mkdir(parents=True)
    now = time.time()
    entry = {"domain": domain, "id": sts["id"], "fetchedAt": now, "expiresAt": now + 86400,
             "policy": {"mode": "enforce", "maxAge": 86400, "mx": sts["mx_patterns"]}}
    (cache / f"{domain}.json").write_text(json.dumps(entry))
    before = sorted(p.name for p in relay.state.rglob("*"))
    result = ctl(relay, "check", domain, "--json")
    report = json.loads(result.stdout)
    # Live, testing would deliver; the cached enforce policy defers on the untrusted certificate.
    assert result.returncode == 1, result.stdout
    assert report["mta_sts"]["mode"] == "enforce" and report["mta_sts"]["cached"] is True, report["mta_sts"]
    assert report["verdict"]["status"] == "4.7.5"
    # A policy check has to fetch (nothing cached) is not stored: the daemon's state is untouched.
    assert ctl(relay, "check", world.scenario("sts-enforce")["domain"], "--json").returncode == 0
    assert sorted(p.name for p in relay.state.rglob("*")) == before
    assert json.loads((cache / f"{domain}.json").read_text()) == entry


def test_unreadable_state_never_lowers_protection(world, tmp_path, world_relay_toml):
    """A memory file or an MTA-STS cache file that cannot be read is never taken as "nothing
    remembered" / "no policy": the memory counts as dane, the lost policy defers, both are said
    in the log, and the relay never overwrites what it could not read with something weaker."""
    relay = Relay(tmp_path / "unreadable", extra_toml=world_relay_toml + '\n[policy]\ndowngrade_memory = "enforce"\n')
    (relay.state / "memory").mkdir(parents=True)
    memory_file = relay.state / "memory" / "attack-strip-nopolicy.test.json"
    memory_file.write_text('{"domain": "attack-strip-nopolicy.test", "strongest": "dane", "achievedAt": ')   # truncated
    hostile = relay.state / "memory" / "plain-mx.test.json"
    hostile.write_text(json.dumps({"domain": "plain-mx.test", "strongest": "dane", "achievedAt": 1, "downgradeFirstSeen": 1e300}))
    sts = world.scenario("attack-sts-strip-starttls")
    (relay.state / "mta-sts").mkdir(parents=True)
    cache_file = relay.state / "mta-sts" / f"{sts['domain']}.json"
    cache_file.write_text('{"domain": "' + sts["domain"] + '", "id": ')
    world.set_sts(sts["domain"], "404")
    relay.start()
    try:
        send(relay, "sender@plain-mx2.test", ["user@attack-strip-nopolicy.test", "user@plain-mx.test", sts["recipient"]],
             b"Subject: unreadable\r\n\r\nunreadable-token\r\n")
        stripped = wait_for(lambda: attempts(relay, "user@attack-strip-nopolicy.test"))
        assert stripped[0][1:3] == ("4.7.5", "deferred"), stripped
        assert "downgrade memory" in stripped[0][3]
        # A time past Int.max does not crash the daemon; the record is implausible, so dane holds.
        plain = wait_for(lambda: attempts(relay, "user@plain-mx.test"))
        assert plain[0][1:3] == ("4.7.5", "deferred"), plain
        assert relay.process.poll() is None
        lost = wait_for(lambda: attempts(relay, sts["recipient"]))
        assert lost[0][1:3] == ("4.4.3", "deferred") and "cached MTA-STS policy" in lost[0][3] and "unreadable" in lost[0][3], lost
        log = relay.log_text()
        assert "the downgrade memory of attack-strip-nopolicy.test is unreadable" in log
        for host in ("mx.attack-strip-nopolicy.test", sts["mx"][0]["name"]):
            assert b"unreadable-token" not in world.cleartext(host)
        assert memory_file.read_text().endswith('"achievedAt": ')   # untouched
        check = json.loads(ctl(relay, "check", "attack-strip-nopolicy.test", "--json").stdout)
        assert check["downgrade_memory"]["unreadable"] and check["verdict"]["status"] == "4.7.5"
    finally:
        relay.stop()
        world.set_sts(sts["domain"], "good")
