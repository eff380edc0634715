"""A private, real Postfix instance used as tlsrelay's upstream client.

It has its own config, queue and data directories in a temp dir, runs unchrooted, binds no
listener at all (mail enters through `sendmail`, i.e. pickup), and sends everything to
`relayhost = [127.0.0.1]:PORT`, exactly as an administrator would configure it.
"""
import contextlib
import os
import shutil
import tempfile
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "testworld"))
from postfix import UNIX_SERVICES  # noqa: E402

MASTER_CF = UNIX_SERVICES

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
maillog_file = {log}
maillog_file_prefixes = {base}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = client.example.org
mydomain = example.org
myorigin = example.org
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{port}
# The README's form: TLS off for the hop to tlsrelay only, per next hop (relay_tls).
smtp_tls_security_level = may
smtp_tls_policy_maps = inline:{{ {{[127.0.0.1]:{port} = {relay_tls}}} }}
smtp_tls_loglevel = 1
smtputf8_enable = yes
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtp_line_length_limit = 0
disable_mime_output_conversion = yes
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


class PostfixClient:
    def __init__(self, base, relay_port, relay_tls="none", ca_file=None):
        self.base = Path(base)
        self.conf = self.base / "conf"
        self.queue = self.base / "queue"
        self.data = self.base / "data"
        self.log = self.base / "maillog"
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        os.chown(self.data, *_ids("postfix"))
        (self.conf / "master.cf").write_text(MASTER_CF)
        main_cf = MAIN_CF.format(conf=self.conf, queue=self.queue, data=self.data, log=self.log, base=self.base,
                                 port=relay_port, relay_tls=relay_tls)
        if ca_file:
            # Copied in: Postfix's smtp runs as user postfix and reads it at each connection.
            shutil.copy(ca_file, self.conf / "relay-ca.pem")
            os.chmod(self.conf / "relay-ca.pem", 0o644)
            main_cf += f"smtp_tls_CAfile = {self.conf / 'relay-ca.pem'}\n"
        (self.conf / "main.cf").write_text(main_cf)
        self.env = dict(os.environ, MAIL_CONFIG=str(self.conf))

    def postfix(self, *args):
        return subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True, text=True, env=self.env, timeout=60)

    def start(self):
        result = self.postfix("start")
        if result.returncode != 0:
            raise RuntimeError("postfix start failed: " + result.stdout + result.stderr)
        return self

    def stop(self):
        self.postfix("stop")
        # postfix stop returns before master exits: wait for its pid file to go.
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.time() + 20
        while pid_file.exists() and time.time() < deadline:
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                break
            time.sleep(0.1)

    def sendmail(self, sender, recipients, message: bytes, extra=()):
        result = subprocess.run(["/usr/sbin/sendmail", "-C", str(self.conf), "-f", sender, *extra, "--", *recipients],
                                input=message, capture_output=True, env=self.env, timeout=60)
        if result.returncode != 0:
            raise RuntimeError("sendmail failed: " + result.stderr.decode(errors="replace"))

    def maillog(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _ids(user):
    import pwd
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def running_postfix(relay_port, relay_tls="none", ca_file=None):
    """A started PostfixClient relaying to 127.0.0.1:relay_port, in its own temporary directory
    (not under pytest's 0700 tmp_path: Postfix's daemons run as the postfix user); stopped and
    removed afterwards. ``relay_tls`` is Postfix's TLS security level for that hop (none, may,
    encrypt, verify, secure [match=...]); ``ca_file`` becomes its smtp_tls_CAfile."""
    base = tempfile.mkdtemp(prefix="tlsrelay-postfix-")
    os.chmod(base, 0o755)
    client = PostfixClient(base, relay_port, relay_tls, ca_file).start()
    try:
        yield client
    finally:
        client.stop()
        shutil.rmtree(base, ignore_errors=True)
