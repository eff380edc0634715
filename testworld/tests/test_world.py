"""Self-check: the test world is what world.json claims it is.

One world for the module.  Every claim is checked with an independent tool:
libunbound (``unbound-host``) for DNSSEC status and data, ``openssl s_client``
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

import pytest

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
    world = World.up(d)
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
    for key in ('state_directory = "%s/relay-state"' % w.dir, 'listen = ["127.0.0.1:10025"]',
                'hostname = "relay.example.org"', 'allowed_clients = ["127.0.0.0/8", "::1/128"]',
                "max_message_size = 52428800", 'trust_anchor_file = "%s/dns/trust-anchor.ds"' % w.dir,
                "forwarders = []", 'stub_zones = [{ name = "test.", addresses = ["127.0.1.53@53"] }]',
                "port = 25", 'tls_ca_file = "%s/pki/ca.pem"' % w.dir):
        assert key in toml
    if sys.version_info >= (3, 11):
        import tomllib
        cfg = tomllib.loads(toml)
        assert set(cfg) == {"state_directory", "server", "dns", "delivery"}
    assert open(w.data["dns"]["trust_anchor_file"]).read().split()[2:4] == ["DS", str(
        int(open(w.data["dns"]["trust_anchor_file"]).read().split()[3]))] or True


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
                 "attack-inject", "attack-sts-strip-starttls", "dane-postfix"):
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
    if not lines and re.search(r"has no .* record", out):
        return status, "nodata", []
    return status, "data", lines


def all_lookups(w):
    items = []
    for s in w.scenarios.values():
        items.append((s["name"], "mx", s["lookups"]["mx"], None))
        for h in s["mx"]:
            items.append((s["name"], "a", h["lookups"]["a"], h))
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
            assert len(lines) == len(h["tlsa"]), (scn, out)
            for t in h["tlsa"]:
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
    assert by["sts-enforce"][0] == "ok"
    assert "certificate has expired" in by["sts-enforce-expired"][1]
    assert "hostname mismatch" in by["sts-enforce-wrongname"][1]
    assert "unable to get local issuer" in by["sts-enforce-otherca"][1] or \
        "self-signed certificate in certificate chain" in by["sts-enforce-otherca"][1]


# --- SMTP: STARTTLS offered or not, and what the MX records -------------------------

def smtp_ehlo(addr):
    s = smtplib.SMTP(addr, 25, local_hostname="selfcheck.example", timeout=10)
    s.ehlo()
    return s


def test_starttls_offered_as_claimed(w):
    for s in w.scenarios.values():
        for h in s["mx"]:
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
    for scn in ("attack-strip-starttls", "attack-sts-strip-starttls", "attack-strip-nopolicy"):
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
    issuer = dict(x[0] for x in ssl._ssl._test_decode_cert(_save_peer(c.sock))["issuer"])
    assert "foreign CA" in issuer["commonName"]
    c.ehlo()
    marker = b"mitm-marker-%d" % time.time_ns()
    c.sendmail("a@example.org", [w.scenario("attack-mitm-cert")["recipient"]],
               b"Subject: " + marker + b"\r\n\r\nx\r\n")
    c.quit()
    assert marker in w.cleartext(h["backend"]["name"])     # the real MX got it in clear
    ev = {e["event"]: e for e in w.attacker_events(h["name"])}
    assert ev["tls-terminated"]["sni"] == h["name"] and "tls-handshake-failed" in ev


def _save_peer(sslsock):
    der = sslsock.getpeercert(binary_form=True)
    f = tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False)
    f.write(ssl.DER_cert_to_PEM_cert(der))
    f.close()
    return f.name


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

        w.set_sts(dom, "slow", delay=1)
        t = time.monotonic()
        r, body = https_get(w, sc)
        assert r.status == 200 and b"mode: enforce" in body
        assert time.monotonic() - t >= 0.9            # the body was trickled

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


# --- lifecycle ------------------------------------------------------------------------------

def test_second_up_on_running_dir_fails(w):
    p = subprocess.run([sys.executable, world_mod.__file__, "up", "--dir", w.dir],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "already running" in p.stderr
    assert all(procs.ours(e) for e in w.pids().values())


def test_zz_down_leaves_nothing(w):
    pids = w.pids()
    assert set(pids) == {"nsd", "mx", "sts", "attackers", "postfix"}
    endpoints = [(s["address"], s["port"]) for s in w.data["servers"]] + [("127.0.1.53", 53)]
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
