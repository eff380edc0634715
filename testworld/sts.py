"""MTA-STS policy hosts (RFC 8461 §3.3): HTTPS on ``mta-sts.<domain>:443``.

Run as ``python3 sts.py DIR``.  Each policy host listens on its own address
with a test-CA certificate for its name and serves
``/.well-known/mta-sts.txt``.  What it serves is read, on *every* request,
from ``DIR/sts/<domain>.json`` (absent = ``good``), so tests can script the
server without restarting it:

=============  ==============================================================
behaviour      response
=============  ==============================================================
good / crlf    200 text/plain, the scenario's policy, CRLF line endings
lf             same with LF line endings (RFC 8461 §3.2 allows both)
redirect       301 to ``location`` (default: same host, another path that
               serves the good policy - a relay must not follow, §3.3)
404            404 Not Found
content-type   200 with the good policy but ``content_type`` (default text/html)
oversize       200 text/plain, good policy padded with unknown keys to > 64 KiB
slow           200 text/plain, body trickled over ``delay`` seconds (default 30)
custom         ``status`` (200), ``content_type`` (text/plain), ``body``
close          TCP/TLS connection closed without any response
=============  ==============================================================

Every request is appended to ``DIR/sts/<domain>.requests.jsonl``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time

import service

log = logging.getLogger("sts")
POLICY_PATH = "/.well-known/mta-sts.txt"
REDIRECTED_PATH = "/.well-known/mta-sts-redirected.txt"
BEHAVIOURS = ("good", "crlf", "lf", "redirect", "404", "content-type", "oversize",
              "slow", "custom", "close")
OVERSIZE = 70 * 1024


def set_behaviour(world: dict, domain: str, behaviour: str, **opts) -> str:
    """Write the behaviour file for ``domain`` (a domain or a scenario name)."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; choose from {', '.join(BEHAVIOURS)}")
    domain = domain.rstrip(".").lower()
    sc = world["scenarios"].get(domain) or next(
        (s for s in world["scenarios"].values() if s["domain"] == domain), None)
    if not sc or not sc["mta_sts"]:
        raise ValueError(f"{domain}: no MTA-STS scenario with that domain or name")
    spec = {"behaviour": behaviour}
    spec.update({k: v for k, v in opts.items() if v is not None})
    path = sc["mta_sts"]["behaviour_file"]
    service.write_json_atomic(path, spec)
    return path


def _policy(lines, eol="\r\n") -> bytes:
    return (eol.join(lines) + eol).encode()


def _response(status, reason, ctype, body, extra=()):
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}",
            "Connection: close", "Cache-Control: no-store"]
    if ctype:
        head.append(f"Content-Type: {ctype}")
    head += list(extra)
    return ("\r\n".join(head) + "\r\n\r\n").encode(), body


def respond(server: dict, path: str, spec: dict):
    """(head bytes, body bytes, seconds to trickle the body over) for one request."""
    lines = server["policy_lines"]
    b = spec.get("behaviour", "good")
    if path == REDIRECTED_PATH:
        return (*_response(200, "OK", "text/plain", _policy(lines)), 0)
    if path != POLICY_PATH:
        return (*_response(404, "Not Found", "text/plain", b"not found\n"), 0)
    if b in ("good", "crlf"):
        return (*_response(200, "OK", "text/plain", _policy(lines)), 0)
    if b == "lf":
        return (*_response(200, "OK", "text/plain", _policy(lines, "\n")), 0)
    if b == "redirect":
        loc = spec.get("location") or f"https://{server['name']}{REDIRECTED_PATH}"
        return (*_response(301, "Moved Permanently", "text/plain", b"moved\n",
                           [f"Location: {loc}"]), 0)
    if b == "404":
        return (*_response(404, "Not Found", "text/plain", b"not found\n"), 0)
    if b == "content-type":
        return (*_response(200, "OK", spec.get("content_type", "text/html"), _policy(lines)), 0)
    if b == "oversize":
        body = _policy(lines)
        pad = b"x-padding: " + b"a" * 1000 + b"\r\n"
        body += pad * (OVERSIZE // len(pad) + 1)
        return (*_response(200, "OK", "text/plain", body), 0)
    if b == "slow":
        return (*_response(200, "OK", "text/plain", _policy(lines)), float(spec.get("delay", 30)))
    if b == "custom":
        body = spec.get("body", "").encode()
        status = int(spec.get("status", 200))
        return (*_response(status, "Custom", spec.get("content_type", "text/plain"), body), 0)
    raise ValueError(f"unknown behaviour {b!r}")


def _read_spec(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"behaviour": "good"}


async def serve(server: dict):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server["cert"]["chain_file"], server["cert"]["key_file"])
    sni = {}
    ctx.sni_callback = lambda obj, name, _c: sni.__setitem__(id(obj), name)
    reqlog = server["behaviour_file"][:-len(".json")] + ".requests.jsonl"

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter):
        entry = {"time": time.time(), "peer": list(w.get_extra_info("peername") or [])}
        try:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            first, *headers = head.decode("latin-1").split("\r\n")
            method, path, _ = (first.split(" ") + ["", "", ""])[:3]
            spec = _read_spec(server["behaviour_file"])
            obj = w.get_extra_info("ssl_object")
            entry.update(method=method, path=path, behaviour=spec.get("behaviour", "good"),
                         sni=sni.pop(id(obj), None) if obj else None,
                         host=next((h.split(":", 1)[1].strip() for h in headers
                                    if h.lower().startswith("host:")), None))
            if spec.get("behaviour") == "close":
                entry["status"] = None
            else:
                hdr, body, delay = respond(server, path, spec)
                entry["status"] = int(hdr.split(b" ", 2)[1])
                w.write(hdr)
                if delay:
                    step = delay / max(len(body), 1)
                    for i in range(len(body)):
                        w.write(body[i:i + 1])
                        await w.drain()
                        await asyncio.sleep(step)
                else:
                    w.write(body)
                await w.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as e:
            entry["error"] = type(e).__name__
        finally:
            with open(reqlog, "a") as f:
                f.write(json.dumps(entry) + "\n")
            w.close()

    return await asyncio.start_server(handle, server["address"], server["port"], ssl=ctx,
                                      ssl_handshake_timeout=10)


async def setup(world: dict):
    servers = [await serve(s) for s in world["servers"] if s["role"] == "sts"]
    # the TLS-RPT HTTPS collector (tlsrpt_sink.py) runs in this process too
    import tlsrpt_sink
    servers += [await tlsrpt_sink.serve(s) for s in world["servers"] if s["role"] == "tlsrpt"]

    async def cleanup():
        for s in servers:
            s.close()
    return cleanup


if __name__ == "__main__":
    service.run("sts", setup)
