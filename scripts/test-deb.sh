#!/usr/bin/env bash
# Package test (make deb-test; CI runs it after make test), as root: installs the .deb, checks
# what an administrator relies on, removes it (the spool stays), purges it, and checks that
# the system is as it was before. Works with and without systemd as PID 1.
# Usage: scripts/test-deb.sh tlsrelay_<version>_<arch>.deb
set -uo pipefail

DEB=${1:?usage: test-deb.sh PACKAGE.deb}
DEB=$(realpath "$DEB")
[ "$(id -u)" = 0 ] || { echo "test-deb.sh: needs root" >&2; exit 2; }
if dpkg-query -W -f='${Status}' tlsrelay 2>/dev/null | grep -q "ok installed"; then
	echo "test-deb.sh: tlsrelay is installed already; purge it first (dpkg --purge tlsrelay)" >&2
	exit 2
fi

passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@" >/tmp/test-deb.out 2>&1; then ok "$what"; else fail "$what"; sed 's/^/     /' /tmp/test-deb.out | head -20; fi; }

WORK=$(mktemp -d /tmp/tlsrelay-deb-test.XXXXXX)
trap 'rm -rf "$WORK" /tmp/test-deb.out' EXIT
SYSTEMD=no
[ -d /run/systemd/system ] && SYSTEMD=yes
echo "systemd running as PID 1: $SYSTEMD ($(systemctl is-system-running 2>/dev/null || true))"

# What the package may touch, before: every path it ships, and the places its scripts write.
snapshot() {
	{
		dpkg-deb -c "$DEB" | awk '{print $NF}' | sed 's|^\./|/|; s|/$||' | while read -r p; do [ -e "$p" ] && echo "exists $p"; done
		find /etc/tlsrelay /var/lib/tlsrelay /etc/systemd/system -xdev 2>/dev/null | sed 's/^/path /'
		getent passwd tlsrelay | sed 's/^/passwd /'
		getent group tlsrelay | sed 's/^/group /'
	} | LC_ALL=C sort
}
snapshot > "$WORK/before"

# Install (apt resolves missing dependencies; dpkg -i alone when they are all there).
if ! dpkg -i "$DEB" >"$WORK/install.log" 2>&1; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$DEB" >>"$WORK/install.log" 2>&1
fi
check "package installed" sh -c 'dpkg-query -W -f="\${Status}" tlsrelay | grep -q "ok installed"' || true
grep -i -E "warning|error" "$WORK/install.log" | grep -v "^Reading\|^Building" | sed 's/^/     install: /'

check "user tlsrelay exists, a system user without a login shell" \
	sh -c 'u=$(getent passwd tlsrelay) && [ "$(echo "$u" | cut -d: -f3)" -lt 1000 ] && echo "$u" | grep -q ":/usr/sbin/nologin$"'
check "group tlsrelay exists" getent group tlsrelay
check "state directory /var/lib/tlsrelay is 0700 tlsrelay:tlsrelay" \
	sh -c '[ "$(stat -c "%a %U %G" /var/lib/tlsrelay)" = "700 tlsrelay tlsrelay" ]'
check "no tlsrelayd process runs" sh -c '! pgrep -x tlsrelayd'
if [ "$SYSTEMD" = yes ]; then
	check "tlsrelay.service is not active" sh -c '! systemctl is-active --quiet tlsrelay.service'
fi
check "tlsrelay.service is not enabled" sh -c '! systemctl is-enabled --quiet tlsrelay.service 2>/dev/null && ! ls /etc/systemd/system/*.wants/tlsrelay.service 2>/dev/null'
check "the conffile is registered" sh -c 'dpkg-query -W -f="\${Conffiles}" tlsrelay | grep -q "/etc/tlsrelay/tlsrelay.toml"'
check "the unit runs /usr/sbin/tlsrelayd" sh -c 'grep -q "^ExecStart=/usr/sbin/tlsrelayd " /usr/lib/systemd/system/tlsrelay.service && ! grep -q /usr/local /usr/lib/systemd/system/tlsrelay.service'
check "tlsrelayd --check-config of the installed conffile" tlsrelayd --check-config --quiet --config /etc/tlsrelay/tlsrelay.toml
check "tlsrelayd --version is the package version" sh -c '[ "$(tlsrelayd --version)" = "$(dpkg-query -W -f="\${Version}" tlsrelay | sed "s/-[^-]*$//")" ]'
check "tlsrelayctl --help" sh -c 'tlsrelayctl --help | grep -q "USAGE: tlsrelayctl"'
# Before the daemon's first start there is no spool: a clear message and exit 2, no crash.
check "tlsrelayctl queue list before the first start: exit 2 and a reason" \
	sh -c 'tlsrelayctl queue list 2>&1 >/dev/null | grep -q "no spool at /var/lib/tlsrelay/spool"; [ "$(tlsrelayctl queue list >/dev/null 2>&1; echo $?)" = 2 ]'
check "tlsrelayctl status without a daemon: exit 2" sh -c '[ "$(tlsrelayctl status >/dev/null 2>&1; echo $?)" = 2 ]'

for page in tlsrelayd tlsrelayctl tlsrelay.toml; do
	check "man $page renders without warnings" sh -c "out=\$(LC_ALL=C.UTF-8 MANWIDTH=80 man -Tutf8 $page 2>&1 >/dev/null) && [ -z \"\$out\" ] && man -w $page >/dev/null"
done
for b in tlsrelayd tlsrelayctl; do
	check "bash, zsh and fish completions of $b" test -s /usr/share/bash-completion/completions/$b \
		-a -s /usr/share/zsh/vendor-completions/_$b -a -s /usr/share/fish/vendor_completions.d/$b.fish
	check "bash completion of $b loads" bash -c "source /usr/share/bash-completion/completions/$b && complete -p $b"
	check "$b links the system libssl.so.3" sh -c "ldd /usr/sbin/$b | grep -q 'libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3\|libssl.so.3 => /usr/lib/x86_64-linux-gnu/libssl.so.3'"
	# Fails while swift-nio-ssl (and its BoringSSL) is still linked in; the TLS code uses the
	# system OpenSSL. The binaries are stripped: look at the dynamic symbol table, and for the symbols'
	# names anywhere in the file (BoringSSL's prefixed names survive stripping in strings).
	check "$b contains no BoringSSL" sh -c "! nm -D /usr/sbin/$b 2>/dev/null | grep -qi 'boringssl' && ! grep -qa 'CNIOBoringSSL' /usr/sbin/$b && ! grep -qai 'boringssl' /usr/sbin/$b"
done
if command -v lintian >/dev/null; then
	check "lintian: no errors" lintian --fail-on error "$DEB"
else
	fail "lintian is not installed (make deb installs it)"
fi

# Remove: the configuration, the user and the spool stay.
mkdir -p /var/lib/tlsrelay/spool/queue && echo keep > /var/lib/tlsrelay/spool/queue/test-deb-marker
check "dpkg -r" dpkg -r tlsrelay
check "after remove: binaries gone" sh -c '[ ! -e /usr/sbin/tlsrelayd ] && [ ! -e /usr/sbin/tlsrelayctl ] && [ ! -e /usr/lib/systemd/system/tlsrelay.service ]'
check "after remove: spool kept" test -f /var/lib/tlsrelay/spool/queue/test-deb-marker
check "after remove: conffile kept" test -f /etc/tlsrelay/tlsrelay.toml
check "after remove: user kept" getent passwd tlsrelay

# Purge: everything goes.
check "dpkg --purge" dpkg --purge tlsrelay
check "after purge: user and group gone" sh -c '! getent passwd tlsrelay && ! getent group tlsrelay'
check "after purge: /etc/tlsrelay gone" test ! -e /etc/tlsrelay
check "after purge: /var/lib/tlsrelay gone" test ! -e /var/lib/tlsrelay
check "after purge: dpkg knows no tlsrelay" sh -c '! dpkg-query -W tlsrelay 2>/dev/null | grep -q .'
snapshot > "$WORK/after"
if diff -u "$WORK/before" "$WORK/after" > "$WORK/diff"; then
	ok "after purge: the package's paths, user and directories are as before install"
else
	fail "after purge: the system differs from before install"
	sed 's/^/     /' "$WORK/diff"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
