"""MTA-STS (RFC 8461) beyond the scenario table: redirects are not followed, a cached policy
stays in force when the policy host fails, and the cache survives a restart."""
import json
import re
import smtplib
import time

import pytest

from relay import Relay


def send(relay, recipient, token):
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("sender@dane-ee.test", [recipient], f"Subject: {token}\r\n\r\n{token}\r\n".encode())


def outcome(relay, recipient, token_count, timeout=30):
    """The status of the token_count-th attempt logged for recipient."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.findall(r"to=<" + re.escape(recipient) + r">, .*?dsn=([0-9.]+), status=(\w+)", relay.log_text())
        if len(found) >= token_count:
            return found[token_count - 1]
        time.sleep(0.2)
    raise AssertionError(f"no attempt #{token_count} for {recipient}:\n{relay.log_text()[-2000:]}")


@pytest.fixture
def sts_relay(tmp_path, world, world_relay_toml):
    relay = Relay(tmp_path / "sts", extra_toml=world_relay_toml).start()
    yield relay
    relay.stop()
    for name in ("sts-enforce", "sts-enforce-otherca"):
        world.set_sts(name, "good")


def test_redirect_is_not_followed(world, sts_relay):
    scenario = world.scenario("sts-enforce")
    world.set_sts("sts-enforce", "redirect")
    send(sts_relay, scenario["recipient"], "sts-redirect")
    # No policy could be fetched and none is cached: deliver as without MTA-STS (RFC 8461 §3.3),
    # and say why.
    assert outcome(sts_relay, scenario["recipient"], 1) == ("2.0.0", "sent")
    assert re.search(r"MTA-STS policy of sts-enforce\.test could not be fetched: .*answered 30[1278]", sts_relay.log_text())
    assert not (sts_relay.state / "mta-sts" / "sts-enforce.test.json").exists()
    requests = world.sts_requests("sts-enforce")
    assert requests and all(r.get("path") == "/.well-known/mta-sts.txt" and r.get("sni") == "mta-sts.sts-enforce.test"
                            for r in requests), requests


@pytest.mark.parametrize("failure", ["404", "content-type", "oversize"])
def test_cached_policy_survives_restart_and_fetch_failure(world, sts_relay, failure):
    scenario = world.scenario("sts-enforce-otherca")
    recipient = scenario["recipient"]
    send(sts_relay, recipient, f"sts-cache-1-{failure}")
    # Enforced: the MX certificate is from an untrusted CA.
    assert outcome(sts_relay, recipient, 1) == ("4.7.5", "deferred")
    cache_file = sts_relay.state / "mta-sts" / "sts-enforce-otherca.test.json"
    cached = json.loads(cache_file.read_text())
    assert cached["policy"]["mode"] == "enforce"
    # The policy host now fails, and the cached policy is old enough to be refreshed.
    world.set_sts("sts-enforce-otherca", failure)
    cached["fetchedAt"] -= 2 * 86400
    cache_file.write_text(json.dumps(cached))
    sts_relay.stop()
    sts_relay.start()   # the restart keeps the cache
    before = len(world.sts_requests("sts-enforce-otherca"))
    send(sts_relay, recipient, f"sts-cache-2-{failure}")
    # The refresh fails, the cached policy stays in force: still deferred, never in clear.
    assert outcome(sts_relay, recipient, 2) == ("4.7.5", "deferred")
    assert len(world.sts_requests("sts-enforce-otherca")) > before, "no refresh was attempted"
    assert "the cached policy stays in force" in sts_relay.log_text()
    assert b"sts-cache-" not in world.cleartext(scenario["mx"][0]["name"])
    assert not any(b"sts-cache-" in m["data_bytes"] for m in world.messages(scenario["mx"][0]["name"]))
