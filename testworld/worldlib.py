"""Helpers for tests that use the tlsrelay test world.

    from worldlib import running_world
    with running_world() as w:                 # fresh world in a temp dir, torn down after
        sc = w.scenario("dane-ee")
        ...                                     # run tlsrelayd with w.toml, send to sc["recipient"]
        msgs = w.wait_for_messages("dane-ee")   # what the MX received
        assert msgs[0]["tls"] and w.cleartext("dane-ee").find(b"Subject") < 0
        w.set_mx_behaviour("plain-mx", rcpt={"tempfail": "450 4.2.0 Mailbox busy"})
        ...                                     # scripted replies: see mx.py / README
        w.clear_mx_behaviour()

Or attach to a world started with ``world.py up --dir DIR``: ``World(DIR)``.
"""
from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hostile as _hostile  # noqa: E402
import mx as _mx    # noqa: E402
import procs        # noqa: E402
import sts as _sts  # noqa: E402
import tlsrpt_sink as _tlsrpt  # noqa: E402
import world as _world  # noqa: E402


class World:
    """A running (or at least built) world in ``dir``."""

    def __init__(self, d: str):
        self.dir = os.path.abspath(d)
        with open(os.path.join(self.dir, "world.json")) as f:
            self.data = json.load(f)

    # --- lifecycle ------------------------------------------------------------
    @classmethod
    def up(cls, d: str | None = None, slot: int | None = 0) -> "World":
        """Start a world in ``d`` (default: a new temp dir); ``slot=None`` picks the
        first free address slot (127.S.x.y) so that several worlds can coexist."""
        if d is None:
            d = tempfile.mkdtemp(prefix="tlsrelay-world-")
        _world.up(d, _world.free_slot() if slot is None else slot)
        return cls(d)

    def down(self, keep: bool = False) -> None:
        _world.down(self.dir, keep=keep)

    def pids(self) -> dict:
        return procs.load(self.dir)

    # --- description ----------------------------------------------------------
    @property
    def toml(self) -> str:
        with open(self.data["relay"]["toml_file"]) as f:
            return f.read()

    @property
    def toml_file(self) -> str:
        return self.data["relay"]["toml_file"]

    def relay_sections(self, dns_extra: str = "", delivery_extra: str = "", dsn_relay: str = "") -> str:
        """tlsrelayd's [dns] and [delivery] sections for this world (its zone, trust anchor and
        test CA), with extra lines for each section. ``dsn_relay`` "" sends DSNs to the senders'
        domains in the world."""
        dns = self.data["dns"]
        return ("[dns]\n"
                f'trust_anchor_file = "{dns["trust_anchor_file"]}"\n'
                f'stub_zones = [{{ name = "test.", addresses = ["{dns["address"]}@{dns["port"]}"] }}]\n'
                # The start-up self-test of DNSSEC validation on the world's own names (the
                # defaults are names on the public internet, which the world cannot reach).
                + ('check_secure_name = "dane-ee.test"\ncheck_bogus_name = "dane-bogus-mx.test"\n'
                   if "check_secure_name" not in dns_extra else "")
                + dns_extra
                + "[delivery]\n"
                f'tls_ca_file = "{self.data["pki"]["ca_file"]}"\n'
                # The world's senders live in the world: DSNs go to their domains' MX.
                f'dsn_relay = "{dsn_relay}"\n'
                + delivery_extra)

    @property
    def scenarios(self) -> dict:
        return self.data["scenarios"]

    def scenario(self, name: str) -> dict:
        """By scenario name or by domain."""
        name = name.rstrip(".").lower()
        if name in self.scenarios:
            return self.scenarios[name]
        for s in self.scenarios.values():
            if s["domain"] == name:
                return s
        raise KeyError(f"no scenario {name!r}")

    def host(self, name: str) -> dict:
        """An MX host entry (by DNS name, or by backend name behind an attacker)."""
        for s in self.scenarios.values():
            for h in s["mx"]:
                if name in (h["name"], (h.get("backend") or {}).get("name")):
                    return h
        raise KeyError(f"no host {name!r}")

    def _records_dir(self, what: str) -> str:
        """Records dir of a host name, or of the expected receiving host of a scenario,
        or of its first MX."""
        try:
            return self.host(what)["records_dir"]
        except KeyError:
            s = self.scenario(what)
            via = s["expected"]["via"]
            return via["records_dir"] if via else s["mx"][0]["records_dir"]

    # --- what the MX servers saw ------------------------------------------------
    def messages(self, what: str) -> list[dict]:
        """Messages received by a host (or a scenario's receiving host), oldest first;
        each has ``data_bytes`` (exact bytes) added."""
        out = []
        for f in sorted(glob.glob(os.path.join(self._records_dir(what), "msg-*.json"))):
            with open(f) as fh:
                m = json.load(fh)
            m["data_bytes"] = base64.b64decode(m["data_b64"])
            out.append(m)
        return out

    def sessions(self, what: str) -> list[dict]:
        """TCP sessions seen by a host, each with ``cleartext`` bytes added."""
        out = []
        for f in sorted(glob.glob(os.path.join(self._records_dir(what), "session-*.json"))):
            with open(f) as fh:
                s = json.load(fh)
            s["cleartext"] = base64.b64decode(s["cleartext_b64"])
            out.append(s)
        return out

    def cleartext(self, what: str) -> bytes:
        """Every byte any client sent this host in clear, all sessions concatenated."""
        return b"".join(s["cleartext"] for s in self.sessions(what))

    def all_cleartext(self) -> bytes:
        """Cleartext received by every MX in the world."""
        return b"".join(self.cleartext(h["name"]) for s in self.scenarios.values()
                        for h in s["mx"])

    def wait_for_messages(self, what: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
        end = time.monotonic() + timeout
        while True:
            msgs = self.messages(what)
            if len(msgs) >= count or time.monotonic() > end:
                return msgs
            time.sleep(0.05)

    def clear_records(self) -> None:
        """Forget what all MX hosts, attackers, policy hosts and the DNS front recorded so far."""
        for pat in ("mx/*/msg-*.json", "mx/*/session-*.json", "attackers/*.jsonl", "hostile/*.jsonl",
                    "sts/*.requests.jsonl", "dns/front-queries.jsonl", "tlsrpt/https/post-*.json"):
            for f in glob.glob(os.path.join(self.dir, pat)):
                os.unlink(f)

    def front_queries(self, name: str | None = None, rtype: str | None = None) -> list[dict]:
        """Queries the DNS front (dnsfront.py) answered, oldest first: ``time``, ``peer``,
        ``proto``, ``qname`` (FQDN with trailing dot), ``qtype``, ``do``, ``rcode``, ``answers``;
        optionally only those for ``name`` (trailing dot optional, case-insensitive) and type."""
        try:
            with open(self.data["dns"]["front"]["query_log"]) as f:
                out = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        if name is not None:
            want = name.rstrip(".").lower() + "."
            out = [q for q in out if (q["qname"] or "").lower() == want]
        if rtype is not None:
            out = [q for q in out if q["qtype"] == rtype.upper()]
        return out

    # --- attackers and MTA-STS -------------------------------------------------------
    def attacker_events(self, what: str) -> list[dict]:
        s_or_h = self.host(what) if "." in what else self.scenario(what)["mx"][0]
        try:
            with open(s_or_h["attacker"]["log"]) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def set_sts(self, domain: str, behaviour: str, **opts) -> str:
        """Script a policy host: see sts.py for behaviours (good, lf, redirect, 404, ...)."""
        return _sts.set_behaviour(self.data, domain, behaviour, **opts)

    # --- scripted MX replies (aiosmtpd hosts; see mx.py / README) ----------------------
    def set_mx_behaviour(self, host_or_scenario: str, **spec) -> str:
        """Script the replies of an aiosmtpd MX: greeting, ehlo, mail, rcpt={addr|local|"*":
        reply}, data, data_end, drop_after.  A scenario name or domain means its receiving
        host (expected ``via``, else its first MX); a host behind an attacker means the real
        MX behind it.  Replaces the whole behaviour; effective from the next SMTP command."""
        return _mx.set_behaviour(self.data, host_or_scenario, spec)

    def clear_mx_behaviour(self, host_or_scenario: str | None = None) -> list[str]:
        """Back to the behaviour at ``up`` (normal, or the scenario's own, e.g. the 421
        greeting of mx1.two-mx-first-421.test); no argument = every host."""
        return _mx.clear_behaviour(self.data, host_or_scenario)

    def mx_behaviour(self, host_or_scenario: str) -> dict:
        """The behaviour file's current content ({} = normal)."""
        h = _mx._find_host(self.data, host_or_scenario)
        try:
            with open(_mx._behaviour_file(h)) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def scripted(self, what: str) -> list[dict]:
        """Every scripted reply a host (or a scenario's receiving host) used, oldest session
        first; each entry also has ``session`` (its id)."""
        return [dict(e, session=s["id"]) for s in self.sessions(what) for e in s.get("scripted", [])]

    # --- hostile MX hosts (hostile.py) -------------------------------------------------------
    def hostile_host(self, host_or_scenario: str) -> dict:
        """The host entry of a hostile MX (by host name, or a scenario's first MX)."""
        return _hostile._find_host(self.data, host_or_scenario)

    def hostile_events(self, host_or_scenario: str) -> list[dict]:
        """What a hostile MX did, oldest first (connect, recv, send, data, message, close, ...)."""
        return _hostile.read_events(self.hostile_host(host_or_scenario)["hostile"]["log"])

    def set_hostile(self, host_or_scenario: str, behaviour: str, **opts) -> str:
        """Switch a hostile MX to ``behaviour`` (e.g. "honest"; ``delay=`` for slow-final) from
        its next connection on."""
        return _hostile.set_behaviour(self.data, host_or_scenario, behaviour, **opts)

    def clear_hostile(self, host_or_scenario: str | None = None) -> list[str]:
        """Back to the behaviour at ``up``; no argument = every hostile host."""
        return _hostile.clear_behaviour(self.data, host_or_scenario)

    # --- TLS-RPT (tlsrpt_sink.py) --------------------------------------------------------------
    def tlsrpt_record(self, domain: str) -> dict | None:
        """The ``_smtp._tls.<domain>`` record of a scenario (by name or domain): ``txt``, ``rua``
        (the usable URIs), ``ignored`` (the malformed ones); None if it has none."""
        return self.data["tlsrpt"]["records"].get(self.scenario(domain)["domain"])

    def tlsrpt_posts(self, domain: str | None = None) -> list[dict]:
        """Requests the HTTPS collector served, oldest first (see tlsrpt_sink.py), each with
        ``body`` (bytes) and ``header`` (lower-cased name -> last value) added; optionally only
        those to ``https://<collector>/tlsrpt/<domain>``."""
        out = []
        for p in _tlsrpt.read_posts(self.data):
            if domain is not None and p["path"] != _tlsrpt.PATH_PREFIX + self.scenario(domain)["domain"]:
                continue
            p["body"] = base64.b64decode(p["body_b64"])
            p["header"] = {k.lower(): v for k, v in p["headers"]}
            out.append(p)
        return out

    def set_tlsrpt_collector(self, fail: int, status: int = 503) -> str:
        """The collector answers the next ``fail`` POSTs with ``status`` (then 200 again)."""
        return _tlsrpt.set_collector(self.data, fail, status)

    def clear_tlsrpt_collector(self) -> None:
        _tlsrpt.clear_collector(self.data)

    def sts_requests(self, domain: str) -> list[dict]:
        s = self.scenario(domain)
        path = s["mta_sts"]["behaviour_file"][:-len(".json")] + ".requests.jsonl"
        try:
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []


@contextlib.contextmanager
def running_world(d: str | None = None, keep: bool = False, slot: int | None = 0):
    """A fresh world for the duration of the ``with`` block."""
    w = World.up(d, slot)
    try:
        yield w
    finally:
        w.down(keep=keep)
