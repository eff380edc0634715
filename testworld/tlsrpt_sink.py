"""TLS-RPT (RFC 8460) in the test world: the ``_smtp._tls`` records and the HTTPS collector.

Records (signed, in ``test.``; ``world.json`` ``tlsrpt.records``, built by ``plan()``):

* every scenario domain with TLSA records or an MTA-STS policy, and the no-policy domains
  in ``NO_POLICY``: ``v=TLSRPTv1; rua=mailto:tlsrpt@<domain>,https://<collector>/tlsrpt/<domain>``.
  The ``mailto:`` goes to the domain's own MX, so a report mail lands in that MX's
  recordings (``mx/<host>/msg-*.json``, behind an attacker: the real MX's) like any mail;
* ``MALFORMED`` domains: a URI without a scheme beside one good ``https:`` URI
  (RFC 8460 §3: the bad one is skipped, the good one still gets the report).

The collector ``tlsrpt-collector.test`` (A record in the signed zone, address 127.S.3.N
after the MTA-STS hosts, test-CA certificate for that name) is served by the ``sts.py``
process on port 443 (HTTPS only). It answers ``POST /tlsrpt/<anything>`` with
``200 OK`` (other methods: 405, other paths: 404) and records every request, POST or not,
as ``DIR/tlsrpt/https/post-<n>.json``: ``time``, ``peer``, ``sni``, ``method``, ``path``,
``host``, ``headers`` (list of ``[name, value]`` as sent), ``body_b64`` (exact bytes, after
chunked decoding), ``status``, ``error``. ``DIR/tlsrpt/collector.json``
(``{"fail": N, "status": 503}``), read at each request, makes the next N POSTs get
``status`` instead (N is counted down in the file; absent = always 200).
"""
from __future__ import annotations

import asyncio
import base64
import glob
import itertools
import json
import os
import ssl
import time

import scenarios as S
import service

COLLECTOR = f"tlsrpt-collector.{S.ZONE}"
PATH_PREFIX = "/tlsrpt/"
MAILBOX = "tlsrpt"                                      # local part of every mailto: rua
NO_POLICY = ("no-tls", "plain-mx2", "attack-strip-nopolicy")   # no TLSA, no MTA-STS
MALFORMED = ("dane-ta",)                                # rua=tlsrpt@x.test (no scheme),https://...
MAX_BODY = 4 * 1024 * 1024


def _record(domain: str, url: str, malformed: bool) -> dict:
    if malformed:
        bad = f"{MAILBOX}@x.{S.ZONE}"
        return {"txt": f"v=TLSRPTv1; rua={bad},{url}", "rua": [url], "ignored": [bad]}
    mailto = f"mailto:{MAILBOX}@{domain}"
    return {"txt": f"v=TLSRPTv1; rua={mailto},{url}", "rua": [mailto, url], "ignored": []}


def plan(d: str, pki, address: str, scenarios: dict) -> dict:
    """The ``tlsrpt`` section of world.json: the collector and every ``_smtp._tls`` record.
    ``scenarios`` = world.json's (built) scenarios."""
    certificate = pki.issue(COLLECTOR, COLLECTOR, "good")
    base = os.path.join(d, "tlsrpt")
    records = {}
    for name, sc in scenarios.items():
        policy = sc["mta_sts"] or any(h["tlsa"] for h in sc["mx"])
        if policy or name in NO_POLICY or name in MALFORMED:
            dom = sc["domain"]
            records[dom] = dict(_record(dom, f"https://{COLLECTOR}{PATH_PREFIX}{dom}", name in MALFORMED),
                                scenario=name)
    collector = {"name": COLLECTOR, "address": address, "port": 443,
                 "url_prefix": f"https://{COLLECTOR}{PATH_PREFIX}", "certificate": certificate,
                 "records_dir": os.path.join(base, "https"),
                 "behaviour_file": os.path.join(base, "collector.json")}
    return {"collector": collector, "mailbox": MAILBOX, "records": records}


def server_entry(section: dict) -> dict:
    """world.json ``servers`` entry (role ``tlsrpt``, served by sts.py)."""
    c = section["collector"]
    return {"role": "tlsrpt", "name": c["name"], "address": c["address"], "port": c["port"],
            "cert": c["certificate"], "records_dir": c["records_dir"],
            "behaviour_file": c["behaviour_file"]}


def zone_records(world: dict) -> list:
    """(owner, type, rdata) for zones.py: the collector's A record and every TXT record."""
    t = world["tlsrpt"]
    out = [(t["collector"]["name"], "A", t["collector"]["address"])]
    out += [(f"_smtp._tls.{dom}", "TXT", json.dumps(r["txt"])) for dom, r in sorted(t["records"].items())]
    return out


# --- test helpers (worldlib) ------------------------------------------------------------------

def set_collector(world: dict, fail: int, status: int = 503) -> str:
    path = world["tlsrpt"]["collector"]["behaviour_file"]
    service.write_json_atomic(path, {"fail": int(fail), "status": int(status)})
    return path


def clear_collector(world: dict) -> None:
    try:
        os.unlink(world["tlsrpt"]["collector"]["behaviour_file"])
    except FileNotFoundError:
        pass


def read_posts(world: dict) -> list:
    out = []
    for f in glob.glob(os.path.join(world["tlsrpt"]["collector"]["records_dir"], "post-*.json")):
        with open(f) as fh:
            out.append(json.load(fh))
    return sorted(out, key=lambda p: (p["time"], p["n"]))


# --- the collector -----------------------------------------------------------------------------

def _decide(behaviour_file: str) -> int:
    """Status for the next POST; counts a scripted failure down."""
    try:
        with open(behaviour_file) as f:
            spec = json.load(f)
    except (FileNotFoundError, ValueError):
        return 200
    if int(spec.get("fail", 0)) > 0:
        spec["fail"] = int(spec["fail"]) - 1
        service.write_json_atomic(behaviour_file, spec)
        return int(spec.get("status", 503))
    return 200


async def _read_body(r: asyncio.StreamReader, headers: list) -> bytes:
    h = {k.lower(): v for k, v in headers}
    if "chunked" in h.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await r.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return body
            body += await r.readexactly(size)
            await r.readexactly(2)
            if len(body) > MAX_BODY:
                raise ValueError("body too large")
    length = int(h.get("content-length", "0"))
    if length > MAX_BODY:
        raise ValueError("body too large")
    return await r.readexactly(length)


async def serve(server: dict):
    os.makedirs(server["records_dir"], exist_ok=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server["cert"]["chain_file"], server["cert"]["key_file"])
    sni = {}
    ctx.sni_callback = lambda obj, name, _c: sni.__setitem__(id(obj), name)
    counter = itertools.count(1)

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter):
        n = next(counter)
        record = os.path.join(server["records_dir"], f"post-{n:05d}.json")
        obj = w.get_extra_info("ssl_object")
        entry = {"n": n, "time": time.time(), "peer": list(w.get_extra_info("peername") or []),
                 "sni": sni.pop(id(obj), None) if obj else None, "method": None, "path": None,
                 "host": None, "headers": [], "body_b64": "", "status": None, "error": None}
        try:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            first, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = (first.split(" ") + ["", "", ""])[:3]
            headers = [[k.strip(), v.strip()] for k, _, v in (l.partition(":") for l in lines if l)]
            entry.update(method=method, path=path, headers=headers,
                         host=next((v for k, v in headers if k.lower() == "host"), None))
            body = await asyncio.wait_for(_read_body(r, headers), 10)
            entry["body_b64"] = base64.b64encode(body).decode()
            if method != "POST":
                status, reason = 405, "Method Not Allowed"
            elif not path.startswith(PATH_PREFIX):
                status, reason = 404, "Not Found"
            else:
                status = _decide(server["behaviour_file"])
                reason = "OK" if status == 200 else "Scripted"
            entry["status"] = status
            # recorded before the answer: a client that has its answer finds the record
            service.write_json_atomic(record, entry)
            text = f"{status} {reason}\n".encode()
            w.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: "
                    f"{len(text)}\r\nConnection: close\r\n\r\n".encode() + text)
            await w.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ssl.SSLError, ValueError) as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            service.write_json_atomic(record, entry)
        finally:
            w.close()

    return await asyncio.start_server(handle, server["address"], server["port"], ssl=ctx,
                                      ssl_handshake_timeout=10)
