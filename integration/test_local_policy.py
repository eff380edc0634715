"""Local per-domain levels and downgrade memory (the `[policy]` section)."""
import json
import re
import time

import pytest

from relay import Relay
from test_delivery_behaviour import attempts, send, wait_for


def relay_with(tmp_path, world_relay_toml, name, policy_toml):
    relay = Relay(tmp_path / name, extra_toml=world_relay_toml + policy_toml).start()
    return relay


def test_local_levels_override_and_expire(world, tmp_path, world_relay_toml):
    relay = relay_with(tmp_path, world_relay_toml, "levels", """
[[policy.domain]]
name = "dane-tlsa-mismatch.test"
level = "encrypt"
reason = "their TLSA is stale, ticket 4711"
expires = "2099-12-31"
[[policy.domain]]
name = "dane-ta-badname.test"
level = "may"
reason = "old exception"
expires = "2020-01-01"
""")
    try:
        send(relay, "sender@plain-mx2.test", ["user@dane-tlsa-mismatch.test"], b"Subject: override\r\n\r\noverride-token-1\r\n")
        send(relay, "sender@plain-mx2.test", ["user@dane-ta-badname.test"], b"Subject: expired\r\n\r\nexpired-token-2\r\n")
        first = wait_for(lambda: attempts(relay, "user@dane-tlsa-mismatch.test"))
        assert first[0][1:3] == ("2.0.0", "sent"), first
        log = relay.log_text()
        assert "local policy level encrypt for dane-tlsa-mismatch.test overrides discovered policy: their TLSA is stale, ticket 4711 (until 2099-12-31)" in log
        got = world.wait_for_messages("dane-tlsa-mismatch")
        assert any(b"override-token-1" in m["data_bytes"] and m["tls"] for m in got)
        # The expired entry no longer applies: DANE governs and defers.
        second = wait_for(lambda: attempts(relay, "user@dane-ta-badname.test"))
        assert second[0][1:3] == ("4.7.5", "deferred"), second
        assert "local policy level may for dane-ta-badname.test expired on 2020-01-01 and no longer applies (it was: old exception)" in relay.log_text()
    finally:
        relay.stop()


@pytest.mark.parametrize("mode", ["report", "enforce"])
def test_downgrade_memory_starttls_stripped(world, tmp_path, world_relay_toml, mode):
    # No connection reuse: the second message must meet the MX on a new connection, the one the
    # stripping attacker gets to touch (an open TLS connection would carry it safely).
    toml = world_relay_toml + "connection_cache_time_limit = 0\n"
    relay = relay_with(tmp_path, toml, f"memory-{mode}", f'\n[policy]\ndowngrade_memory = "{mode}"\n')
    recipient = f"memory-{mode}@plain-mx.test"
    try:
        send(relay, "sender@plain-mx2.test", [recipient], f"Subject: first\r\n\r\nmemory-{mode}-first\r\n".encode())
        assert wait_for(lambda: [a for a in attempts(relay, recipient) if a[2] == "sent"])
        memory = json.loads((relay.state / "memory" / "plain-mx.test.json").read_text())
        assert memory["strongest"] == "tls"
        # STARTTLS disappears from the EHLO reply (what a stripping attacker does).
        world.set_mx_behaviour("plain-mx", ehlo=["250 mx.plain-mx.test", "250 PIPELINING", "250 8BITMIME"])
        send(relay, "sender@plain-mx2.test", [recipient], f"Subject: second\r\n\r\nmemory-{mode}-second\r\n".encode())
        outcome = wait_for(lambda: attempts(relay, recipient)[1:] if len(attempts(relay, recipient)) > 1 else None)
        cleartext = world.cleartext("plain-mx")
        if mode == "report":
            assert outcome[0][1:3] == ("2.0.0", "sent")
            assert re.search(r"ALERT downgrade-reported: .*plain-mx\.test was delivered with tls before, now with none", relay.log_text())
        else:
            assert outcome[0][1:3] == ("4.7.5", "deferred"), outcome
            assert re.search(r"ALERT downgrade-refused: TLS policy alert \(starttls-not-supported\) for plain-mx\.test", relay.log_text())
            assert f"memory-{mode}-second".encode() not in cleartext
            # The grace window starts at the first refusal, also for a remembered tls level
            # (before, it never started, and the domain was deferred until queue_lifetime).
            memory = json.loads((relay.state / "memory" / "plain-mx.test.json").read_text())
            assert memory["strongest"] == "tls" and memory["downgradeFirstSeen"] > 0, memory
    finally:
        relay.stop()
        world.clear_mx_behaviour("plain-mx")


def test_downgrade_from_dane_refused_until_grace_ends(world, tmp_path, world_relay_toml):
    relay = Relay(tmp_path / "grace", extra_toml=world_relay_toml + '\n[policy]\ndowngrade_memory = "enforce"\ndowngrade_grace = 3600\n')
    # plain-mx2.test was once delivered with DANE (as if its TLSA records were withdrawn since).
    (relay.state / "memory").mkdir(parents=True)
    (relay.state / "memory" / "plain-mx2.test.json").write_text(json.dumps(
        {"domain": "plain-mx2.test", "strongest": "dane", "achievedAt": time.time() - 86400}))
    relay.start()
    try:
        send(relay, "sender@plain-mx.test", ["grace@plain-mx2.test"], b"Subject: grace\r\n\r\ngrace-token\r\n")
        outcome = wait_for(lambda: attempts(relay, "grace@plain-mx2.test"))
        assert outcome[0][1:3] == ("4.7.5", "deferred"), outcome
        assert "was delivered with dane before" in outcome[0][3]
        memory = json.loads((relay.state / "memory" / "plain-mx2.test.json").read_text())
        assert memory["downgradeFirstSeen"] > 0
        assert not [m for m in world.messages("plain-mx2") if b"grace-token" in m["data_bytes"]]
        # After the grace window the weaker level becomes the new normal.
        memory["downgradeFirstSeen"] -= 7200
        (relay.state / "memory" / "plain-mx2.test.json").write_text(json.dumps(memory))
        relay.stop()
        relay.start()
        send(relay, "sender@plain-mx.test", ["grace2@plain-mx2.test"], b"Subject: grace\r\n\r\ngrace-token-2\r\n")
        outcome = wait_for(lambda: attempts(relay, "grace2@plain-mx2.test"))
        assert outcome[0][1:3] == ("2.0.0", "sent"), outcome
        memory = json.loads((relay.state / "memory" / "plain-mx2.test.json").read_text())
        assert memory["strongest"] == "tls" and memory.get("downgradeFirstSeen") is None
    finally:
        relay.stop()
