#!/bin/bash
# Runs a command next to a private, real systemd-journald, so tests can read back what the
# command logged natively (sd_journal_sendv) without touching the host's journal.
#
#   journal_namespace.sh DIR COMMAND [ARGS...]
#
# Inside a private mount namespace: a tmpfs on /run, DIR/journal bind-mounted over
# /run/log/journal (Storage=volatile writes there), our journald.conf over the system one.
# Read the entries afterwards, from outside: journalctl -D DIR/journal/<machine-id> -o json.
# JOURNAL_STREAM is set for COMMAND, as systemd sets it for services.
set -euo pipefail
DIR=$1; shift
mkdir -p "$DIR/journal"
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitIntervalSec=0\nForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\n' > "$DIR/journald.conf"
exec unshare -m --propagation private bash -c '
set -u
DIR=$0
mount -n -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal /run/log/journal
mount -n --bind "$DIR/journal" /run/log/journal
mount -n --bind "$DIR/journald.conf" /etc/systemd/journald.conf
/lib/systemd/systemd-journald > "$DIR/journald.log" 2>&1 &
JPID=$!
for i in $(seq 1 500); do [ -S /run/systemd/journal/socket ] && break; sleep 0.01; done
[ -S /run/systemd/journal/socket ] || { echo "journald did not start" >&2; kill $JPID; exit 70; }
trap "kill -TERM \$CPID 2>/dev/null" TERM INT
# JOURNAL_STREAM marks "under journald" (alerts go to it natively). Only when asked does it name
# the real stderr (device:inode), which makes tlsrelayd log every line natively as under systemd.
if [ -n "${TLSRELAY_JOURNAL_STREAM_FROM_STDERR:-}" ]; then
    JS=$(stat -L -c "%d:%i" /proc/self/fd/2)
else
    JS=0:0
fi
JOURNAL_STREAM=$JS "$@" &
CPID=$!
wait $CPID; rc=$?
# wait again in case the first wait was interrupted by the trapped signal
wait $CPID 2>/dev/null; rc2=$?; [ $rc -ge 128 ] && rc=$rc2
kill -TERM $JPID 2>/dev/null; wait $JPID 2>/dev/null
exit $rc
' "$DIR" "$@"
