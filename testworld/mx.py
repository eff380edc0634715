"""Recording SMTP servers: the MX hosts of the test world.

Run as ``python3 mx.py DIR``.  Serves every ``world.json`` server of role

* ``smtp``: an aiosmtpd server on ``address:25``, offering STARTTLS (RFC 3207)
  with the host's certificate chain, or no STARTTLS at all (no-TLS scenario);
* ``tap``: a transparent TCP recorder in front of the Postfix smtpd, so the
  Postfix MX gets the same cleartext transcript as the aiosmtpd ones;
* ``sink``: where Postfix relays what it received; records the message, taking
  the TLS facts from the ``Received:`` header Postfix added.

Every host records into ``DIR/mx/<host>/``:

* ``msg-<id>.json`` per message: mail_from, rcpt_tos, data_b64 (exact bytes),
  data (text, lossy), tls, tls_version, cipher, sni, helo, peer, session;
* ``session-<id>.json`` per TCP connection: cleartext_b64 = every byte the client
  sent *before* TLS started (or the whole session without TLS), tls, sni,
  messages.  A test can thus assert that no byte of a protected message ever
  arrived in clear (RFC 3207 §4.2, RFC 7672 §2.2).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import re
import ssl
import time

from aiosmtpd.smtp import SMTP

import service

log = logging.getLogger("mx")
_ids = itertools.count(1)
_SNI: dict = {}


def _now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


class SessionRecord:
    """One TCP connection as seen by an MX."""

    def __init__(self, server: str, records_dir: str):
        self.records_dir = records_dir
        self.id = "%d-%04d" % (time.time_ns() // 1000, next(_ids))
        self.data = {"id": self.id, "server": server, "peer": None, "started": _now(),
                     "ended": None, "closed": False, "tls": False, "tls_version": None,
                     "cipher": None, "sni": None, "starttls_command": False,
                     "tls_bytes": 0, "messages": []}
        self.cleartext = bytearray()

    def save(self):
        d = dict(self.data, cleartext_b64=base64.b64encode(bytes(self.cleartext)).decode(),
                 cleartext_len=len(self.cleartext))
        service.write_json_atomic(os.path.join(self.records_dir, f"session-{self.id}.json"), d)

    def close(self):
        self.data.update(closed=True, ended=_now())
        self.save()


def save_message(records_dir, session_id, envelope, extra) -> str:
    data = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
    mid = "%d-%04d" % (time.time_ns() // 1000, next(_ids))
    msg = {"id": mid, "session": session_id, "received_at": _now(),
           "mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
           "mail_options": list(envelope.mail_options), "rcpt_options": list(envelope.rcpt_options),
           "data_b64": base64.b64encode(data).decode(),
           "data": data.decode("utf-8", "replace"), "size": len(data)}
    msg.update(extra)
    service.write_json_atomic(os.path.join(records_dir, f"msg-{mid}.json"), msg)
    return mid


class RecordingSMTP(SMTP):
    """aiosmtpd SMTP that keeps the raw pre-TLS bytes and the TLS parameters."""

    def __init__(self, handler, record: SessionRecord, **kw):
        super().__init__(handler, **kw)
        self.record = record

    def connection_made(self, transport):
        tls_now = self._original_transport is not None
        super().connection_made(transport)
        if not tls_now:
            self.record.data["peer"] = list(transport.get_extra_info("peername") or [])
            return
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.record.data.update(tls=True, tls_version=sslobj.version(),
                                    cipher=sslobj.cipher()[0], sni=_SNI.pop(id(sslobj), None))

    def data_received(self, data: bytes):
        if self._original_transport is None:        # still cleartext
            self.record.cleartext += data
            if re.search(rb"(?im)^STARTTLS\r?$", bytes(data)):
                self.record.data["starttls_command"] = True
        else:
            self.record.data["tls_bytes"] += len(data)
        super().data_received(data)

    def connection_lost(self, exc):
        try:
            self.record.close()
        finally:
            super().connection_lost(exc)


class RecordingHandler:
    def __init__(self, server: dict):
        self.server = server

    async def handle_DATA(self, smtp: RecordingSMTP, session, envelope):
        r = smtp.record
        mid = save_message(self.server["records_dir"], r.id, envelope, {
            "server": self.server["name"], "via": "aiosmtpd", "peer": r.data["peer"],
            "helo": session.host_name, "tls": r.data["tls"], "tls_version": r.data["tls_version"],
            "cipher": r.data["cipher"], "sni": r.data["sni"]})
        r.data["messages"].append(mid)
        r.save()
        return f"250 2.0.0 Ok: queued as {mid}"


_RECEIVED_TLS = re.compile(rb"\(using (\S+) with cipher (\S+)")


class SinkHandler:
    """Behind Postfix: record what Postfix relays, TLS facts from its Received header."""

    def __init__(self, server: dict):
        self.server = server

    async def handle_DATA(self, smtp, session, envelope):
        data = envelope.content
        # Postfix prepends exactly one Received: header (folded lines start with white space).
        m = re.match(rb"Received: .*?\r\n(?![ \t])", data, re.S)
        received = m.group(0) if m else b""
        tls = _RECEIVED_TLS.search(received)
        original = data[len(received):]
        envelope.content = original
        save_message(self.server["records_dir"], None, envelope, {
            "server": self.server["name"], "via": "postfix",
            "postfix_received": received.decode("utf-8", "replace"),
            "tls": bool(tls), "tls_version": tls.group(1).decode() if tls else None,
            "cipher": tls.group(2).decode() if tls else None, "sni": None, "helo": None,
            "peer": None})
        return "250 2.0.0 Ok"


def tls_context(cert: dict) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert["chain_file"], cert["key_file"])
    ctx.sni_callback = lambda sslobj, name, _ctx: _SNI.__setitem__(id(sslobj), name)
    return ctx


async def serve_smtp(server: dict, handler):
    os.makedirs(server["records_dir"], exist_ok=True)
    os.makedirs(server.get("sessions_dir", server["records_dir"]), exist_ok=True)
    ctx = tls_context(server["cert"]) if server.get("starttls") else None
    loop = asyncio.get_running_loop()

    def factory():
        rec = SessionRecord(server["name"], server.get("sessions_dir", server["records_dir"]))
        return RecordingSMTP(handler, rec, hostname=server["banner"], tls_context=ctx,
                             require_starttls=False, data_size_limit=60 * 1024 * 1024,
                             enable_SMTPUTF8=True, decode_data=False, loop=loop,
                             ident="tlsrelay-testworld")
    return await loop.create_server(factory, server["address"], server["port"])


async def serve_tap(server: dict):
    """Transparent recorder: client bytes are cleartext until the upstream's 220 to STARTTLS."""
    os.makedirs(server["records_dir"], exist_ok=True)

    async def handle(cr, cw):
        rec = SessionRecord(server["name"], server["records_dir"])
        rec.data["peer"] = list(cw.get_extra_info("peername") or [])
        try:
            ur, uw = await asyncio.open_connection(*server["upstream"])
        except OSError as e:
            log.error("tap %s: upstream: %s", server["name"], e)
            cw.close()
            rec.close()
            return
        state = {"pending": False}

        async def up():
            while data := await cr.read(65536):
                if rec.data["tls"]:
                    rec.data["tls_bytes"] += len(data)
                else:
                    rec.cleartext += data
                    if re.search(rb"(?im)^STARTTLS\r?$", data):
                        state["pending"] = rec.data["starttls_command"] = True
                uw.write(data)
                await uw.drain()
            uw.close()

        async def down():
            while data := await ur.read(65536):
                if state["pending"] and not rec.data["tls"]:
                    code = data[:3]
                    if code == b"220":
                        rec.data["tls"] = True
                    state["pending"] = False
                cw.write(data)
                await cw.drain()
            cw.close()

        try:
            await asyncio.gather(up(), down())
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (cw, uw):
                w.close()
            rec.close()

    return await asyncio.start_server(handle, server["address"], server["port"])


async def setup(world: dict):
    servers = []
    for s in world["servers"]:
        if s["role"] == "smtp":
            servers.append(await serve_smtp(s, RecordingHandler(s)))
        elif s["role"] == "sink":
            servers.append(await serve_smtp(s, SinkHandler(s)))
        elif s["role"] == "tap":
            servers.append(await serve_tap(s))

    async def cleanup():
        for srv in servers:
            srv.close()
    return cleanup


if __name__ == "__main__":
    service.run("mx", setup)
