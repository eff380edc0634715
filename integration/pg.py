"""A real PostgreSQL 15 for the shared-state tests: its own data directory under a temporary
directory, listening on 127.0.0.1 on a free port (unix socket in that directory), run as the
`postgres` system user (PostgreSQL refuses root), password (SCRAM) authentication for the
`tlsrelay` role through a password file."""
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from relay import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def as_postgres(*command, check=True, timeout=60, **kwargs):
    return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, command)], capture_output=True, text=True,
                          check=check, timeout=timeout, **kwargs)


class Postgres:
    def __init__(self):
        # Not under pytest's 0700 tmp_path: the postgres user must reach it.
        self.base = Path(tempfile.mkdtemp(prefix="tlsrelay-pg-"))
        os.chmod(self.base, 0o755)
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.socket_dir.mkdir()
        shutil.chown(self.socket_dir, "postgres", "postgres")
        self.log = self.base / "postgres.log"
        self.log.touch()
        shutil.chown(self.log, "postgres", "postgres")
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.password_file = self.base / "tlsrelay.password"
        self.password_file.write_text(self.password + "\n")
        os.chmod(self.password_file, 0o600)

    def init(self):
        self.data.mkdir()
        shutil.chown(self.data, "postgres", "postgres")
        as_postgres(BIN / "initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8", "--locale=C",
                    "--auth-local=trust", "--auth-host=scram-sha-256")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.socket_dir}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\nmax_connections = 40\n")
        # Loopback TCP only, password authentication; the local socket is the test's own admin door.
        (self.data / "pg_hba.conf").write_text("local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        self.start()
        self.psql(f"CREATE ROLE tlsrelay LOGIN PASSWORD '{self.password}'", db="postgres")
        self.recreate_database()
        return self

    def start(self):
        as_postgres(BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "start")

    def stop(self, mode="fast"):
        as_postgres(BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop", check=False)

    def running(self):
        return as_postgres(BIN / "pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def psql(self, sql, db="tlsrelay"):
        """Runs SQL as the superuser over the unix socket; returns the rows (tab-separated fields)."""
        out = as_postgres(BIN / "psql", "-h", self.socket_dir, "-p", self.port, "-d", db, "-v", "ON_ERROR_STOP=1",
                          "-At", "-F", "\t", "-c", sql).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def recreate_database(self):
        self.psql("DROP DATABASE IF EXISTS tlsrelay WITH (FORCE)", db="postgres")
        self.psql("CREATE DATABASE tlsrelay OWNER tlsrelay", db="postgres")

    def toml(self, **extra):
        values = {"backend": "postgresql", "host": "127.0.0.1", "port": self.port, "dbname": "tlsrelay", "user": "tlsrelay",
                  "password_file": str(self.password_file), "sslmode": "disable", "cache_seconds": 1, "connect_timeout": 2,
                  "statement_timeout": 5}
        values.update(extra)
        lines = [f"{k} = {v}" if isinstance(v, int) else f'{k} = "{v}"' for k, v in values.items()]
        return "\n[state]\n" + "\n".join(lines) + "\n"

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

