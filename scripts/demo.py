#!/usr/bin/env python3
"""`make demo`: tlsrelay against the loopback test world, in one minute.

1. Starts the test world (DNSSEC-signed zone, STARTTLS MX servers, attackers) and tlsrelayd
   beside a private journald.
2. Sends one message to a DANE domain: delivered, and the TLSA record that authenticated the
   MX is shown.
3. Sends one message to a DANE domain whose MX sits behind an attacker that strips STARTTLS:
   deferred, nothing sent, and the crit alert is read back from journald.
4. Stops everything.
"""
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "testworld"))
from worldlib import World  # noqa: E402

BINARY = ROOT / ".build" / "release" / "tlsrelayd"
CTL = ROOT / ".build" / "release" / "tlsrelayctl"


def say(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def wait_for(pattern, path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {pattern!r}; log:\n{path.read_text(errors='replace')[-2000:]}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    work = Path(tempfile.mkdtemp(prefix="tlsrelay-demo-"))
    os.chmod(work, 0o755)
    world = None
    relay = None
    try:
        say("Starting the loopback test world (NSD with a DNSSEC-signed zone, STARTTLS MX servers, attackers)")
        world = World.up(str(work / "world"))
        print(f"world up in {world.data.get('startup_seconds', 0):.2f} s; DNS at {world.data['dns']['address']}")
        port = free_port()
        config = work / "tlsrelay.toml"
        config.write_text(
            f'state_directory = "{work}/state"\n[server]\nlisten = ["127.0.0.1:{port}"]\nhostname = "relay.example.org"\n'
            + world.relay_sections(delivery_extra="min_backoff = 3600\n"))
        say(f"Starting tlsrelayd on 127.0.0.1:{port} beside a private journald")
        log = work / "tlsrelayd.log"
        relay = subprocess.Popen([str(ROOT / "scripts" / "journal_namespace.sh"), str(work / "journald"),
                                  str(BINARY), "--config", str(config)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        wait_for(r"listening on", log)

        dane = world.scenario("dane-ee")
        say(f"1. A message to {dane['recipient']} (MX {dane['mx'][0]['name']}, TLSA {dane['mx'][0]['tlsa'][0][:24]}...)")
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.sendmail("demo@dane-ee.test", [dane["recipient"]], b"Subject: DANE demo\r\n\r\nHello over authenticated TLS.\r\n")
        m = wait_for(r".*Verified TLS connection established to " + re.escape(dane["mx"][0]["name"]) + r".*", log)
        print(m.group(0))
        m = wait_for(r".*to=<" + re.escape(dane["recipient"]) + r">.*status=sent.*", log)
        print(m.group(0))
        received = world.wait_for_messages("dane-ee")[-1]
        print(f"The MX received it over TLS: tls={received['tls']} {received.get('tls_version')} {received.get('cipher')}")

        attack = world.scenario("attack-strip-starttls")
        say(f"2. A message to {attack['recipient']}: an attacker on the path deletes STARTTLS from the EHLO reply")
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.sendmail("demo@dane-ee.test", [attack["recipient"]], b"Subject: secret\r\n\r\nThis must never travel in clear.\r\n")
        m = wait_for(r".*to=<" + re.escape(attack["recipient"]) + r">.*status=deferred.*", log)
        print(m.group(0))
        say("The alert, as journald has it (journalctl -o verbose):")
        journal = next((work / "journald" / "journal").glob("*"))
        deadline = time.time() + 10
        out = ""
        while time.time() < deadline and "TLSRPT_RESULT_TYPE" not in out:
            out = subprocess.run(["journalctl", "-D", str(journal), "-o", "verbose", "--no-pager", "SYSLOG_IDENTIFIER=tlsrelayd",
                                  "TLSRPT_RESULT_TYPE=starttls-not-supported"], capture_output=True, text=True).stdout
            time.sleep(0.2)
        print("\n".join(line for line in out.splitlines() if line.strip()))
        cleartext = world.cleartext(attack["mx"][0]["name"])
        print(f"\nBytes of the message that reached the MX in clear: {cleartext.count(b'This must never travel')} (the message body never left the queue)")
        say("The message waits safely in the queue (tlsrelayctl queue list):")
        subprocess.run([str(CTL), "queue", "list", "--config", str(config)])
    finally:
        say("Stopping everything")
        if relay and relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=40)
        if world:
            world.down()
        shutil.rmtree(work, ignore_errors=True)
        print("done")


if __name__ == "__main__":
    main()
