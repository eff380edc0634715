"""Start and stop a real tlsrelayd for integration tests, and read its spool.

The spool file format is documented in Sources/RelayQueue/QueueFileFormat.swift:
content | envelope JSON | 32-byte footer "TLSRQ1 <16 hex content length> <8 hex envelope length>".
"""
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# TLSRELAY_BIN_DIR: run binaries from another directory (a snapshot while .build is rebuilt).
BIN_DIR = Path(os.environ["TLSRELAY_BIN_DIR"]) if os.environ.get("TLSRELAY_BIN_DIR") else ROOT / ".build" / "debug"
BINARY = BIN_DIR / "tlsrelayd"
CTL = BIN_DIR / "tlsrelayctl"


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_queue_file(path):
    """Returns (envelope dict, content bytes) of one queue file; raises ValueError if invalid."""
    data = Path(path).read_bytes()
    if len(data) < 32:
        raise ValueError("short")
    footer = data[-32:]
    if not footer.startswith(b"TLSRQ1 "):
        raise ValueError("bad footer")
    content_len = int(footer[7:23], 16)
    env_len = int(footer[24:32], 16)
    if content_len + env_len + 32 != len(data):
        raise ValueError("lengths")
    return json.loads(data[content_len:content_len + env_len]), data[:content_len]


class Relay:
    """A tlsrelayd process with its own state directory and port."""

    def __init__(self, workdir, extra_toml="", journal=False, **server_overrides):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = self.workdir / "state"
        self.port = free_port()
        self.config = self.workdir / "tlsrelay.toml"
        self.log_path = self.workdir / "tlsrelayd.log"
        self.server = {
            "listen": [f"127.0.0.1:{self.port}"],
            "hostname": "relay.example.org",
            "allowed_clients": ["127.0.0.0/8", "::1/128"],
        }
        self.server.update(server_overrides)
        self.extra_toml = extra_toml
        # journal=True runs tlsrelayd beside a private journald (journal_namespace.sh).
        self.journal_dir = self.workdir / "journald" if journal else None
        self.write_config()
        self.process = None

    def write_config(self):
        lines = [f'state_directory = "{self.state}"', "log_level = \"debug\"", "[server]"]
        for key, value in self.server.items():
            lines.append(f"{key} = {json.dumps(value)}")
        self.config.write_text("\n".join(lines) + "\n" + self.extra_toml)

    def start(self, wait=True, env=None, user=None):
        """Starts tlsrelayd; ``user`` ("nobody:nogroup") runs it without privileges, as the
        systemd unit does."""
        assert BINARY.exists(), f"{BINARY} missing: run swift build first"
        self.log = open(self.log_path, "ab")
        command = [str(BINARY), "--config", str(self.config)]
        if user:
            name, group = user.split(":")
            command = ["setpriv", f"--reuid={name}", f"--regid={group}", "--clear-groups", "--inh-caps=-all", "--"] + command
        if self.journal_dir:
            command = [str(ROOT / "scripts" / "journal_namespace.sh"), str(self.journal_dir)] + command
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, env=dict(os.environ, **(env or {})))
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tlsrelayd exited {self.process.returncode}: {self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.recv(100)
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("tlsrelayd did not start listening: " + self.log_text())

    def stop(self, sig=signal.SIGTERM, timeout=40):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=timeout)
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
        return self.process.returncode if self.process else None

    def kill9(self):
        self.process.kill()
        self.process.wait()
        self.log.close()
        self.log = None

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def queued(self):
        """{queue id: (envelope, content)} for every file in spool/queue."""
        result = {}
        root = self.state / "spool" / "queue"
        if not root.exists():
            return result
        for bucket in root.iterdir():
            for f in bucket.iterdir():
                result[f.name] = read_queue_file(f)
        return result

    def temporary_files(self):
        tmp = self.state / "spool" / "tmp"
        return list(tmp.iterdir()) if tmp.exists() else []

    def journal_entries(self, **match):
        """Entries of the private journald (journal=True), filtered by field values."""
        assert self.journal_dir, "relay was not started with journal=True"
        directories = list((self.journal_dir / "journal").glob("*"))
        if not directories:
            return []
        out = subprocess.run(["journalctl", "-D", str(directories[0]), "-o", "json", "--no-pager"],
                             capture_output=True, text=True, timeout=30).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if all(e.get(k) == v for k, v in match.items())]


def wait_for(predicate, timeout=30, interval=0.1):
    """Polls `predicate` until it returns something truthy (returned) or `timeout` seconds pass (None)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None
