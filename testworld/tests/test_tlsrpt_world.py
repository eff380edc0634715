"""Self-check of the world's TLS-RPT parts (tlsrpt_sink.py): the ``_smtp._tls`` records are
secure and say what world.json claims, and the HTTPS collector (test-CA certificate, signed A
record) records every POST exactly and can be scripted to fail.

    python3 -m pytest -q testworld/tests/test_tlsrpt_world.py
"""
from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import pytest

import world as world_mod
from worldlib import World


@pytest.fixture(scope="module")
def w():
    parent = tempfile.mkdtemp(prefix="tlsrelay-tlsrpt-selfcheck-")
    os.chmod(parent, 0o755)
    world = World.up(os.path.join(parent, "world"), slot=world_mod.free_slot())
    yield world
    world.down()
    shutil.rmtree(parent, ignore_errors=True)


def unbound(w, name, rtype):
    p = subprocess.run(["unbound-host", "-C", w.data["dns"]["unbound_conf"], "-v", "-t", rtype, name],
                       capture_output=True, text=True, timeout=20)
    return p.stdout + p.stderr


def post(w, path, body=b"x", method="POST", server_hostname=None):
    c = w.data["tlsrpt"]["collector"]
    ctx = ssl.create_default_context(cafile=w.data["pki"]["ca_file"])
    sock = ctx.wrap_socket(socket.create_connection((c["address"], 443), timeout=5),
                           server_hostname=server_hostname or c["name"])
    conn = http.client.HTTPSConnection(c["name"], timeout=5)
    conn.sock = sock
    conn.request(method, path, body=body, headers={"Content-Type": "application/tlsrpt+gzip"})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def test_records_are_secure_and_as_claimed(w):
    t = w.data["tlsrpt"]
    assert "dane-ee.test" in t["records"] and "sts-enforce.test" in t["records"]
    assert "plain-mx2.test" in t["records"] and "plain-mx.test" not in t["records"]
    for domain, rec in t["records"].items():
        out = unbound(w, f"_smtp._tls.{domain}", "TXT")
        status = "insecure" if (domain + ".").endswith(w.data["dns"]["insecure_zone"]) else "secure"
        assert f'has TXT record "{rec["txt"]}" ({status})' in out, out
        usable = [u for u in rec["txt"].split("rua=", 1)[1].split(",") if u.startswith(("mailto:", "https://"))]
        assert usable == rec["rua"] and rec["ignored"] == [u for u in rec["txt"].split("rua=", 1)[1].split(",")
                                                            if u not in usable]
    assert t["records"]["dane-ta.test"]["ignored"] == ["tlsrpt@x.test"]
    out = unbound(w, t["collector"]["name"], "A")
    assert f'has address {t["collector"]["address"]} (secure)' in out, out


def test_collector_records_posts_and_can_fail(w):
    c = w.data["tlsrpt"]["collector"]
    body = bytes(range(256)) * 40
    assert post(w, "/tlsrpt/dane-ee.test", body) == 200
    (p,) = w.tlsrpt_posts("dane-ee")
    assert p["body"] == body and p["sni"] == c["name"] and p["method"] == "POST"
    assert p["header"]["content-type"] == "application/tlsrpt+gzip" and p["status"] == 200
    assert post(w, "/tlsrpt/dane-ee.test", method="GET", body=None) == 405
    assert post(w, "/elsewhere", b"x") == 404
    w.set_tlsrpt_collector(fail=2, status=503)
    try:
        assert [post(w, "/tlsrpt/sts-enforce.test") for _ in range(3)] == [503, 503, 200]
    finally:
        w.clear_tlsrpt_collector()
    assert [p["status"] for p in w.tlsrpt_posts("sts-enforce")] == [503, 503, 200]
    with pytest.raises(ssl.SSLCertVerificationError):      # the certificate names the collector only
        post(w, "/tlsrpt/x", server_hostname="mta-sts.sts-enforce.test")
    w.clear_records()
    assert w.tlsrpt_posts() == []
