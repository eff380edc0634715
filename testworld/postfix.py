"""A real Postfix smtpd as one MX of the test world (an independent STARTTLS
implementation, RFC 3207).

Its own ``config_directory``, ``queue_directory`` and ``data_directory`` live
in ``DIR/postfix``; its only listener is ``127.0.5.N:25`` (bound explicitly in
master.cf, because Postfix refuses an ``inet_interfaces`` address that is not
configured on an interface, and only 127.0.0.1/8 is); all
services run unchrooted; the log goes to ``DIR/postfix/maillog`` (postlogd).
Everything it accepts is relayed to the recording sink (mx.py, role ``sink``),
which stores it under the MX host's ``DIR/mx/<host>/``.  The DNS name of the
MX points at the recording tap in front of this smtpd.

Started with ``postfix -c CONFDIR start`` and stopped with ``postfix -c CONFDIR stop``.
"""
from __future__ import annotations

import grp
import os
import pwd
import subprocess

# The unchrooted internal services of a private Postfix instance (master.cf, no listener).
# Shared by the world's Postfix MX, the integration tests' upstream Postfix and make bench.
UNIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MASTER_CF = "{addr}:25 inet n       -       n       -       -       smtpd\n" + UNIX_SERVICES

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
maillog_file = {log}
maillog_file_prefixes = {logdir}
mail_owner = postfix
setgid_group = postdrop
# Postfix insists that inet_interfaces name addresses configured on an interface;
# 127.0.5.N is not (only 127.0.0.1/8 is), so the smtpd listener is bound
# explicitly in master.cf and nothing uses the default interfaces.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = {hostname}
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP
smtpd_tls_security_level = may
smtpd_tls_chain_files = {key}, {chain}
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
message_size_limit = 62914560
relayhost = [{sink}]:25
smtp_tls_security_level = none
smtp_dns_support_level = disabled
smtp_line_length_limit = 0
disable_mime_output_conversion = yes
local_header_rewrite_clients =
always_add_missing_headers = no
alias_maps =
alias_database =
biff = no
append_dot_mydomain = no
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
"""


def configure(pf: dict) -> None:
    conf, queue, data = pf["config_directory"], pf["queue_directory"], pf["data_directory"]
    os.makedirs(conf, exist_ok=True)
    os.makedirs(queue, mode=0o755, exist_ok=True)
    pw = pwd.getpwnam("postfix")
    _mkdir(data, 0o700, pw.pw_uid, pw.pw_gid)
    _make_queue(queue)
    with open(os.path.join(conf, "main.cf"), "w") as f:
        f.write(MAIN_CF.format(conf=conf, queue=queue, data=data, log=pf["log"], logdir=os.path.dirname(pf["log"]),
                               addr=pf["smtpd_address"], hostname=pf["hostname"],
                               key=pf["cert"]["key_file"], chain=pf["cert"]["chain_file"],
                               sink=pf["sink_address"]))
    with open(os.path.join(conf, "master.cf"), "w") as f:
        f.write(MASTER_CF.format(addr=pf["smtpd_address"]))


def _make_queue(queue: str) -> None:
    """Create the queue tree as postfix-files(5) would, and skip the slow
    postfix-script integrity checks (``quick-start``): start takes ~50 ms, not ~2.5 s."""
    pw, pd = pwd.getpwnam("postfix"), grp.getgrnam("postdrop")
    for sub in ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold",
                "incoming", "private", "saved", "trace"):
        _mkdir(os.path.join(queue, sub), 0o700, pw.pw_uid, 0)
    _mkdir(os.path.join(queue, "maildrop"), 0o730, pw.pw_uid, pd.gr_gid)
    _mkdir(os.path.join(queue, "public"), 0o710, pw.pw_uid, pd.gr_gid)
    _mkdir(os.path.join(queue, "pid"), 0o755, 0, 0)
    open(os.path.join(queue, "quick-start"), "w").close()


def _mkdir(path, mode, uid, gid):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def start(pf: dict) -> None:
    cmd = ["postfix", "-c", pf["config_directory"], "start"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        # postfix(1) prints its diagnostics only to a terminal: ask "check" under script(1).
        check = "postfix -c %s check" % pf["config_directory"]
        why = subprocess.run(["script", "-qec", check, "/dev/null"],
                             capture_output=True, text=True).stdout
        raise RuntimeError(f"postfix start failed: {why.strip() or p.stderr.strip()}; "
                           f"see {pf['log']}")


def master_pid(pf: dict):
    try:
        with open(os.path.join(pf["queue_directory"], "pid", "master.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def stop(pf: dict) -> None:
    subprocess.run(["postfix", "-c", pf["config_directory"], "stop"],
                   capture_output=True, text=True)
