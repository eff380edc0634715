"""tlsrelayctl against a running daemon (control socket) and without one (check, offline list)."""
import json
import os
import re
import subprocess
import time

import pytest

from relay import BINARY, CTL, Relay
from smtpclient import RawSMTP
from test_delivery_behaviour import attempts, send, wait_for


def ctl(relay_or_config, *args):
    config = relay_or_config.config if hasattr(relay_or_config, "config") else relay_or_config
    return subprocess.run([str(CTL), *args, "--config", str(config)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def relay(tmp_path, world, world_relay_toml):
    relay = Relay(tmp_path / "ctl", extra_toml=world_relay_toml).start()
    yield relay
    relay.stop()


def test_queue_operations_over_the_control_socket(world, relay):
    send(relay, "sender@plain-mx.test", ["victim@attack-strip-starttls.test"], b"Subject: held\r\n\r\nctl-token\r\n")
    assert wait_for(lambda: attempts(relay, "victim@attack-strip-starttls.test"))
    # The status line is logged when the attempt ends; the round's record is saved just after.
    assert wait_for(lambda: json.loads(ctl(relay, "status", "--json").stdout)["queue"]["deferred"] == 1)
    listing = json.loads(ctl(relay, "queue", "list", "--json").stdout)
    assert len(listing) == 1
    entry = listing[0]
    queue_id = entry["queue_id"]
    assert entry["sender"] == "sender@plain-mx.test"
    assert entry["recipients"][0]["status"] == "pending"
    assert "did not offer STARTTLS" in entry["recipients"][0]["last_reason"]
    table = ctl(relay, "queue", "list").stdout
    assert queue_id in table and "<victim@attack-strip-starttls.test> pending: TLS is required" in table

    status = json.loads(ctl(relay, "status", "--json").stdout)
    assert status["queue"] == {"active": 0, "deferred": 1, "held": 0, "total": 1}
    assert status["recent_alerts"][0]["result_type"] == "starttls-not-supported"

    assert ctl(relay, "queue", "hold", queue_id).returncode == 0
    assert json.loads(ctl(relay, "queue", "show", queue_id, "--json").stdout)["held"] is True
    refused = ctl(relay, "queue", "flush", queue_id)
    assert refused.returncode == 1 and "on hold" in refused.stderr
    # Held survives a restart.
    relay.stop()
    relay.start()
    assert json.loads(ctl(relay, "status", "--json").stdout)["queue"]["held"] == 1
    assert ctl(relay, "queue", "release", queue_id).returncode == 0
    assert wait_for(lambda: len(attempts(relay, "victim@attack-strip-starttls.test")) >= 1)
    assert wait_for(lambda: json.loads(ctl(relay, "status", "--json").stdout)["queue"]["deferred"] == 1)
    flushed = ctl(relay, "queue", "flush", "--domain", "attack-strip-starttls.test")
    assert flushed.returncode == 0 and "1 message(s) scheduled" in flushed.stdout
    shown = ctl(relay, "queue", "show", queue_id.lower())   # ids are case-insensitive for people
    assert "Subject: held" in shown.stdout and "dsn=4.7.5" in shown.stdout, shown
    # Operator actions are in the daemon's log.
    log = relay.log_text()
    assert f"{queue_id}: put on hold by the operator" in log and f"{queue_id}: released by the operator" in log
    assert "flush by the operator: 1 message(s) scheduled now" in log
    assert ctl(relay, "queue", "delete", queue_id).returncode == 0
    assert json.loads(ctl(relay, "queue", "list", "--json").stdout) == []
    assert ctl(relay, "queue", "delete", queue_id).returncode == 1
    bad = ctl(relay, "queue", "show", "../../etc/passwd")
    assert bad.returncode == 1 and "not a queue id" in bad.stderr
    policy = json.loads(ctl(relay, "policy", "show", "attack-strip-starttls.test", "--json").stdout)
    assert policy["domain"] == "attack-strip-starttls.test" and "mta_sts" not in policy
    # The socket is only for root and the service user.
    assert oct(os.stat(relay.state / "control.sock").st_mode & 0o777) == "0o660"


def test_daemon_not_running(tmp_path, world_relay_toml):
    relay = Relay(tmp_path / "down", extra_toml=world_relay_toml)
    result = ctl(relay, "status")
    assert result.returncode == 2
    assert "tlsrelayd is not running" in result.stderr


def all_scenarios():
    import scenarios as world_scenarios
    return [s.name for s in world_scenarios.SCENARIOS]


@pytest.mark.parametrize("scenario", all_scenarios())
def test_check_agrees_with_delivery_for_every_scenario(world, tmp_path, world_relay_toml, scenario):
    """check exits 0 exactly for the scenarios a delivery completes, 1 for those it defers or bounces."""
    relay = Relay(tmp_path / "check-all", extra_toml=world_relay_toml)
    expected = world.scenario(scenario)["expected"]
    result = ctl(relay, "check", world.scenario(scenario)["domain"], "--json")
    report = json.loads(result.stdout)
    assert result.returncode == (0 if expected["action"] == "deliver" else 1), result.stdout
    if expected["action"] != "deliver":
        assert report["verdict"]["action"] == {"defer": "deferred", "bounce": "bounced"}[expected["action"]]
        assert report["verdict"]["status"].split(".")[0:2] == expected["status"].split(".")[0:2], report["verdict"]


@pytest.mark.parametrize("scenario,code,text", [
    ("dane-ee", 0, "DANE TLSA 3 1 1 matched at depth 0"),
    ("sts-enforce", 0, "policy: mta-sts; TLS required, WebPKI for mx.sts-enforce.test [rule sts-enforce, floor mta-sts]"),
    ("attack-strip-starttls", 1, "deferred (4.7.5): TLS is required, but host"),
    ("dane-tlsa-mismatch", 1, "deferred (4.7.5)"),
    ("null-mx", 1, "bounced (5.1.10)"),
    ("two-mx-second-good", 0, "[FAIL]"),
])
def test_check_without_daemon(world, tmp_path, world_relay_toml, scenario, code, text):
    relay = Relay(tmp_path / "check", extra_toml=world_relay_toml)   # configuration only, never started
    domain = world.scenario(scenario)["domain"]
    result = ctl(relay, "check", domain)
    assert result.returncode == code, result.stdout + result.stderr
    assert text in result.stdout, result.stdout
    report = json.loads(ctl(relay, "check", domain, "--json").stdout)
    assert report["deliverable"] is (code == 0)
    # Nothing was sent: no MX recorded a message from the check.
    for host in world.scenario(scenario)["mx"]:
        assert not any(m["mail_from"] == "" and not m["rcpt_tos"] for m in world.messages(host["name"]))


def test_control_socket_request_ended_by_half_close(relay):
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(relay.state / "control.sock"))
    s.sendall(b'{"command": "status"}')
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    answer = json.loads(data)
    assert answer["ok"] is True and "queue" in answer["result"]
    s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s2.connect(str(relay.state / "control.sock"))
    s2.sendall(b'{"command": "frobnicate"}\n')
    assert json.loads(s2.recv(65536)) == {"ok": False, "error": "unknown command 'frobnicate'"}


def test_cli_conventions_and_offline_reads(world, tmp_path, world_relay_toml):
    """What a first-time administrator types: --config before the command, --version, queue show
    and policy show without a daemon, a missing configuration file, sizes with units."""
    relay = Relay(tmp_path / "conventions", extra_toml=world_relay_toml).start()
    try:
        c = RawSMTP(relay.port)
        c.code()
        c.command("EHLO client.example.org")
        assert c.command("MAIL FROM:<sender@plain-mx.test> RET=HDRS ENVID=conv-1").startswith("250")
        assert c.command("RCPT TO:<victim@attack-strip-starttls.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;victim@attack-strip-starttls.test").startswith("250")
        assert c.command("DATA").startswith("354")
        c.send(b"Subject: c\r\n\r\nconventions\r\n.\r\n")
        queue_id = c.code().split()[-1]
        c.command("QUIT")
        wait_for(lambda: attempts(relay, "victim@attack-strip-starttls.test"))
        before = subprocess.run([str(CTL), "--config", str(relay.config), "status"], capture_output=True, text=True, timeout=30)
        assert before.returncode == 0 and "queue: 0 active, 1 deferred" in before.stdout, before
        assert "last reload: none since start" in before.stdout
        listing = subprocess.run([str(CTL), "--json", "--config", str(relay.config), "queue", "list"], capture_output=True, text=True, timeout=30)
        assert json.loads(listing.stdout)[0]["queue_id"] == queue_id
        human = ctl(relay, "queue", "list")
        assert re.search(r"-- \d+ bytes in 1 message\(s\)\.", human.stdout), human.stdout
    finally:
        relay.stop()
    # Without the daemon: the spool and the state directory are read directly.
    offline = json.loads(ctl(relay, "queue", "list", "--json").stdout)
    assert [(e["queue_id"], e["held"], e["in_delivery"]) for e in offline] == [(queue_id, False, False)], offline
    assert offline[0]["recipients"][0]["status"] == "pending" and "did not offer STARTTLS" in offline[0]["recipients"][0]["last_reason"]
    shown = ctl(relay, "queue", "show", queue_id)
    assert shown.returncode == 0 and f"queue id:   {queue_id}" in shown.stdout and "read from the spool" in shown.stderr, shown
    assert "DSN:        RET=HDRS ENVID=conv-1" in shown.stdout
    assert "[NOTIFY=FAILURE,DELAY ORCPT=rfc822;victim@attack-strip-starttls.test]" in shown.stdout, shown.stdout
    policy = ctl(relay, "policy", "show", "plain-mx.test")
    assert policy.returncode == 0 and "local level:       (no local level)" in policy.stdout, policy
    for binary in (CTL, BINARY):
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
        assert version.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+\n", version.stdout), version
    quiet = subprocess.run([str(BINARY), "--check-config", "--quiet", "--config", str(relay.config)], capture_output=True, text=True, timeout=30)
    assert quiet.returncode == 0 and quiet.stdout == "", quiet
    missing = subprocess.run([str(CTL), "status", "--config", str(tmp_path / "nowhere.toml")], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "does not exist; name another with --config FILE" in missing.stderr, missing
    usage = subprocess.run([str(CTL), "queue", "frobnicate"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 64
    assert "64 usage error" in subprocess.run([str(CTL), "--help"], capture_output=True, text=True, timeout=30).stdout


def test_busy_port_names_address_and_reason(tmp_path):
    """A second daemon on a busy port: the address and the system's reason, nothing else."""
    first = Relay(tmp_path / "first").start()
    try:
        busy = f"127.0.0.1:{first.port}"
        second = Relay(tmp_path / "second", listen=[busy])
        result = subprocess.run([str(BINARY), "--config", str(second.config)], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert f"cannot listen on {busy}: Address already in use" in result.stderr, result.stderr
        assert "bind(descriptor" not in result.stderr and "errno" not in result.stderr
    finally:
        first.stop()


def test_check_explains_itself(world, tmp_path, world_relay_toml):
    """check names what it saw: the presented certificate's SPKI SHA-256 beside the TLSA data on
    a mismatch (a missed key rollover or an attack), OpenSSL's verify code by name, a refused
    connection as such, a skipped host without empty fields, structured JSON and a verdict always."""
    relay = Relay(tmp_path / "explains", extra_toml=world_relay_toml)
    mismatch = world.scenario("dane-tlsa-mismatch")
    spki = mismatch["mx"][0]["certificate"]["spki_sha256"]
    text = ctl(relay, "check", mismatch["domain"]).stdout
    assert f"SPKI SHA-256 {spki} (the data of a 3 1 1 TLSA record that would match it)" in text, text
    assert "X509_V_ERR_DANE_NO_MATCH, verify result 65" in text, text
    assert "required by DANE (TLSA records of mx.dane-tlsa-mismatch.test)" in text, text
    report = json.loads(ctl(relay, "check", mismatch["domain"], "--json").stdout)
    host = report["hosts"][0]
    assert host["policy"]["source"] == "dane" and host["demand"] == {"starttls": "required", "authentication": "dane",
                                                                     "tlsa_base": "mx.dane-tlsa-mismatch.test", "usable_records": 2}
    assert all(isinstance(r["usable"], bool) for r in host["tlsa"]) and report["mx"]["dnssec"] == "secure"
    down = ctl(relay, "check", world.scenario("two-mx-first-down")["domain"]).stdout
    assert re.search(r"connect failed: Connection refused  \[FAIL\]", down), down
    assert "no STARTTLS offered -- connect" not in down
    skipped = ctl(relay, "check", world.scenario("dane-bogus-tlsa")["domain"]).stdout
    assert re.search(r"host mx\.dane-bogus-tlsa\.test\n  skipped \(4\.7\.5, rule tlsa-unusable\): TLSA records at", skipped), skipped
    assert "addresses: ;" not in skipped and "[addresses: ]" not in skipped
    plain = json.loads(ctl(relay, "check", world.scenario("plain-mx")["domain"], "--json").stdout)
    assert plain["verdict"] == {"action": "delivered", "status": "2.0.0", "in_clear": False,
                                "reason": "a delivery now would go ahead as its policy requires"}
    clear = json.loads(ctl(relay, "check", world.scenario("no-tls")["domain"], "--json").stdout)
    assert clear["verdict"]["in_clear"] is True and "IN CLEAR" in ctl(relay, "check", world.scenario("no-tls")["domain"]).stdout
    assert plain["mta_sts"] == {"cached": False, "mode": None} and plain["local_level"] is None
    assert "policy: no policy; opportunistic TLS, no certificate check" in ctl(relay, "check", world.scenario("plain-mx")["domain"]).stdout
    bad = ctl(relay, "check", "plain-mx.test..")
    assert bad.returncode == 2 and "is not a domain name" in bad.stderr


def test_deferral_reasons_name_the_policy(world, tmp_path, world_relay_toml):
    relay = Relay(tmp_path / "reasons", extra_toml=world_relay_toml).start()
    try:
        send(relay, "sender@plain-mx.test", ["victim@attack-strip-starttls.test", "victim@attack-sts-strip-starttls.test"],
             b"Subject: reasons\r\n\r\nreasons\r\n")
        dane = wait_for(lambda: attempts(relay, "victim@attack-strip-starttls.test"))
        sts = wait_for(lambda: attempts(relay, "victim@attack-sts-strip-starttls.test"))
        assert "did not offer STARTTLS — required by DANE (TLSA records of mx.attack-strip-starttls.test)" in dane[0][3], dane
        assert "did not offer STARTTLS — required by MTA-STS enforce (policy of attack-sts-strip-starttls.test)" in sts[0][3], sts
        listing = ctl(relay, "queue", "list").stdout
        assert "required by DANE" in listing and "required by MTA-STS enforce" in listing, listing
    finally:
        relay.stop()


def test_status_shows_suspended_destinations(world, tmp_path, world_relay_toml):
    """A destination whose MX keeps refusing connections while mail for it waits is suspended
    once its window has shrunk to one session and that one fails too (like Postfix's "delivery
    temporarily suspended"); `status` names it, until when and why, in text and in JSON. The
    four messages are queued with delivery held and found together by the restart's recovery,
    so they wait for the destination at once (sent one by one, each could fail alone)."""
    relay = Relay(tmp_path / "suspend", extra_toml=world_relay_toml + "hold = true\n").start()
    try:
        for i in range(4):
            send(relay, "sender@plain-mx.test", [f"user{i}@dane-ee-down.test"], f"Subject: s{i}\r\n\r\nsuspend-{i}\r\n".encode())
        relay.stop()
        relay.extra_toml = world_relay_toml
        relay.write_config()
        relay.start()
        status = wait_for(lambda: [d for d in json.loads(ctl(relay, "status", "--json").stdout)["suspended_destinations"]
                                   if d["domain"] == "dane-ee-down.test"], timeout=10)
        assert status, ctl(relay, "status", "--json").stdout
        entry = status[0]
        assert entry["status"].startswith("4.") and entry["reason"]
        assert 0 < entry["until"] - time.time() <= 61
        text = ctl(relay, "status")
        assert text.returncode == 0
        assert re.search(r"suspended destinations .*:\n  dane-ee-down\.test until \S+: 4\.\d\.\d+ ", text.stdout), text.stdout
        # A healthy relay shows none.
        other = ctl(relay, "status", "--json")
        assert all(d["domain"] != "plain-mx.test" for d in json.loads(other.stdout)["suspended_destinations"])
    finally:
        relay.stop()
