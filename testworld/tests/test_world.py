"""Self-check: the test world is what world.json claims it is.

One world for the module.  Every claim is checked with an independent tool:
libunbound (``unbound-host``, and one long-lived context through ctypes set up
like tlsrelayd's for the DNS front's zones) for DNSSEC status and data, ``openssl s_client``
for DANE and WebPKI verification, raw sockets / smtplib for STARTTLS and the
attackers, an HTTPS client for the MTA-STS hosts.  The last test tears the
world down and checks nothing is left.

    python3 -m pytest -q testworld/tests
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import ctypes

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from cryptography import x509

import procs
import world as world_mod
from worldlib import World

WORKERS = 8


@pytest.fixture(scope="module")
def w():
    parent = tempfile.mkdtemp(prefix="tlsrelay-selfcheck-")
    os.chmod(parent, 0o755)          # Postfix (user postfix) must reach DIR/postfix
    d = os.path.join(parent, "world")
    t = time.monotonic()
    for attempt in range(3):
        # slot 0 (the brief's address plan) unless a world is already running there;
        # retry if another world grabbed the slot between the probe and our start
        slot = int(os.environ.get("TESTWORLD_SLOT", world_mod.free_slot()))
        try:
            world = World.up(d, slot=slot)
            break
        except world_mod.WorldError as e:
            subprocess.run(["rm", "-rf", d])
            if "is not free" not in str(e) or attempt == 2:
                subprocess.run(["rm", "-rf", parent])
                raise
        except BaseException:
            subprocess.run(["rm", "-rf", parent])
            raise
    world.up_seconds = time.monotonic() - t
    yield world
    if os.path.exists(d):
        world.down()
    os.rmdir(os.path.dirname(d))


def pmap(fn, items):
    with ThreadPoolExecutor(WORKERS) as ex:
        return list(ex.map(fn, items))


# --- world.json ----------------------------------------------------------------------

def test_up_is_fast_and_config_is_complete(w):
    assert w.up_seconds < 5
    toml = w.toml
    dns = "%s@%d" % (w.data["dns"]["address"], w.data["dns"]["port"])
    for key in ('state_directory = "%s/relay-state"' % w.dir, 'listen = ["%s"]' % w.data["relay"]["listen"],
                'hostname = "relay.example.org"', 'allowed_clients = ["127.0.0.0/8", "::1/128"]',
                "max_message_size = 52428800", 'trust_anchor_file = "%s/dns/trust-anchor.ds"' % w.dir,
                "forwarders = []", 'stub_zones = [{ name = "test.", addresses = ["%s"] }]' % dns,
                "port = 25", 'tls_ca_file = "%s/pki/ca.pem"' % w.dir):
        assert key in toml
    if sys.version_info >= (3, 11):
        import tomllib
        cfg = tomllib.loads(toml)
        assert set(cfg) == {"state_directory", "server", "dns", "delivery"}
    ds = open(w.data["dns"]["trust_anchor_file"]).read().split()
    assert ds[0] == "test." and ds[2] == "DS" and ds[4:6] == ["13", "2"] and len(ds[6]) == 64


def test_addresses_unique_and_loopback(w):
    seen = {}
    for s in w.data["servers"]:
        key = (s["address"], s["port"])
        assert key not in seen, f"{key} used by {seen.get(key)} and {s['name']}"
        seen[key] = s["name"]
        assert s["address"].startswith("127.") and s["address"] != "127.0.0.1"
    addrs = [h["address"] for h in w.data["hosts"].values()]
    assert len(addrs) == len(set(addrs))


def test_scenario_schema(w):
    required = {"name", "summary", "rfc", "domain", "recipient", "zone", "mx_mode", "mx",
                "lookups", "mta_sts", "expected"}
    names = set(w.scenarios)
    for must in ("dane-ee", "dane-ta", "dane-ta-badname", "dane-tlsa-mismatch", "dane-unusable",
                 "dane-bogus-tlsa", "dane-bogus-a", "dane-tlsa-servfail", "insecure-child",
                 "insecure-mx-signed", "implicit-mx", "cname-mx", "null-mx", "nxdomain", "no-tls",
                 "sts-enforce", "sts-testing", "sts-none", "two-mx-second-good",
                 "attack-strip-starttls", "attack-starttls-454", "attack-mitm-cert",
                 "attack-inject", "attack-sts-strip-starttls", "dane-postfix",
                 "two-mx-first-down", "two-mx-first-421", "plain-mx", "plain-mx2",
                 "dane-malformed-tlsa", "dane-aaaa-servfail", "sts-testing-strip", "dane-unusable-sts",
                 "dane-unusable-sts-otherca", "dane-sts-mx-mismatch"):
        assert must in names
    for s in w.scenarios.values():
        assert required <= set(s), s["name"]
        e = s["expected"]
        assert e["action"] in ("deliver", "defer", "bounce")
        assert re.fullmatch(r"[245]\.\d\.\d+", e["status"])
        assert (e["via"] is not None) == (e["action"] == "deliver")
        if e["action"] == "deliver":
            assert os.path.isdir(e["via"]["records_dir"])
    assert sum(h["kind"] == "postfix" for s in w.scenarios.values() for h in s["mx"]) == 1


# --- DNS: every claimed lookup status, checked with libunbound ---------------------------

def unbound_host(w, name, rtype):
    p = subprocess.run(["unbound-host", "-C", w.data["dns"]["unbound_conf"], "-v", "-t", rtype, name],
                       capture_output=True, text=True, timeout=20)
    return p.stdout + p.stderr


def classify(out: str):
    """(status, result, answer lines) from unbound-host -v output."""
    if "SERVFAIL" in out:
        return "servfail", "none", []
    status = ("bogus" if "BOGUS" in out else "secure" if "(secure)" in out
              else "insecure" if "(insecure)" in out else "?")
    if "NXDOMAIN" in out:
        return status, "nxdomain", []
    lines = [l for l in out.splitlines() if re.search(r" (has|is handled by|has address) ", l)
             and "has no" not in l]
    if not lines and re.search(r" has no (.* record|address|IPv6 address)", out):
        return status, "nodata", []
    return status, "data", lines


def all_lookups(w):
    items = []
    for s in w.scenarios.values():
        items.append((s["name"], "mx", s["lookups"]["mx"], None))
        for h in s["mx"]:
            items.append((s["name"], "a", h["lookups"]["a"], h))
            items.append((s["name"], "aaaa", h["lookups"]["aaaa"], h))
            items.append((s["name"], "tlsa", h["lookups"]["tlsa"], h))
    return items


@pytest.fixture(scope="module")
def lookups(w):
    items = all_lookups(w)
    outs = pmap(lambda it: unbound_host(w, it[2]["name"], it[2]["type"]), items)
    return [(it, out) for it, out in zip(items, outs)]


def test_dns_status_as_claimed(w, lookups):
    wrong = []
    for (scn, what, claim, h), out in lookups:
        status, result, lines = classify(out)
        if (status, result) != (claim["status"], claim["result"]):
            wrong.append(f"{scn} {what} {claim['name']}: claimed {claim['status']}/{claim['result']}"
                         f", got {status}/{result}: {out.strip()}")
    assert not wrong, "\n".join(wrong)


def test_dns_data_as_claimed(w, lookups):
    for (scn, what, claim, h), out in lookups:
        status, result, lines = classify(out)
        if result != "data":
            continue
        text = "\n".join(lines).lower()
        if what == "a":
            assert f"has address {h['address']} " in text + " ", (scn, out)
        elif what == "tlsa":
            assert len(lines) == len(h["tlsa"]) + len(h["tlsa_malformed"]), (scn, out)
            for t in h["tlsa"] + h["tlsa_malformed"]:      # unbound-host prints "\# 2 0301" too
                assert t.lower() in text, (scn, t, out)
        elif what == "mx":
            sc = w.scenario(scn)
            if sc["mx_mode"] == "null":
                assert "handled by 0 ." in text
            else:
                for m in sc["mx"]:
                    assert f"handled by {m['preference']} {m['name']}." in text, (scn, out)


def test_bogus_records_are_bogus_because_of_signatures(w):
    zone = open(os.path.join(w.dir, "dns", "test.zone.signed")).read()
    p = subprocess.run(["ldns-verify-zone", os.path.join(w.dir, "dns", "test.zone.signed")],
                       capture_output=True, text=True)
    errs = sorted(re.findall(r"Bogus DNSSEC signature for (\S+)\s+(\S+)", p.stdout + p.stderr))
    assert errs == sorted([("mx.dane-bogus-a.test.", "A"), ("dane-bogus-mx.test.", "MX"),
                           ("_25._tcp.mx.dane-bogus-tlsa.test.", "TLSA")])
    assert "NSEC3PARAM" in zone
    # the DNS front's zones: signed with their own keys, delegated with a DS, all signatures good
    for z in w.data["dns"]["front"]["zones"]:
        p = subprocess.run(["ldns-verify-zone", z["zonefile"]], capture_output=True, text=True)
        assert p.returncode == 0 and "Zone is verified and complete" in p.stdout + p.stderr, p
        assert re.search(r"^%s\s+\d+\s+IN\s+DS\s+\d+ 13 2 [0-9a-f]{64}$" % re.escape(z["name"]), zone, re.M)


# --- the DNS front (dnsfront.py): what NSD cannot serve, checked with libunbound -------------

class UbResult(ctypes.Structure):
    """struct ub_result (unbound.h, libunbound 1.17)."""
    _fields_ = [("qname", ctypes.c_char_p), ("qtype", ctypes.c_int), ("qclass", ctypes.c_int),
                ("data", ctypes.POINTER(ctypes.POINTER(ctypes.c_char))),
                ("len", ctypes.POINTER(ctypes.c_int)), ("canonname", ctypes.c_char_p),
                ("rcode", ctypes.c_int), ("answer_packet", ctypes.c_void_p),
                ("answer_len", ctypes.c_int), ("havedata", ctypes.c_int), ("nxdomain", ctypes.c_int),
                ("secure", ctypes.c_int), ("bogus", ctypes.c_int), ("why_bogus", ctypes.c_char_p),
                ("was_ratelimited", ctypes.c_int), ("ttl", ctypes.c_int)]


class Libunbound:
    """One long-lived libunbound context set up as tlsrelayd sets up its own (UnboundEngine:
    do-not-query-localhost no, local-zone test. transparent, stub test. -> NSD, trust anchor
    file), so that one failed lookup is seen to leave the others of the same context alone."""

    def __init__(self, w):
        lib = self.lib = ctypes.CDLL("libunbound.so.8")
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        lib.ub_ctx_create.restype = vp
        lib.ub_ctx_set_option.argtypes = [vp, cp, cp]
        lib.ub_ctx_set_stub.argtypes = [vp, cp, cp, ctypes.c_int]
        lib.ub_ctx_add_ta_file.argtypes = [vp, cp]
        lib.ub_resolve.argtypes = [vp, cp, ctypes.c_int, ctypes.c_int,
                                   ctypes.POINTER(ctypes.POINTER(UbResult))]
        lib.ub_resolve_free.argtypes = [ctypes.POINTER(UbResult)]
        lib.ub_ctx_delete.argtypes = [vp]
        self.ctx = lib.ub_ctx_create()
        d = w.data["dns"]
        for k, v in (("do-not-query-localhost:", "no"), ("val-log-level:", "2"),
                     ("local-zone:", "test. transparent")):
            assert lib.ub_ctx_set_option(self.ctx, k.encode(), v.encode()) == 0, k
        assert lib.ub_ctx_set_stub(self.ctx, b"test.", f"{d['address']}@{d['port']}".encode(), 0) == 0
        assert lib.ub_ctx_add_ta_file(self.ctx, d["trust_anchor_file"].encode()) == 0

    def resolve(self, name, rtype):
        """{rcode, secure, bogus, nxdomain, data: [rdata wire bytes]}"""
        res = ctypes.POINTER(UbResult)()
        rc = self.lib.ub_resolve(self.ctx, name.encode(), {"A": 1, "AAAA": 28, "TLSA": 52}[rtype],
                                 1, ctypes.byref(res))
        assert rc == 0, rc
        r = res.contents
        data, i = [], 0
        while r.havedata and r.data[i]:
            data.append(ctypes.string_at(r.data[i], r.len[i]))
            i += 1
        out = {"rcode": r.rcode, "secure": bool(r.secure), "bogus": bool(r.bogus),
               "nxdomain": bool(r.nxdomain), "data": data}
        self.lib.ub_resolve_free(res)
        return out

    def close(self):
        self.lib.ub_ctx_delete(self.ctx)


def front_query(w, name, rtype, tcp=False, dnssec=True):
    q = dns.message.make_query(name, rtype, want_dnssec=dnssec)
    q.flags &= ~dns.flags.RD
    f = w.data["dns"]["front"]
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, f["address"], port=f["port"], timeout=5)


def test_dns_front_aaaa_servfail_and_malformed_tlsa(w):
    sa, sm = w.scenario("dane-aaaa-servfail"), w.scenario("dane-malformed-tlsa")
    ha, hm = sa["mx"][0], sm["mx"][0]
    front = w.data["dns"]["front"]
    assert [z["name"] for z in front["zones"]] == [f"_25._tcp.{hm['name']}.", f"{ha['name']}."]
    assert front["failures"] == [{"name": ha["name"] + ".", "type": "AAAA", "rcode": "SERVFAIL"}]
    assert (ha["dns"]["front_zone"], hm["dns"]["front_zone"]) == (ha["name"] + ".", hm["tlsa_name"] + ".")
    assert ha["lookups"]["aaaa"] == {"name": ha["name"], "type": "AAAA", "status": "servfail",
                                     "result": "none"}
    assert (ha["lookups"]["a"]["status"], ha["lookups"]["tlsa"]["status"]) == ("secure", "secure")
    assert hm["tlsa_malformed"] == ["\\# 2 0301"] and len(hm["tlsa"]) == 1
    assert hm["lookups"]["tlsa"] == {"name": hm["tlsa_name"], "type": "TLSA", "status": "secure",
                                     "result": "data"}
    leaf = bytes.fromhex(ha["certificate"]["spki_sha256"])

    ub = Libunbound(w)
    try:
        # first all three at once (as the relay asks them), then again one by one, from the
        # context's cache: the failure stays that one lookup's
        for parallel in (True, False):
            qs = [(ha["name"], "AAAA"), (ha["name"], "A"), (ha["tlsa_name"], "TLSA")]
            aaaa, a, tlsa = (pmap(lambda nq: ub.resolve(*nq), qs) if parallel
                             else [ub.resolve(*nq) for nq in qs])
            assert (aaaa["rcode"], aaaa["secure"], aaaa["bogus"], aaaa["data"]) == (2, False, False, []), aaaa
            assert (a["rcode"], a["secure"], a["bogus"]) == (0, True, False), a
            assert a["data"] == [socket.inet_aton(ha["address"])]
            assert (tlsa["rcode"], tlsa["secure"], tlsa["data"]) == (0, True, [b"\x03\x01\x01" + leaf]), tlsa
        r = ub.resolve(hm["tlsa_name"], "TLSA")
        assert (r["rcode"], r["secure"], r["bogus"]) == (0, True, False), r
        assert sorted(r["data"]) == sorted([b"\x03\x01",
                                            b"\x03\x01\x01" + bytes.fromhex(hm["certificate"]["spki_sha256"])])
        r = ub.resolve(hm["name"], "A")          # the host itself stays in test. (NSD)
        assert (r["secure"], r["data"]) == (True, [socket.inet_aton(hm["address"])])
    finally:
        ub.close()
    fails = w.front_queries(ha["name"], "AAAA")
    assert fails and {q["rcode"] for q in fails} == {"SERVFAIL"}
    assert {q["rcode"] for q in w.front_queries(ha["name"], "A")} == {"NOERROR"}

    # the front itself: AA answers with signatures, the scripted SERVFAIL, NSEC denials, TCP
    r = front_query(w, ha["name"], "A")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert {x.rdtype for x in r.answer} == {dns.rdatatype.A, dns.rdatatype.RRSIG}
    r = front_query(w, ha["name"], "AAAA", tcp=True)
    assert r.rcode() == dns.rcode.SERVFAIL and not r.answer and not r.flags & dns.flags.AA
    r = front_query(w, ha["name"], "MX")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert {x.rdtype for x in r.authority} == {dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.RRSIG}
    r = front_query(w, "nothing-here." + ha["name"], "A")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    r = front_query(w, sa["domain"], "MX")
    assert r.rcode() == dns.rcode.REFUSED         # the parent's names are NSD's
    # the malformed record goes out as its 2 octets (dnspython, like BIND, cannot parse it)
    q = dns.message.make_query(hm["tlsa_name"], "TLSA", want_dnssec=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q.to_wire(), (front["address"], front["port"]))
    raw = s.recv(4096)
    s.close()
    assert b"\x00\x34\x00\x01" in raw and b"\x00\x02\x03\x01" in raw     # TYPE52 IN ... RDLENGTH 2, 03 01
    with pytest.raises(dns.exception.FormError):
        dns.message.from_wire(raw)
    # NSD (the parent) delegates both zones with a signed DS
    for z in front["zones"]:
        q = dns.message.make_query(z["name"], "DS", want_dnssec=True)
        r = dns.query.udp(q, w.data["dns"]["address"], port=w.data["dns"]["port"], timeout=5)
        assert {x.rdtype for x in r.answer} == {dns.rdatatype.DS, dns.rdatatype.RRSIG}, r


# --- TLS: DANE and WebPKI claims, checked with openssl s_client ----------------------

def s_client(addr, args):
    p = subprocess.run(["openssl", "s_client", "-brief", "-starttls", "smtp",
                        "-connect", f"{addr}:25", "-verify_return_error"] + args,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    out = p.stdout + p.stderr
    return ("ok" if p.returncode == 0 and "Verification: OK" in out else "fail"), out


def tls_hosts(w, kind):
    return [(s["name"], h) for s in w.scenarios.values() for h in s["mx"]
            if h["verify"][kind] is not None]


def test_dane_verification_as_claimed(w):
    hosts = tls_hosts(w, "dane")
    assert len(hosts) >= 15

    def check(item):
        scn, h = item
        base = h["cname_target"] or h["name"]
        args = ["-dane_tlsa_domain", base, "-dane_ee_no_namechecks"]
        for t in h["tlsa"]:
            args += ["-dane_tlsa_rrdata", t]
        return scn, h, *s_client(h["address"], args)

    wrong = [f"{scn} {h['name']}: claimed {h['verify']['dane']}, openssl: {res}\n{out}"
             for scn, h, res, out in pmap(check, hosts) if res != h["verify"]["dane"]]
    assert not wrong, "\n".join(wrong)
    # spot checks that the claims themselves are the interesting ones
    claims = {s: h["verify"]["dane"] for s, h in hosts}
    assert claims["dane-ee"] == claims["dane-ta"] == claims["dane-ee-expired"] == "ok"
    assert claims["dane-ta-badname"] == claims["dane-tlsa-mismatch"] == "fail"
    assert claims["attack-mitm-cert"] == claims["insecure-child"] == "fail"
    assert claims["dane-bogus-tlsa"] == "ok"     # the served (bogus) data would match
    # the malformed record is left out of the verification: the good one matches
    assert claims["dane-malformed-tlsa"] == claims["dane-aaaa-servfail"] == "ok"
    assert claims["dane-sts-mx-mismatch"] == "ok"
    assert "dane-unusable-sts" not in claims and "dane-unusable-sts-otherca" not in claims


def test_webpki_verification_as_claimed(w):
    ca = w.data["pki"]["ca_file"]

    def check(item):
        scn, h = item
        return scn, h, *s_client(h["address"], ["-CAfile", ca, "-verify_hostname", h["name"]])

    results = pmap(check, tls_hosts(w, "webpki"))
    wrong = [f"{scn} {h['name']}: claimed {h['verify']['webpki']}, openssl: {res}\n{out}"
             for scn, h, res, out in results if res != h["verify"]["webpki"]]
    assert not wrong, "\n".join(wrong)
    by = {scn: (res, out) for scn, h, res, out in results}
    assert by["sts-enforce"][0] == by["dane-unusable-sts"][0] == by["dane-sts-mx-mismatch"][0] == "ok"
    assert by["dane-unusable-sts-otherca"][0] == "fail"
    assert "certificate has expired" in by["sts-enforce-expired"][1]
    assert "hostname mismatch" in by["sts-enforce-wrongname"][1]
    assert "unable to get local issuer" in by["sts-enforce-otherca"][1] or \
        "self-signed certificate in certificate chain" in by["sts-enforce-otherca"][1]


# --- SMTP: STARTTLS offered or not, and what the MX records -------------------------

def smtp_ehlo(addr):
    s = smtplib.SMTP(addr, 25, local_hostname="selfcheck.example", timeout=10)
    s.ehlo()
    return s


def greets(h):
    """False for hosts that never reach EHLO: nothing listens, a scripted refusal at `up`, or a
    hostile MX (hostile.py; exercised by integration/test_hostile_mx.py)."""
    b = h.get("behaviour") or {}
    return h["kind"] != "down" and not h["kind"].startswith("hostile:") \
        and not str(b.get("greeting", "2")).startswith(("4", "5")) \
        and b.get("drop_after") not in ("greeting", "ehlo")


def test_starttls_offered_as_claimed(w):
    for s in w.scenarios.values():
        for h in s["mx"]:
            if not greets(h):
                continue
            c = smtp_ehlo(h["address"])
            offered = c.has_extn("starttls")
            c.quit()
            expect = h["kind"] not in ("aiosmtpd-plain", "attacker:strip-starttls")
            assert offered == expect, (s["name"], h["name"])


def send_over_starttls(w, h, rcpt, body, tls=True):
    c = smtp_ehlo(h["address"])
    if tls:
        ctx = ssl.create_default_context(cafile=w.data["pki"]["ca_file"])
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c._host = h["name"]          # smtplib passes it as SNI
        c.starttls(context=ctx)
        c.ehlo()
    c.sendmail("selfcheck@example.org", [rcpt], body)
    c.quit()


@pytest.mark.parametrize("scn,tls", [("dane-ee", True), ("dane-postfix", True), ("no-tls", False)])
def test_mx_records_message(w, scn, tls):
    sc = w.scenario(scn)
    h = sc["mx"][0]
    marker = f"marker-{scn}-{time.time_ns()}".encode()
    body = (b"From: a@example.org\r\nSubject: " + marker + b"\r\n\r\n"
            b".leading dot\r\n\xc3\xa9 8bit line\r\nlast line\r\n")
    before = len(w.messages(scn))
    send_over_starttls(w, h, sc["recipient"], body, tls=tls)
    msgs = w.wait_for_messages(scn, before + 1, timeout=10)
    assert len(msgs) == before + 1
    m = msgs[-1]
    assert m["data_bytes"] == body
    assert m["mail_from"] == "selfcheck@example.org" and m["rcpt_tos"] == [sc["recipient"]]
    assert m["tls"] is tls
    if tls:
        assert m["tls_version"] in ("TLSv1.2", "TLSv1.3") and m["cipher"]
        assert marker not in w.cleartext(scn)
        if h["kind"] != "postfix":
            assert m["sni"] == h["name"]
    else:
        assert m["tls_version"] is None
        assert marker in w.cleartext(scn)
    time.sleep(0.1)    # session file is completed at disconnect
    sess = [s for s in w.sessions(scn) if s["closed"]]
    assert sess and sess[-1]["tls"] is tls


# --- scripted MX replies (DIR/mx/<host>/behaviour.json) -----------------------------

def insecure_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def connect(h, starttls=False):
    c = smtplib.SMTP(h["address"], 25, local_hostname="selfcheck.example", timeout=10)
    if starttls:
        c.ehlo()
        c._host = h["name"]
        c.starttls(context=insecure_ctx())
    return c


def session_ids(w, host):
    return {s["id"] for s in w.sessions(host)}


def new_session(w, host, known, timeout=5.0):
    """The one session opened since ``known`` was taken, once it is closed."""
    end = time.monotonic() + timeout
    while True:
        new = [s for s in w.sessions(host) if s["id"] not in known]
        if new and all(s["closed"] for s in new) or time.monotonic() > end:
            assert len(new) == 1, new
            return new[0]
        time.sleep(0.02)


@pytest.fixture
def mx(w):
    """The plain-mx host, normal before and after the test."""
    h = w.scenario("plain-mx")["mx"][0]
    assert h["behaviour_file"] == os.path.join(w.dir, "mx", h["name"], "behaviour.json")
    w.clear_mx_behaviour("plain-mx")
    yield h
    w.clear_mx_behaviour("plain-mx")
    assert not os.path.exists(h["behaviour_file"])


def test_mx_greeting(w, mx):
    known = session_ids(w, mx["name"])
    path = w.set_mx_behaviour("plain-mx", greeting="421 4.3.2 Service shutting down")
    assert path == mx["behaviour_file"] and w.mx_behaviour(mx["name"]) == {
        "greeting": "421 4.3.2 Service shutting down"}
    with pytest.raises(smtplib.SMTPConnectError) as e:
        connect(mx)
    assert e.value.smtp_code == 421 and e.value.smtp_error == b"4.3.2 Service shutting down"
    s = new_session(w, mx["name"], known)
    assert [(x["at"], x["reply"]) for x in s["scripted"]] == [
        ("greeting", "421 4.3.2 Service shutting down")]
    assert s["transcript"] == ["S: 421 4.3.2 Service shutting down"] and s["cleartext_len"] == 0

    # a 2xx greeting only replaces the banner; the session goes on
    w.set_mx_behaviour(mx["name"], greeting="220 custom.example ESMTP ready")
    c = smtplib.SMTP(local_hostname="selfcheck.example", timeout=10)
    assert c.connect(mx["address"], 25) == (220, b"custom.example ESMTP ready")
    c.ehlo()
    assert c.has_extn("starttls")
    c.quit()


def test_mx_ehlo(w, mx):
    w.set_mx_behaviour("plain-mx", ehlo=["250-mx.scripted.example", "250 8BITMIME"])
    c = connect(mx)
    assert c.ehlo() == (250, b"mx.scripted.example\n8BITMIME") and not c.has_extn("starttls")
    c.quit()
    known = session_ids(w, mx["name"])
    w.set_mx_behaviour("plain-mx", ehlo="550 5.7.1 No ESMTP for you")
    c = connect(mx)
    assert c.ehlo()[0] == 550
    assert c.docmd("MAIL FROM:<a@example.org>")[0] == 503       # not greeted yet
    assert c.helo()[0] == 250                                     # HELO is not scripted
    assert c.docmd("MAIL FROM:<a@example.org>")[0] == 250
    c.quit()
    s = new_session(w, mx["name"], known)
    assert [(x["at"], x["reply"], x["arg"]) for x in s["scripted"]] == [
        ("ehlo", "550 5.7.1 No ESMTP for you", "selfcheck.example")]


def test_mx_mail_and_reread_per_command(w, mx):
    c = connect(mx)
    c.ehlo()
    # the file is read before every command: no reconnect, no restart
    w.set_mx_behaviour("plain-mx", mail="451 4.3.0 Try again later")
    assert c.mail("a@example.org") == (451, b"4.3.0 Try again later")
    assert c.rcpt("user@plain-mx.test")[0] == 503                 # no transaction opened
    assert c.docmd("MAIL TO:<a@example.org>")[0] == 501           # syntax errors stay real
    w.clear_mx_behaviour("plain-mx")
    assert c.mail("a@example.org")[0] == 250
    w.set_mx_behaviour("plain-mx", mail="250 2.1.0 Sender fine")
    c.rset()
    assert c.mail("a@example.org") == (250, b"2.1.0 Sender fine")
    assert c.rcpt("user@plain-mx.test")[0] == 250                 # accepted: transaction open
    c.quit()


def test_mx_rcpt_over_tls(w, mx):
    w.set_mx_behaviour("plain-mx", rcpt={"tempfail": "450 4.2.0 Mailbox busy, try later",
                                         "NoUser@Plain-MX.test": "550 5.1.1 No such user",
                                         "tempfail@plain-mx.test": "452 4.2.2 Over quota"})
    assert w.mx_behaviour("plain-mx")["rcpt"]["nouser@plain-mx.test"] == "550 5.1.1 No such user"
    known = session_ids(w, mx["name"])
    marker = b"rcpt-marker-%d" % time.time_ns()
    c = connect(mx, starttls=True)
    refused = c.sendmail("a@example.org", ["tempfail@plain-mx.test", "TempFail@elsewhere.test",
                                           "nouser@plain-mx.test", "good@plain-mx.test"],
                         b"Subject: " + marker + b"\r\n\r\nbody\r\n")
    c.quit()
    assert refused == {"tempfail@plain-mx.test": (452, b"4.2.2 Over quota"),     # full address first
                       "TempFail@elsewhere.test": (450, b"4.2.0 Mailbox busy, try later"),
                       "nouser@plain-mx.test": (550, b"5.1.1 No such user")}
    m = [m for m in w.messages("plain-mx") if marker in m["data_bytes"]]
    assert len(m) == 1 and m[0]["rcpt_tos"] == ["good@plain-mx.test"] and m[0]["tls"]
    s = new_session(w, mx["name"], known)
    assert [(x["at"], x["arg"], x["tls"]) for x in s["scripted"]] == [
        ("rcpt", "TO:<tempfail@plain-mx.test>", True), ("rcpt", "TO:<TempFail@elsewhere.test>", True),
        ("rcpt", "TO:<nouser@plain-mx.test>", True)]
    assert "C: RCPT TO:<good@plain-mx.test>" in s["transcript"] and s["messages"] == [m[0]["id"]]
    assert marker not in w.cleartext("plain-mx")

    w.set_mx_behaviour("plain-mx", rcpt={"*": "452 4.5.3 Too many recipients"})
    c = connect(mx)
    c.ehlo()
    c.mail("a@example.org")
    assert c.rcpt("anyone@plain-mx.test") == (452, b"4.5.3 Too many recipients")
    c.quit()


def test_mx_data(w, mx):
    w.set_mx_behaviour("plain-mx", data="554 5.7.1 No data for you")
    c = connect(mx)
    c.ehlo()
    assert c.docmd("DATA")[0] == 503                    # no recipient: the real error
    c.mail("a@example.org")
    c.rcpt("user@plain-mx.test")
    assert c.docmd("DATA") == (554, b"5.7.1 No data for you")
    assert c.mail("a@example.org")[0] == 250            # transaction was reset
    c.rcpt("user@plain-mx.test")
    # a 3xx reply replaces the 354 text and the message is read
    w.set_mx_behaviour("plain-mx", data="354 Go ahead, make my day")
    assert c.docmd("DATA") == (354, b"Go ahead, make my day")
    c.send(b"Subject: data-3xx\r\n\r\nx\r\n.\r\n")
    assert c.getreply()[0] == 250
    c.quit()
    assert any(m["data_bytes"].startswith(b"Subject: data-3xx") for m in w.messages("plain-mx"))


def test_mx_data_end(w, mx):
    before = len(w.messages("plain-mx"))
    known = session_ids(w, mx["name"])
    w.set_mx_behaviour("plain-mx", data_end="452 4.3.1 Insufficient system storage")
    c = connect(mx, starttls=True)
    c.ehlo()
    with pytest.raises(smtplib.SMTPDataError) as e:
        c.sendmail("a@example.org", ["user@plain-mx.test"], b"Subject: not kept\r\n\r\nx\r\n")
    assert e.value.smtp_code == 452
    c.quit()
    s = new_session(w, mx["name"], known)
    assert len(w.messages("plain-mx")) == before and s["messages"] == []      # not recorded
    [x] = s["scripted"]
    assert (x["at"], x["reply"], x["rcpt_tos"], x["tls"]) == (
        "data_end", "452 4.3.1 Insufficient system storage", ["user@plain-mx.test"], True)
    assert x["size"] == len(b"Subject: not kept\r\n\r\nx\r\n")
    # a 2xx line: recorded, with the scripted (multi-line) text
    w.set_mx_behaviour("plain-mx", data_end="250 2.0.0 Accepted\n250 for delivery")
    c = connect(mx)
    c.ehlo()
    c.mail("a@example.org")
    c.rcpt("user@plain-mx.test")
    assert c.data(b"Subject: kept\r\n\r\nx\r\n") == (250, b"2.0.0 Accepted\nfor delivery")
    c.quit()
    assert w.messages("plain-mx")[-1]["data_bytes"].startswith(b"Subject: kept")


def test_mx_drop_after(w, mx):
    steps = ["greeting", "ehlo", "starttls", "mail", "rcpt", "data", "data_end"]
    before = len(w.messages("plain-mx"))
    for point in steps:
        w.set_mx_behaviour("plain-mx", drop_after=point)
        known = session_ids(w, mx["name"])
        done = []
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c = smtplib.SMTP(local_hostname="selfcheck.example", timeout=10)
            c._host = mx["name"]
            c.connect(mx["address"], 25)
            done.append("greeting")
            c.ehlo()
            done.append("ehlo")
            c.starttls(context=insecure_ctx())
            done.append("starttls")
            c.ehlo()
            c.mail("a@example.org")
            done.append("mail")
            c.rcpt("user@plain-mx.test")
            done.append("rcpt")
            c.putcmd("data")
            c.getreply()
            done.append("data")
            c.send(b"Subject: dropped\r\n\r\nx\r\n.\r\n")
            c.getreply()
            done.append("data_end")
        assert done == steps[:steps.index(point)], point
        s = new_session(w, mx["name"], known)
        assert s["dropped"] == point and s["closed"]
        assert [(x["at"], x["point"]) for x in s["scripted"]] == [("drop_after", point)]
        assert s["tls"] is (steps.index(point) > steps.index("starttls"))
    assert len(w.messages("plain-mx")) == before
    assert [e["point"] for e in w.scripted("plain-mx") if e["at"] == "drop_after"][-7:] == steps


def test_mx_behaviour_cli_validation_and_defaults(w, mx):
    wp = [sys.executable, world_mod.__file__]
    p = subprocess.run(wp + ["mx-set", "--dir", w.dir, "mx.plain-mx.test",
                             '{"mail": "421 4.3.0 Closing"}'], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == mx["behaviour_file"], p.stderr
    c = connect(mx)
    c.ehlo()
    assert c.mail("a@example.org") == (421, b"4.3.0 Closing")
    c.close()
    p = subprocess.run(wp + ["mx-set", "--dir", w.dir, "plain-mx", '{"greting": "421 x"}'],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "unknown behaviour key(s) greting" in p.stderr, p.stderr
    for host, spec, err in [("plain-mx", {"mail": "hello"}, "not an SMTP reply line"),
                            ("plain-mx", {"data_end": "2500 nope"}, "not an SMTP reply line"),
                            ("plain-mx", {"data_end": ["250 a", "550 b"]}, "different codes"),
                            ("plain-mx", {"drop_after": "quit"}, "drop_after must be"),
                            ("plain-mx", {"rcpt": "450 4.2.0 x"}, "rcpt must be an object"),
                            ("plain-mx", {"rcpt": {"x": 450}}, "reply must be a string"),
                            ("dane-postfix", {}, "not served by aiosmtpd"),
                            ("mx1.two-mx-first-down.test", {}, "not served by aiosmtpd"),
                            ("no-such-host.test", {}, "no MX host or scenario")]:
        with pytest.raises(ValueError, match=err):
            w.set_mx_behaviour(host, **spec)
    assert w.mx_behaviour("plain-mx") == {"mail": "421 4.3.0 Closing"}      # unchanged by errors

    # a file that is not valid JSON is ignored (normal replies) and reported in the session
    known = session_ids(w, mx["name"])
    with open(mx["behaviour_file"], "w") as f:
        f.write('{"mail": ')
    c = connect(mx)
    c.ehlo()
    assert c.mail("a@example.org")[0] == 250
    c.quit()
    assert new_session(w, mx["name"], known)["behaviour_error"]

    # the scenario's own behaviour (set at up) survives an override: clear restores it
    h1 = w.scenario("two-mx-first-421")["mx"][0]
    assert h1["behaviour"] == {"greeting": "421 4.3.2 Service shutting down"}
    w.set_mx_behaviour(h1["name"])                                  # {} = normal
    c = connect(h1)
    assert c.ehlo()[0] == 250
    c.quit()
    p = subprocess.run(wp + ["mx-clear", "--dir", w.dir], capture_output=True, text=True)
    assert p.returncode == 0 and h1["behaviour_file"] in p.stdout.split()
    assert w.mx_behaviour(h1["name"]) == h1["behaviour"]
    with pytest.raises(smtplib.SMTPConnectError):
        connect(h1)


# --- REQUIRETLS (RFC 8689 §4): announced inside TLS only, by the hosts that say so ---------

def requiretls_session(h, tls=True):
    """(REQUIRETLS listed, reply to MAIL FROM with REQUIRETLS, the smtplib session)."""
    c = connect(h, starttls=tls)
    c.ehlo()
    return c.has_extn("requiretls"), c.docmd("MAIL FROM:<a@example.org> SIZE=100 REQUIRETLS"), c


def test_mx_requiretls(w, mx):
    hosts = {n: w.scenario(n)["mx"][0] for n in ("requiretls-dane", "requiretls-sts", "requiretls-sts-testing",
                                                 "requiretls-nopolicy")}
    assert all(h["requiretls"] for h in hosts.values())
    servers = {s["name"]: s for s in w.data["servers"] if s["role"] == "smtp"}
    assert all(servers[h["name"]]["requiretls"] for h in hosts.values())
    assert sum(bool(s["requiretls"]) for s in servers.values()) == len(hosts)    # the others do not
    for name, h in hosts.items():
        listed, reply, c = requiretls_session(h, tls=False)
        assert not listed and reply[0] == 555, (name, reply)                     # never in clear
        c.quit()
        listed, reply, c = requiretls_session(h)
        assert listed and reply[0] == 250, (name, reply)
        assert c.rcpt(w.scenario(name)["recipient"])[0] == 250
        marker = b"requiretls-%d" % time.time_ns()
        assert c.data(b"Subject: " + marker + b"\r\n\r\nbody\r\n")[0] == 250
        c.quit()
        m = [m for m in w.wait_for_messages(name) if marker in m["data_bytes"]]
        assert len(m) == 1 and m[0]["requiretls"] and m[0]["mail_options"] == ["SIZE=100", "REQUIRETLS"], m
    # An ordinary host: not listed in TLS either, the parameter is unknown; without it all is as before.
    listed, reply, c = requiretls_session(mx)
    assert not listed and reply[0] == 555
    assert c.mail("a@example.org", ["SIZE=10"])[0] == 250
    c.quit()
    # The behaviour key switches it: on for plain-mx (in TLS only), "always" (also in clear), off.
    w.set_mx_behaviour("plain-mx", requiretls=True)
    listed, reply, c = requiretls_session(mx, tls=False)
    assert (listed, reply) == (False, (555, b"MAIL FROM parameters not recognized or not implemented"))
    c.quit()
    listed, reply, c = requiretls_session(mx)
    assert listed and reply[0] == 250
    c.quit()
    w.set_mx_behaviour("plain-mx", requiretls="always")
    listed, reply, c = requiretls_session(mx, tls=False)
    assert listed and reply[0] == 250
    c.quit()
    dane = hosts["requiretls-dane"]
    w.set_mx_behaviour(dane["name"], requiretls=False)
    try:
        listed, reply, c = requiretls_session(dane)
        assert not listed and reply[0] == 555
        c.quit()
    finally:
        w.clear_mx_behaviour(dane["name"])
    listed, _, c = requiretls_session(dane)
    assert listed
    c.quit()
    for bad in ("yes", 1, "ALWAYS"):
        with pytest.raises(ValueError, match="requiretls must be"):
            w.set_mx_behaviour("plain-mx", requiretls=bad)
    # a scripted EHLO replaces the whole reply, REQUIRETLS included
    w.set_mx_behaviour("plain-mx", requiretls="always", ehlo=["250-mx.scripted.example", "250 8BITMIME"])
    c = connect(mx)
    c.ehlo()
    assert not c.has_extn("requiretls")
    c.quit()


# --- MX fallback and plain scenarios ---------------------------------------------------

def deliver_like_a_relay(w, scn, body):
    """Try the MX hosts in preference order, as RFC 5321 §5.1 says; return the host used."""
    sc = w.scenario(scn)
    for h in sorted(sc["mx"], key=lambda h: h["preference"]):
        try:
            c = connect(h, starttls=True)
        except (OSError, smtplib.SMTPException):
            continue
        c.ehlo()
        c.sendmail("a@example.org", [sc["recipient"]], body)
        c.quit()
        return h["name"]
    raise AssertionError(f"{scn}: no MX accepted")


def test_new_scenarios_dns_listeners_and_outcomes(w):
    down, d2 = w.scenario("two-mx-first-down")["mx"]
    f1, f2 = w.scenario("two-mx-first-421")["mx"]
    p1, p2 = w.scenario("plain-mx")["mx"][0], w.scenario("plain-mx2")["mx"][0]
    assert [(h["preference"], h["kind"]) for h in (down, d2, f1, f2)] == [
        (10, "down"), (20, "aiosmtpd-starttls"), (10, "aiosmtpd-starttls"), (20, "aiosmtpd-starttls")]
    assert down["name"] not in {s["name"] for s in w.data["servers"]}
    assert down["behaviour_file"] is None and down["verify"] == {"dane": None, "webpki": None}
    for name, via in [("two-mx-first-down", d2), ("two-mx-first-421", f2),
                      ("plain-mx", p1), ("plain-mx2", p2)]:
        sc = w.scenario(name)
        assert sc["mta_sts"] is None and sc["mx_mode"] == "mx" and sc["zone"] == "test."
        assert all(h["tlsa"] == [] and h["backend"] is None for h in sc["mx"])
        e = sc["expected"]
        assert (e["action"], e["status"], e["security"], e["tls"], e["via"]["host"]) == (
            "deliver", "2.0.0", "opportunistic", True, via["name"]), name
        mxs = classify(unbound_host(w, sc["domain"], "MX"))
        assert mxs[:2] == ("secure", "data") and len(mxs[2]) == len(sc["mx"])
        assert classify(unbound_host(w, "_mta-sts." + sc["domain"], "TXT"))[:2] == ("secure", "nxdomain")
        for h in sc["mx"]:
            assert classify(unbound_host(w, h["tlsa_name"], "TLSA"))[:2] == ("secure", "nxdomain")
    assert p1["address"] != p2["address"] and p1["name"] != p2["name"]
    # MX 10 of two-mx-first-down: in DNS, nothing listens
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((down["address"], 25), timeout=5)
    # MX 10 of two-mx-first-421: 421 greeting from its behaviour file, then close
    assert w.mx_behaviour(f1["name"]) == {"greeting": "421 4.3.2 Service shutting down"}
    s = socket.create_connection((f1["address"], 25), timeout=5)
    assert s.recv(4096) == b"421 4.3.2 Service shutting down\r\n" and s.recv(4096) == b""
    s.close()
    for h in (d2, f2, p1, p2):                    # the others: normal STARTTLS MX servers
        c = smtp_ehlo(h["address"])
        assert c.has_extn("starttls")
        c.quit()
    # a relay trying the MX hosts in order ends at the expected one, over TLS
    for name in ("two-mx-first-down", "two-mx-first-421", "plain-mx", "plain-mx2"):
        marker = b"fallback-%s-%d" % (name.encode(), time.time_ns())
        host = deliver_like_a_relay(w, name, b"Subject: " + marker + b"\r\n\r\nx\r\n")
        assert host == w.scenario(name)["expected"]["via"]["host"]
        m = [m for m in w.messages(name) if marker in m["data_bytes"]]
        assert len(m) == 1 and m[0]["tls"] and marker not in w.cleartext(name)
    assert w.messages(down["name"]) == [] and w.messages(f1["name"]) == []


def test_policy_combination_scenarios(w):
    """The expected outcomes of the DANE + MTA-STS and DNS-failure scenarios, and the world
    behind them (policies, TLSA, certificates, attacker)."""
    def brief(name):
        sc = w.scenario(name)
        e = sc["expected"]
        return (e["action"], e["status"], e["security"], e["tls"], e["via"] and e["via"]["host"],
                (sc["mta_sts"] or {}).get("mode"))
    mx = lambda name: w.scenario(name)["mx"][0]
    assert brief("dane-malformed-tlsa") == ("deliver", "2.0.0", "dane", True, mx("dane-malformed-tlsa")["name"], None)
    assert brief("dane-aaaa-servfail") == ("deliver", "2.0.0", "dane", True, mx("dane-aaaa-servfail")["name"], None)
    assert brief("sts-testing-strip") == ("deliver", "2.0.0", "mta-sts-testing", False,
                                          mx("sts-testing-strip")["name"], "testing")
    assert brief("dane-unusable-sts") == ("deliver", "2.0.0", "mta-sts", True, mx("dane-unusable-sts")["name"], "enforce")
    assert brief("dane-unusable-sts-otherca") == ("defer", "4.7.5", None, None, None, "enforce")
    assert brief("dane-sts-mx-mismatch") == ("deliver", "2.0.0", "dane", True, mx("dane-sts-mx-mismatch")["name"], "enforce")
    for name in ("dane-unusable-sts", "dane-unusable-sts-otherca"):
        assert [t.split()[:3] for t in mx(name)["tlsa"]] == [["0", "1", "1"], ["1", "1", "1"]]
    assert mx("dane-unusable-sts-otherca")["certificate"]["variant"] == "otherca"
    assert w.scenario("dane-sts-mx-mismatch")["mta_sts"]["mx_patterns"] == ["mx.elsewhere.test"]
    h = mx("sts-testing-strip")
    assert h["kind"] == "attacker:strip-starttls" and h["tlsa"] == [] and h["verify"] == {"dane": None, "webpki": None}
    assert classify(unbound_host(w, h["tlsa_name"], "TLSA"))[:2] == ("secure", "nxdomain")


# --- attackers ----------------------------------------------------------------------

def read_reply(sock):
    buf = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", buf):
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def test_attack_strip_starttls(w):
    for scn in ("attack-strip-starttls", "attack-sts-strip-starttls", "attack-strip-nopolicy",
                "sts-testing-strip"):
        h = w.scenario(scn)["mx"][0]
        c = smtp_ehlo(h["address"])
        assert not c.has_extn("starttls")
        code, _ = c.docmd("STARTTLS")
        assert code == 502
        c.quit()
        real = smtp_ehlo(h["backend"]["address"])       # the MX behind offers it
        assert real.has_extn("starttls")
        real.quit()
        ev = [e["event"] for e in w.attacker_events(h["name"])]
        assert "stripped-starttls" in ev and "refused-starttls" in ev


def test_attack_starttls_454(w):
    h = w.scenario("attack-starttls-454")["mx"][0]
    c = smtp_ehlo(h["address"])
    assert c.has_extn("starttls")
    code, msg = c.docmd("STARTTLS")
    assert code == 454 and msg.startswith(b"4.7.0")
    c.quit()
    assert "refused-starttls" in [e["event"] for e in w.attacker_events(h["name"])]


def test_attack_mitm_certificate(w):
    h = w.scenario("attack-mitm-cert")["mx"][0]
    ca = w.data["pki"]["ca_file"]
    # a verifying client refuses the attacker's certificate...
    c = smtp_ehlo(h["address"])
    with pytest.raises(ssl.SSLCertVerificationError):
        c.starttls(context=ssl.create_default_context(cafile=ca))
    c.close()
    # ...a non-verifying one talks to the attacker, who forwards in clear to the real MX
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    c = smtp_ehlo(h["address"])
    c._host = h["name"]
    c.starttls(context=ctx)
    peer = x509.load_der_x509_certificate(c.sock.getpeercert(binary_form=True))
    assert "foreign CA" in peer.issuer.rfc4514_string()
    c.ehlo()
    marker = b"mitm-marker-%d" % time.time_ns()
    c.sendmail("a@example.org", [w.scenario("attack-mitm-cert")["recipient"]],
               b"Subject: " + marker + b"\r\n\r\nx\r\n")
    c.quit()
    assert marker in w.cleartext(h["backend"]["name"])     # the real MX got it in clear
    ev = wait_events(w, h["name"], {"tls-terminated", "tls-handshake-failed"})
    assert ev["tls-terminated"]["sni"] == h["name"] and "tls-handshake-failed" in ev


def wait_events(w, host, wanted, timeout=5.0):
    """Attacker events by kind, once all ``wanted`` kinds were logged (or timeout)."""
    end = time.monotonic() + timeout
    while True:
        ev = {e["event"]: e for e in w.attacker_events(host)}
        if wanted <= set(ev) or time.monotonic() > end:
            return ev
        time.sleep(0.05)


def test_attack_inject_after_220(w):
    h = w.scenario("attack-inject")["mx"][0]
    s = socket.create_connection((h["address"], 25), timeout=10)
    read_reply(s)
    s.sendall(b"EHLO selfcheck.example\r\n")
    assert b"STARTTLS" in read_reply(s)
    s.sendall(b"STARTTLS\r\n")
    time.sleep(0.2)
    data = s.recv(4096)
    s.close()
    first, rest = data.split(b"\r\n", 1)
    assert first.startswith(b"220")
    assert rest.startswith(b"250-injected"), data      # plaintext after the 220, same read
    assert "injected" in [e["event"] for e in w.attacker_events(h["name"])]


def test_attack_inject_passes_tls_through(w):
    """After injecting, the attacker relays the handshake to the real MX (DANE would verify)."""
    h = w.scenario("attack-inject")["mx"][0]
    res, out = s_client(h["address"], ["-dane_tlsa_domain", h["name"], "-dane_ee_no_namechecks",
                                       "-dane_tlsa_rrdata", h["tlsa"][0]])
    # openssl silently drops the injected bytes: DANE alone does not reveal the attack
    assert res == "ok", out
    assert "injected" in [e["event"] for e in w.attacker_events(h["name"])]


# --- MTA-STS policy hosts -----------------------------------------------------------------

def https_get(w, sc, path="/.well-known/mta-sts.txt", timeout=5):
    sts = sc["mta_sts"]
    ctx = ssl.create_default_context(cafile=w.data["pki"]["ca_file"])
    conn = http.client.HTTPSConnection(sts["policy_host"], 443, context=ctx, timeout=timeout)
    # connect to the policy host's address, but verify its name
    conn.sock = ctx.wrap_socket(socket.create_connection((sts["address"], 443), timeout=timeout),
                                server_hostname=sts["policy_host"])
    conn.request("GET", path)
    r = conn.getresponse()
    return r, r.read()


def test_sts_default_policies(w):
    for sc in w.scenarios.values():
        if not sc["mta_sts"]:
            continue
        r, body = https_get(w, sc)
        assert r.status == 200 and r.getheader("Content-Type") == "text/plain"
        text = body.decode()
        assert text.endswith("\r\n") and f"mode: {sc['mta_sts']['mode']}\r\n" in text
        assert text.startswith("version: STSv1\r\n")
        if sc["mta_sts"]["mode"] != "none":
            for p in sc["mta_sts"]["mx_patterns"]:
                assert f"mx: {p}\r\n" in text
        txt = classify(unbound_host(w, "_mta-sts." + sc["domain"], "TXT"))
        assert txt[0] == "secure" and sc["mta_sts"]["id"] in "\n".join(txt[2])


def test_sts_behaviours(w):
    sc = w.scenario("sts-enforce")
    dom = sc["domain"]
    try:
        w.set_sts(dom, "lf")
        r, body = https_get(w, sc)
        assert r.status == 200 and b"\r" not in body and body.endswith(b"\n")

        w.set_sts(dom, "redirect")
        r, body = https_get(w, sc)
        assert r.status == 301 and r.getheader("Location").startswith(f"https://mta-sts.{dom}/")
        r2, body2 = https_get(w, sc, path=r.getheader("Location").split(dom, 1)[1])
        assert r2.status == 200 and b"mode: enforce" in body2     # following it would "work"

        w.set_sts(dom, "404")
        assert https_get(w, sc)[0].status == 404

        w.set_sts(dom, "content-type")
        r, body = https_get(w, sc)
        assert r.status == 200 and r.getheader("Content-Type") == "text/html"

        w.set_sts(dom, "oversize")
        r, body = https_get(w, sc)
        assert r.status == 200 and len(body) > 65536 and body.startswith(b"version: STSv1\r\n")

        w.set_sts(dom, "custom", body="version: STSv1\nmode: testing\nmax_age: 60\n",
                  content_type="text/plain; charset=utf-8")
        r, body = https_get(w, sc)
        assert body == b"version: STSv1\nmode: testing\nmax_age: 60\n"
        assert r.getheader("Content-Type") == "text/plain; charset=utf-8"

        w.set_sts(dom, "slow", delay=0.6)
        t = time.monotonic()
        r, body = https_get(w, sc)
        assert r.status == 200 and b"mode: enforce" in body
        assert time.monotonic() - t >= 0.5            # the body was trickled

        w.set_sts(dom, "close")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            https_get(w, sc)

        # the command-line interface does the same
        p = subprocess.run([sys.executable, world_mod.__file__, "sts-set", "--dir", w.dir, dom, "404"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert https_get(w, sc)[0].status == 404
    finally:
        w.set_sts(dom, "good")
    r, body = https_get(w, sc)
    assert r.status == 200 and b"mode: enforce\r\n" in body
    reqs = w.sts_requests(dom)
    assert {q["behaviour"] for q in reqs} >= {"lf", "redirect", "404", "oversize", "good"}
    assert all(q.get("sni") == f"mta-sts.{dom}" for q in reqs if q.get("status"))


def test_sts_certificate_names_policy_host(w):
    sc = w.scenario("sts-testing")
    ctx = ssl.create_default_context(cafile=w.data["pki"]["ca_file"])
    with pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(socket.create_connection((sc["mta_sts"]["address"], 443), timeout=5),
                        server_hostname="mta-sts.sts-enforce.test")


# --- IDN scenarios: A-label names throughout; one MX without SMTPUTF8 (RFC 6531) --------------

def test_idn_scenarios(w):
    hosts = {n: w.scenario(n)["mx"][0] for n in ("idn-dane", "idn-sts", "idn-no-smtputf8")}
    assert {n: (w.scenario(n)["domain"], w.scenario(n)["u_label"]) for n in hosts} == {
        "idn-dane": ("xn--bcher-kva.test", "bücher.test"), "idn-sts": ("xn--fa-hia.test", "faß.test"),
        "idn-no-smtputf8": ("xn--mller-kva.test", "müller.test")}
    for name, h in hosts.items():
        assert h["certificate"]["names"] == [h["name"]] and h["name"].startswith("mx.xn--"), (name, h["name"])
    assert w.scenario("idn-sts")["mta_sts"]["policy_host"] == "mta-sts.xn--fa-hia.test"
    servers = {s["name"]: s for s in w.data["servers"] if s["role"] == "smtp"}
    assert [n for n, s in servers.items() if not s["smtputf8"]] == ["mx.xn--mller-kva.test"]
    for name, h in hosts.items():
        c = connect(h, starttls=True)
        c.ehlo()
        offered = c.has_extn("smtputf8")
        reply = c.docmd("MAIL FROM:<a@example.org> SMTPUTF8")
        c.quit()
        assert offered == (name != "idn-no-smtputf8"), name
        assert reply[0] == (501 if name == "idn-no-smtputf8" else 250), (name, reply)


# --- lifecycle ------------------------------------------------------------------------------

def test_second_up_on_running_dir_fails(w):
    p = subprocess.run([sys.executable, world_mod.__file__, "up", "--dir", w.dir],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "already running" in p.stderr
    assert all(procs.ours(e) for e in w.pids().values())


def test_zz_down_leaves_nothing(w):
    pids = w.pids()
    assert set(pids) == {"nsd", "dnsfront", "mx", "sts", "attackers", "hostile", "postfix"}
    endpoints = [(s["address"], s["port"]) for s in w.data["servers"]] + [
        (w.data["dns"]["address"], 53), (w.data["dns"]["front"]["address"], 53)]
    w.down()
    assert not os.path.exists(w.dir)
    for e in pids.values():
        assert not procs.alive(e["pid"]) and not procs.session_members(e["pid"])
    ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    live = [l for l in ps.splitlines() if w.dir in l and not l.startswith("Z")]
    assert not live
    for addr, port in endpoints:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))          # raises if anything still listens
        s.close()
