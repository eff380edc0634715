"""Address plan and ``world.json`` construction.

Turns the scenario table (scenarios.py) plus a freshly generated PKI (pki.py)
into the single JSON document that every server process and every test reads.

Address plan (all on the loopback interface, no port overrides; ``--slot S``
replaces the second octet 0 by S so that several worlds can run side by side):
  127.0.1.53      NSD (port 53): ``test.`` signed, ``insecure.test.`` unsigned
  127.0.1.54      the DNS front (dnsfront.py, port 53): signed child zones NSD cannot serve
  127.0.2.N       MX hosts as published in DNS (aiosmtpd, or the recording tap
                  in front of Postfix; nothing at all for a ``down`` host), port 25
  127.0.3.N       MTA-STS policy hosts ``mta-sts.<domain>``, HTTPS port 443
  127.0.4.N       attackers (MITM proxies), port 25
  127.0.5.N       internal hosts not in DNS: the real MX behind each attacker,
                  the Postfix smtpd, the Postfix delivery sink
  127.0.6.N       hostile MX hosts (hostile.py), port 25, one behaviour per address; a host
                  name shared by several scenarios (the tarpit domains) has one address
"""
from __future__ import annotations

import os
import time

import hostile
import scenarios as S
import tlsrpt_sink
from pki import PKI, random_sha256

BEHAVIOUR_FILE = "behaviour.json"     # DIR/mx/<host>/behaviour.json: scripted replies (mx.py)


class _Alloc:
    def __init__(self, slot, third):
        self.prefix, self.n = S.addr(slot, third, 0).rsplit(".", 1)[0], 0

    def __call__(self):
        self.n += 1
        if self.n > 254:
            raise RuntimeError(f"address pool {self.prefix}.0/24 exhausted")
        return f"{self.prefix}.{self.n}"


def _tlsa_rdata(spec: str, cert: dict, pki: PKI) -> str:
    u, s, m, src = spec.split()
    data = {"leaf": cert["spki_sha256"], "ca": pki.ca.spki_sha256,
            "otherca": pki.other_ca.spki_sha256, "random": None}[src] or random_sha256()
    return f"{u} {s} {m} {data}"


def _tls_reachable(behaviour) -> bool:
    """False if the host's scripted behaviour at ``up`` prevents any TLS handshake."""
    b = behaviour or {}
    if b.get("drop_after") in ("greeting", "ehlo", "starttls"):
        return False
    for k in ("greeting", "ehlo"):
        v = b.get(k)
        first = (v.splitlines() or [""])[0] if isinstance(v, str) else (v or [""])[0]
        if v is not None and not first.startswith("2"):
            return False
    return True


def _verify_claims(h, entry) -> dict:
    """What a correct verifier concludes about the certificate presented on this
    host's port 25 after STARTTLS (None = no TLS handshake to judge):

    * ``dane``: OpenSSL DANE verification against the host's TLSA records
      (usages 2 and 3 only; RFC 7672 §3.1.3), reference name = TLSA base name;
    * ``webpki``: chain to the test CA, certificate names the MX host
      (RFC 8461 §4.2, RFC 6125).
    """
    if h.kind.startswith(S.HOSTILE + ":"):
        return {"dane": None, "webpki": None}          # no STARTTLS offered
    kind = h.kind.split(":", 1)[-1]
    if kind in (S.DOWN, S.NOTLS, "strip-starttls", "starttls-454", "inject-after-220"):
        return {"dane": None, "webpki": None}
    if not _tls_reachable(h.behaviour):
        return {"dane": None, "webpki": None}
    if kind == "mitm-cert":
        return {"dane": "fail" if h.tlsa else None, "webpki": "fail"}
    usable = [t for t in h.tlsa if t.split()[0] in ("2", "3")]
    dane = None
    if usable:
        ok = any((t.split()[0] == "3" and t.endswith(" leaf")) or
                 (t.split()[0] == "2" and t.endswith(" ca") and h.cert in ("good",))
                 for t in usable)
        dane = "ok" if ok else "fail"
    return {"dane": dane, "webpki": "ok" if h.cert == "good" and not h.cname else "fail"}


def relay_toml(world: dict) -> str:
    """The tlsrelayd configuration block for this world."""
    d = world["dir"]
    dns = f'{world["dns"]["address"]}@{world["dns"]["port"]}'
    listen = world["relay"]["listen"]
    return f'''state_directory = "{d}/relay-state"
[server]
listen = ["{listen}"]
hostname = "relay.example.org"
allowed_clients = ["127.0.0.0/8", "::1/128"]
max_message_size = 52428800
[dns]
trust_anchor_file = "{d}/dns/trust-anchor.ds"
forwarders = []
stub_zones = [{{ name = "{S.ZONE}.", addresses = ["{dns}"] }}]
# The start-up self-test of DNSSEC validation, on the world's names (the defaults are public).
check_secure_name = "dane-ee.{S.ZONE}"
check_bogus_name = "dane-bogus-mx.{S.ZONE}"
[delivery]
port = 25
tls_ca_file = "{d}/pki/ca.pem"
# The world's senders live in the world: DSNs go to their domains' MX, not to an upstream Postfix.
dsn_relay = ""
'''


def build(d: str, slot: int = 0) -> dict:
    """Generate the PKI into ``d/pki`` and return the world description."""
    if not 0 <= slot <= 254:
        raise ValueError("slot must be 0..254")
    d = os.path.abspath(d)
    pki = PKI(os.path.join(d, "pki"))
    mx_ip, sts_ip, att_ip, int_ip, hostile_ip = (_Alloc(slot, 2), _Alloc(slot, 3),
                                                 _Alloc(slot, 4), _Alloc(slot, 5), _Alloc(slot, 6))
    hostile_hosts = {}      # host name -> (address, records_dir, info): shared by its scenarios
    sts_id = "w%d" % int(time.time())
    servers, hosts_index, scenarios = [], {}, {}
    front_zones, front_failures = [], []

    def smtp_server(name, address, starttls, cert, banner, requiretls=False, smtputf8=True):
        rec = os.path.join(d, "mx", name)
        servers.append({"role": "smtp", "name": name, "address": address, "port": 25,
                        "starttls": starttls, "cert": cert, "records_dir": rec,
                        "behaviour_file": os.path.join(rec, BEHAVIOUR_FILE), "banner": banner,
                        "requiretls": requiretls, "smtputf8": smtputf8})
        return rec

    for s in S.ALL_SCENARIOS:
        domain = S.domain_of(s)
        hosts = []
        for h in s.hosts:
            name = S.host_name(s, h.label)
            target = S.host_name(s, h.cname) if h.cname else None
            base = target or name
            is_hostile = h.kind.startswith(S.HOSTILE + ":")
            if is_hostile and (h.tlsa or h.tlsa_malformed or h.cname or h.cert != "good"
                               or h.behaviour is not None or h.a_bogus or h.tlsa_bogus
                               or h.tlsa_servfail or h.aaaa_servfail):
                raise ValueError(f"{s.name}: a hostile host has no TLS, TLSA, CNAME, scripted "
                                 f"behaviour or DNS faults")
            cert = None if is_hostile else pki.issue(name, base, h.cert)   # no STARTTLS
            entry = {"name": name, "preference": h.preference, "kind": h.kind,
                     "cname_target": target, "certificate": cert,
                     "tlsa_name": f"_25._tcp.{base}",
                     "tlsa": [_tlsa_rdata(t, cert, pki) for t in h.tlsa],
                     "tlsa_malformed": list(h.tlsa_malformed),
                     "lookups": S.expected_host_lookups(s, h),
                     "dns": {"a_bogus": h.a_bogus, "tlsa_bogus": h.tlsa_bogus,
                             "tlsa_servfail": h.tlsa_servfail, "aaaa_servfail": h.aaaa_servfail,
                             "front_zone": S.front_zone(s, h)},
                     "backend": None, "attacker": None, "postfix": None, "hostile": None,
                     "behaviour_file": None, "behaviour": h.behaviour,
                     "requiretls": h.requiretls, "smtputf8": h.smtputf8}
            fz = entry["dns"]["front_zone"]
            if fz:
                if S.zone_of(fz) != S.ZONE or h.tlsa_bogus or h.a_bogus or h.tlsa_servfail:
                    raise ValueError(f"{s.name}: a DNS front zone must be a plain signed child of "
                                     f"{S.ZONE}. (no bogus or refused records)")
                if any(z["name"] == fz for z in front_zones):
                    raise ValueError(f"{s.name}: DNS front zone {fz} twice")
                front_zones.append({"name": fz, "scenario": s.name,
                                    "zonefile": os.path.join(d, "dns", "front", fz + "zone.signed")})
                if h.aaaa_servfail:
                    front_failures.append({"name": base + ".", "type": "AAAA", "rcode": "SERVFAIL"})
            if h.behaviour is not None and h.kind not in (S.STARTTLS, S.NOTLS) \
                    and not h.kind.startswith("attacker:"):
                raise ValueError(f"{s.name}: scripted behaviour needs an aiosmtpd host, not {h.kind}")
            if h.requiretls and h.kind != S.STARTTLS:
                raise ValueError(f"{s.name}: requiretls needs an aiosmtpd-starttls host, not {h.kind}")
            if not h.smtputf8 and h.kind not in (S.STARTTLS, S.NOTLS):
                raise ValueError(f"{s.name}: smtputf8=False needs an aiosmtpd host, not {h.kind}")
            if h.kind in (S.STARTTLS, S.NOTLS):
                entry["address"] = mx_ip()
                entry["records_dir"] = smtp_server(name, entry["address"], h.kind == S.STARTTLS,
                                                   cert, base, h.requiretls, h.smtputf8)
            elif h.kind == S.DOWN:
                # published in DNS, nothing listens (world.up checks the address is free)
                entry["address"] = mx_ip()
                entry["records_dir"] = os.path.join(d, "mx", name)     # stays empty
            elif h.kind == S.POSTFIX:
                entry["address"] = mx_ip()
                rec = os.path.join(d, "mx", name)
                pf_addr, sink_addr = int_ip(), int_ip()
                entry["records_dir"] = rec
                entry["postfix"] = {"config_directory": os.path.join(d, "postfix", "conf"),
                                    "queue_directory": os.path.join(d, "postfix", "queue"),
                                    "data_directory": os.path.join(d, "postfix", "data"),
                                    "log": os.path.join(d, "postfix", "maillog"),
                                    "smtpd_address": pf_addr, "sink_address": sink_addr,
                                    "hostname": base, "cert": cert}
                servers.append({"role": "tap", "name": name, "address": entry["address"],
                                "port": 25, "upstream": [pf_addr, 25], "records_dir": rec})
                servers.append({"role": "sink", "name": name, "address": sink_addr, "port": 25,
                                "starttls": False, "cert": None, "records_dir": rec,
                                "sessions_dir": os.path.join(d, "postfix", "sink-sessions"),
                                "banner": "sink." + base})
            elif h.kind.startswith("attacker:"):
                akind = h.kind.split(":", 1)[1]
                entry["address"] = att_ip()
                bname = "backend-" + name
                baddr = int_ip()
                entry["records_dir"] = smtp_server(bname, baddr, True, cert, base)
                entry["backend"] = {"name": bname, "address": baddr,
                                    "records_dir": entry["records_dir"]}
                acert = pki.issue(name + ".attacker", base, "otherca")
                log = os.path.join(d, "attackers", name + ".jsonl")
                entry["attacker"] = {"kind": akind, "log": log, "certificate": acert}
                servers.append({"role": "attacker", "name": name, "kind": akind,
                                "address": entry["address"], "port": 25,
                                "upstream": [baddr, 25], "cert": acert, "log": log})
            elif is_hostile:
                behaviour = h.kind.split(":", 1)[1]
                if behaviour not in hostile.BEHAVIOURS:
                    raise ValueError(f"{s.name}: unknown hostile behaviour {behaviour!r}")
                if name not in hostile_hosts:
                    rec = os.path.join(d, "mx", name)
                    info = {"behaviour": behaviour,
                            "options": dict(hostile.DEFAULT_OPTIONS.get(behaviour, {})),
                            "log": os.path.join(d, "hostile", name + ".jsonl"),
                            "switch_file": os.path.join(d, "hostile", name + ".switch.json")}
                    address = hostile_ip()
                    servers.append({"role": "hostile", "name": name, "address": address,
                                    "port": 25, "records_dir": rec, "banner": name, **info})
                    hostile_hosts[name] = (address, rec, info)
                address, rec, info = hostile_hosts[name]
                if info["behaviour"] != behaviour:
                    raise ValueError(f"{s.name}: {name} is already {info['behaviour']}")
                entry["address"], entry["records_dir"], entry["hostile"] = address, rec, dict(info)
            else:
                raise ValueError(f"{s.name}: unknown host kind {h.kind}")
            if h.kind in (S.STARTTLS, S.NOTLS) or h.kind.startswith("attacker:"):
                # the aiosmtpd server that answers for this host (the backend behind an attacker)
                entry["behaviour_file"] = os.path.join(entry["records_dir"], BEHAVIOUR_FILE)
            entry["verify"] = _verify_claims(h, entry)
            # (a host name shared by several scenarios is listed once, under the first)
            hosts_index.setdefault(name, {"scenario": s.name, "address": entry["address"],
                                          "kind": h.kind})
            hosts.append(entry)

        sts = None
        if s.sts:
            web = f"mta-sts.{domain}"
            addr = sts_ip()
            patterns = s.sts_mx if s.sts_mx is not None else [h["name"] for h in hosts]
            lines = ["version: STSv1", f"mode: {s.sts}"]
            lines += [] if s.sts == "none" else [f"mx: {p}" for p in patterns]
            lines += ["max_age: 86400"]
            sts = {"mode": s.sts, "id": sts_id, "txt": f"v=STSv1; id={sts_id};",
                   "policy_host": web, "address": addr, "mx_patterns": patterns,
                   "policy_lines": lines,
                   "url": f"https://{web}/.well-known/mta-sts.txt",
                   "behaviour_file": os.path.join(d, "sts", domain + ".json"),
                   "certificate": pki.issue(web, web, "good")}
            servers.append({"role": "sts", "name": web, "domain": domain, "address": addr,
                            "port": 443, "cert": sts["certificate"],
                            "behaviour_file": sts["behaviour_file"], "policy_lines": lines})
            hosts_index[web] = {"scenario": s.name, "address": addr, "kind": "mta-sts-https"}

        via = None
        if s.action == "deliver":
            label = s.via or s.hosts[0].label
            via_name = S.host_name(s, label)
            via_host = next(h for h in hosts if h["name"] == via_name)
            via = {"host": via_name, "records_dir": via_host["records_dir"]}
        desc = {"deliver": "deliver", "defer": "defer", "bounce": "bounce"}[s.action]
        if s.security:
            desc += f" ({s.security}{'' if s.tls in (None, True) else ', cleartext'})"
        if s.action != "deliver":
            desc += f" {s.status}"
        scenarios[s.name] = {
            "name": s.name, "summary": s.summary, "rfc": s.rfc,
            "domain": domain, "recipient": f"user@{domain}", "u_label": s.u_label,
            "zone": S.zone_of(domain) + ".",
            "mx_mode": s.mx, "mx": hosts,
            "lookups": {"mx": S.expected_mx_lookup(s)},
            "mta_sts": sts,
            "expected": {"action": s.action, "status": s.status, "security": s.security,
                         "tls": s.tls, "via": via, "text": desc},
        }

    # TLS-RPT (tlsrpt_sink.py): the HTTPS collector after the MTA-STS hosts, the _smtp._tls records
    tlsrpt = tlsrpt_sink.plan(d, pki, sts_ip(), scenarios)
    servers.append(tlsrpt_sink.server_entry(tlsrpt))
    hosts_index[tlsrpt["collector"]["name"]] = {"scenario": None, "address": tlsrpt["collector"]["address"],
                                                 "kind": "tlsrpt-https"}

    return {
        "version": 1,
        "dir": d,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "slot": slot,
        "dns": {"address": S.dns_address(slot), "port": S.DNS_PORT, "zone": S.ZONE + ".",
                "insecure_zone": S.INSECURE_ZONE + ".",
                "trust_anchor_file": os.path.join(d, "dns", "trust-anchor.ds"),
                "unbound_conf": os.path.join(d, "dns", "unbound.conf"),
                "bait_address": S.bait_address(slot),
                "front": {"address": S.front_address(slot), "port": S.DNS_PORT,
                          "ns_name": S.FRONT_NS + ".", "zones": front_zones,
                          "failures": front_failures,
                          "query_log": os.path.join(d, "dns", "front-queries.jsonl")}},
        "pki": {"ca_file": pki.ca_file, "other_ca_file": pki.other_ca_file,
                "ca_spki_sha256": pki.ca.spki_sha256,
                "other_ca_spki_sha256": pki.other_ca.spki_sha256},
        "relay": {"listen": S.relay_listen(slot), "hostname": "relay.example.org",
                  "toml_file": os.path.join(d, "tlsrelay.toml"),
                  "state_directory": os.path.join(d, "relay-state")},
        "hosts": hosts_index,
        "servers": servers,
        "scenarios": scenarios,
        "tlsrpt": tlsrpt,
    }
