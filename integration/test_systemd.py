"""tlsrelayd as a systemd service: sd_notify (READY, STATUS, WATCHDOG), SIGHUP reload, native
journald logging, and the unit file itself (systemd-analyze verify and security score)."""
import re
import signal
import socket
import subprocess
import time


from relay import BINARY, CTL, ROOT, Relay
from test_delivery_behaviour import attempts, send, wait_for


def test_sd_notify_ready_status_and_watchdog(tmp_path):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(15)
    relay = Relay(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    relay.start(env=env)
    try:
        messages = []
        deadline = time.time() + 15
        while time.time() < deadline and not (any("WATCHDOG=1" in m for m in messages) and any("READY=1" in m for m in messages)):
            messages.append(listener.recv(4096).decode())
        ready = [m for m in messages if "READY=1" in m]
        assert ready, messages
        assert "STATUS=accepting mail" in ready[0]
        assert any(re.search(r"STATUS=accepting mail; queue: \d+ active, \d+ deferred, \d+ held", m) for m in messages)
        assert any("WATCHDOG=1" in m for m in messages)
        relay.process.send_signal(signal.SIGTERM)
        assert any("STOPPING=1" in m for m in (listener.recv(4096).decode() for _ in range(5))), "no STOPPING=1"
    finally:
        relay.stop()
        listener.close()


def test_sighup_reloads_policy_and_keeps_running(world, tmp_path, world_relay_toml):
    relay = Relay(tmp_path / "reload", extra_toml=world_relay_toml).start()
    try:
        send(relay, "sender@plain-mx.test", ["user@dane-tlsa-mismatch.test"], b"Subject: reload\r\n\r\nreload-token\r\n")
        first = wait_for(lambda: attempts(relay, "user@dane-tlsa-mismatch.test"))
        assert first[0][1:3] == ("4.7.5", "deferred")
        # A broken file changes nothing and the daemon keeps running.
        good = relay.config.read_text()
        relay.config.write_text(good + "\n[policy]\ndowngrade_memory = \"sometimes\"\n")
        relay.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload: configuration not changed" in relay.log_text(), timeout=10)
        assert relay.process.poll() is None
        # tlsrelayctl reload (the unit's ExecReload) waits for the answer and fails on a refused
        # file, so systemctl reload fails too; status shows the last reload's result.
        ctl = str(ROOT / ".build/debug/tlsrelayctl")
        refused = subprocess.run([ctl, "reload", "--config", str(relay.config)], capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1, refused
        assert "reload refused: configuration not changed:" in refused.stderr and "downgrade_memory" in refused.stderr, refused.stderr
        status = subprocess.run([ctl, "--config", str(relay.config), "status"], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and "REFUSED: configuration not changed" in status.stdout, status
        # Add a local level and reload while an SMTP session is open: the session goes on, and the
        # deferred message goes out on the next attempt.
        from smtpclient import RawSMTP
        session = RawSMTP(relay.port)
        session.code()
        assert session.command("EHLO open.example.org").startswith("250")
        relay.config.write_text(good + '\n[[policy.domain]]\nname = "dane-tlsa-mismatch.test"\nlevel = "encrypt"\nreason = "reload test"\n')
        applied = subprocess.run([ctl, "reload", "--config", str(relay.config)], capture_output=True, text=True, timeout=30)
        assert applied.returncode == 0 and applied.stdout.startswith("reload: configuration re-read"), applied
        assert wait_for(lambda: "reload: configuration re-read" in relay.log_text(), timeout=10)
        assert session.command("MAIL FROM:<a@plain-mx.test>").startswith("250 2.1.0")
        assert session.command("QUIT").startswith("221")
        subprocess.run([str(ROOT / ".build/debug/tlsrelayctl"), "queue", "flush", "--config", str(relay.config)], check=True,
                       capture_output=True)
        assert wait_for(lambda: [a for a in attempts(relay, "user@dane-tlsa-mismatch.test") if a[2] == "sent"], timeout=20), relay.log_text()[-2000:]
        assert "local policy level encrypt for dane-tlsa-mismatch.test overrides discovered policy: reload test" in relay.log_text()
    finally:
        relay.stop()


def test_native_journald_logging(tmp_path):
    relay = Relay(tmp_path / "journal", journal=True)
    relay.start(env={"TLSRELAY_JOURNAL_STREAM_FROM_STDERR": "1"})
    try:
        send(relay, "a@example.org", ["b@example.net"], b"Subject: logged\r\n\r\nx\r\n")
        entries = wait_for(lambda: [e for e in relay.journal_entries(SYSLOG_IDENTIFIER="tlsrelayd") if "QUEUE_ID" in e], timeout=10)
        assert entries, relay.journal_entries()
        queued = [e for e in entries if "(queued)" in e["MESSAGE"]]
        assert queued and queued[0]["PRIORITY"] == "6"
        assert re.fullmatch(r"[0-9A-Z]{16}", queued[0]["QUEUE_ID"])
        assert queued[0]["MESSAGE"].startswith(queued[0]["QUEUE_ID"] + ": client=")
        # Nothing went to stderr as plain text.
        assert "(queued)" not in relay.log_text()
    finally:
        relay.stop()


def test_unit_file_verifies_and_scores_2_or_better(tmp_path):
    unit = tmp_path / "tlsrelay.service"
    unit.write_text((ROOT / "systemd" / "tlsrelay.service").read_text().replace("/usr/local/bin/tlsrelayd", str(BINARY))
                    .replace("/usr/local/bin/tlsrelayctl", str(CTL)))
    script = (f"mount -n -t tmpfs tmpfs /run/systemd && systemd-analyze verify {unit} && "
              f"systemd-analyze security --offline=yes --no-pager {unit}")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"Unknown key|ignoring", result.stderr), result.stderr
    text = unit.read_text()
    # Fails safe: a configuration error (78) is not restarted for ever; reload waits for the
    # daemon's verdict; the pre-start check is quiet; no IP setting that restricts nothing.
    assert "RestartPreventExitStatus=78" in text
    assert re.search(r"^ExecReload=\S*tlsrelayctl reload --config ", text, re.M)
    assert "--check-config --quiet" in text and "IPAddressAllow=any" not in text
    score = re.search(r"Overall exposure level for tlsrelay\.service: ([0-9.]+)", result.stdout)
    assert score, result.stdout[-1000:]
    assert float(score.group(1)) <= 2.0, score.group(0)
    catalog = (ROOT / "systemd" / "tlsrelay.catalog").read_text()
    for message_id in ("2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e01", "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e02", "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e03",
                       "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e04", "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e05", "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e06"):
        assert f"-- {message_id}" in catalog


def test_check_config_refuses_what_would_stop_start_up(tmp_path):
    """ExecStartPre (--check-config) catches what would make the daemon exit at start-up, so a
    broken file is a configuration error (78, not restarted) rather than a restart loop."""
    bad_anchor = tmp_path / "bad.ds"
    bad_anchor.write_text("garbage\n")
    cases = {
        "anchor": (f'state_directory = "{tmp_path}/state"\n[dns]\ntrust_anchor_file = "{bad_anchor}"\n', "[dns]: DNS resolver error"),
        "state": (f'state_directory = "{tmp_path}/missing/deeper"\n', "does not exist and cannot be created"),
    }
    for name, (text, expected) in cases.items():
        config = tmp_path / f"{name}.toml"
        config.write_text(text)
        result = subprocess.run([str(BINARY), "--check-config", "--quiet", "--config", str(config)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 78 and expected in result.stderr, (name, result)
