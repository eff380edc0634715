# tlsrelay — build, run and test. Every target installs what it needs (Debian 12, as root).
SHELL := /bin/bash
SWIFT ?= swift
PYTHON ?= python3
CONFIG ?= etc/tlsrelay.toml

# Native libraries the daemon links, and data it reads at run time.
RUN_PACKAGES := libssl-dev libpq-dev libsystemd-dev libunbound-dev libidn2-dev zlib1g-dev pkg-config dns-root-data ca-certificates
# Real third-party servers and tools the tests drive.
TEST_PACKAGES := postfix postgresql swaks util-linux procps faketime $(shell cat testworld/apt-packages.txt 2>/dev/null)

.PHONY: all build release run demo bench faults fuzz install deps test-deps test unit-test integration-test world-test world-up world-down check-config man deb deb-test clean

all: build

# Installs the Debian packages in $(1) that are missing. Postfix's own system instance is left
# unconfigured ("No configuration"), so installing it starts no mail server.
define apt_install
	@missing=""; for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install,$(RUN_PACKAGES))

test-deps: deps
	$(call apt_install,$(TEST_PACKAGES))
	@$(PYTHON) -c "import aiosmtpd, trustme, dns, pytest, jsonschema, parsedmarc" 2>/dev/null || $(PYTHON) -m pip install -q --disable-pip-version-check -r testworld/requirements.txt

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --static-swift-stdlib

# Runs tlsrelayd in the foreground with etc/tlsrelay.toml (Ctrl-C stops it).
run: release
	.build/release/tlsrelayd --config $(CONFIG)

# Shows DANE at work against the loopback test world: one delivery authenticated by TLSA, one
# STARTTLS-stripping attack deferred with a crit alert read back from journald.
demo: release test-deps
	$(PYTHON) scripts/demo.py

# Benchmarks side by side with Postfix (smtp-source), printed as a table. Not part of make test.
bench: release test-deps
	$(PYTHON) bench/bench.py
	$(PYTHON) bench/large_queue.py
	$(PYTHON) bench/deferred_queue.py

# The fault suite: kill -9 under load, full disk, DNS gone, corrupt spool file, clock set back and jumping forward, MX dropping the
# connection, kill -9 during delivery, a tarpit MX shared by 25 domains, SIGTERM with sessions stuck at it, a slow final
# reply. (It also runs within make test.)
faults: test-deps
	$(SWIFT) build
	$(PYTHON) -m pytest -q -p no:cacheprovider integration/test_crash_safety.py integration/test_faults.py \
		integration/test_delivery_behaviour.py integration/test_hostile_mx.py integration/test_lifecycle.py \
		-k "kill or disk or dns or corrupt or dropped or clock or second or tarpit or sigterm or slow_final"

# Coverage-guided fuzzing with libFuzzer: every parser target for FUZZ_SECONDS seconds each
# (default 60), from the seeds in fuzz/corpus/. make test runs it for 10 s per target; the
# deterministic mutation fuzzer also runs within swift test (3000 mutants per target).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := smtp-commands smtp-data replies sts-policy sts-record config tlsa-rdata tlsrpt-record message-header
fuzz: deps
	$(SWIFT) build -c release --scratch-path .build-fuzz --product tlsrelay-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -DLIBFUZZER -Xswiftc -use-ld=lld
	scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

check-config: build
	.build/debug/tlsrelayd --check-config --config $(CONFIG)

# All tests: Swift unit tests, the test world's self-check, and the integration suites that
# drive the real daemon with real Postfix, smtplib and swaks.
test: test-deps
	$(SWIFT) build --build-tests
	$(SWIFT) test
	$(PYTHON) -m pytest -q -p no:cacheprovider testworld/tests integration
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

unit-test: deps
	$(SWIFT) test

integration-test: test-deps
	$(SWIFT) build
	$(PYTHON) -m pytest -q -p no:cacheprovider integration

world-test: test-deps
	$(PYTHON) -m pytest -q -p no:cacheprovider testworld/tests

# Starts the loopback test world by hand in ./world and prints the tlsrelayd config to use.
world-up: test-deps
	$(PYTHON) testworld/world.py up --dir $(CURDIR)/world

world-down:
	$(PYTHON) testworld/world.py down --dir $(CURDIR)/world

PREFIX ?= /usr/local
# Installs the binaries, the systemd unit, the journald catalog and the example config (kept if
# one exists), and creates the tlsrelay system user. Then: systemctl enable --now tlsrelay
install: release
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system $(DESTDIR)/usr/lib/systemd/catalog $(DESTDIR)/etc/tlsrelay
	install -m 0755 .build/release/tlsrelayd .build/release/tlsrelayctl $(DESTDIR)$(PREFIX)/bin/
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' systemd/tlsrelay.service > $(DESTDIR)/etc/systemd/system/tlsrelay.service
	install -m 0644 systemd/tlsrelay.catalog $(DESTDIR)/usr/lib/systemd/catalog/tlsrelay.catalog
	install -d $(DESTDIR)$(PREFIX)/share/doc/tlsrelay
	install -m 0644 README.md CHANGELOG.md $(DESTDIR)$(PREFIX)/share/doc/tlsrelay/
	[ -e $(DESTDIR)/etc/tlsrelay/tlsrelay.toml ] || install -m 0644 etc/tlsrelay.toml $(DESTDIR)/etc/tlsrelay/tlsrelay.toml
	getent passwd tlsrelay >/dev/null || useradd --system --user-group --no-create-home --home-dir /var/lib/tlsrelay --shell /usr/sbin/nologin tlsrelay
	-journalctl --update-catalog
	-systemctl daemon-reload 2>/dev/null

# Man pages tlsrelayd(8), tlsrelayctl(8), tlsrelay.toml(5) in $(MAN_DIR), rendered from the
# binaries' --experimental-dump-help, etc/tlsrelay.toml and man/*.in (scripts/manpages.py).
# MAN_BIN_DIR: the binaries to describe (default the release build; BIN_DIR=... for another).
BIN_DIR ?= .build/release
MAN_DIR ?= .build-man
MAN_BIN_DIR ?= $(BIN_DIR)
MAN_CHECK_PACKAGES := man-db groff-base mandoc
man: $(if $(filter .build/release,$(MAN_BIN_DIR)),release)
	$(call apt_install,$(MAN_CHECK_PACKAGES))
	$(PYTHON) scripts/manpages.py --bin-dir $(MAN_BIN_DIR) --config etc/tlsrelay.toml --out $(MAN_DIR)
	@for page in $(MAN_DIR)/tlsrelayd.8 $(MAN_DIR)/tlsrelayctl.8 $(MAN_DIR)/tlsrelay.toml.5; do \
		out=$$( { LC_ALL=C.UTF-8 MANWIDTH=80 man -l -Tutf8 $$page >/dev/null; groff -man -ww -z $$page; \
			mandoc -Tlint -W warning $$page; } 2>&1 ); \
		if [ -n "$$out" ]; then echo "$$page:"; echo "$$out"; exit 1; fi; \
	done; echo "man pages in $(MAN_DIR)/ render without warnings"

# The Debian package tlsrelay_<version>-1_amd64.deb (scripts/build-deb.sh, packaging/), from
# the release binaries (BIN_DIR=... to package others), checked with lintian (no errors).
DEB_OUT ?= .
DEB_PACKAGES := dpkg-dev binutils patchelf lintian
deb: $(if $(filter .build/release,$(BIN_DIR)),release) man
	$(call apt_install,$(DEB_PACKAGES))
	BIN_DIR=$(BIN_DIR) MAN_DIR=$(MAN_DIR) OUT_DIR=$(DEB_OUT) scripts/build-deb.sh > $(MAN_DIR)/deb-path
	@deb=$$(cat $(MAN_DIR)/deb-path); echo "built $$deb"; \
	lintian --fail-on error --info $$deb

# Installs the built package, checks it, removes and purges it (scripts/test-deb.sh); leaves the
# system as it was. Needs root; CI runs it after make test.
deb-test: deb
	scripts/test-deb.sh $$(cat $(MAN_DIR)/deb-path)

clean:
	rm -rf .build .build-man
