"""Recording SMTP servers: the MX hosts of the test world.

Run as ``python3 mx.py DIR``.  Serves every ``world.json`` server of role

* ``smtp``: an aiosmtpd server on ``address:25``, offering STARTTLS (RFC 3207)
  with the host's certificate chain, or no STARTTLS at all (no-TLS scenario);
* ``tap``: a transparent TCP recorder in front of the Postfix smtpd, so the
  Postfix MX gets the same cleartext transcript as the aiosmtpd ones;
* ``sink``: where Postfix relays what it received; records the message, taking
  the TLS facts from the ``Received:`` header Postfix added.

Every host records into ``DIR/mx/<host>/``:

* ``msg-<id>.json`` per message: mail_from, rcpt_tos, mail_options (the MAIL FROM
  parameters, upper-cased, e.g. ``["SIZE=123", "REQUIRETLS"]``), rcpt_options,
  requiretls (REQUIRETLS was among them), data_b64 (exact bytes),
  data (text, lossy), tls, tls_version, cipher, sni, helo, peer, session;
* ``session-<id>.json`` per TCP connection: cleartext_b64 = every byte the client
  sent *before* TLS started (or the whole session without TLS), tls, sni,
  messages.  A test can thus assert that no byte of a protected message ever
  arrived in clear (RFC 3207 §4.2, RFC 7672 §2.2).  Also ``transcript`` (the
  command lines and replies, TLS or not), ``scripted`` and ``dropped`` (below).

Scripted replies (role ``smtp`` only): ``DIR/mx/<server>/behaviour.json``,
re-read at connect, before every command and at the end of the message data
(absent or ``{}`` = normal).  All keys optional; a reply is one line
("450 4.2.0 Mailbox busy"), several lines separated by newlines, or a list of
lines; the continuation hyphens are set automatically.

=============  ===========================================================
greeting       sent instead of the 220 banner; non-2xx: then close
ehlo           replaces the EHLO reply (2xx: the session counts as greeted)
mail           reply to a syntactically valid MAIL FROM (2xx: accepted)
rcpt           {lower-cased address or local part or "*": reply}, the full
               address is looked up first (2xx: accepted); other recipients
               are answered normally
data           reply to DATA instead of 354 (3xx: the message is read)
data_end       reply after the message instead of 250; non-2xx: the
               message is not recorded, a 2xx line records it
drop_after     "greeting" | "ehlo" | "starttls" | "mail" | "rcpt" | "data" |
               "data_end": close the TCP connection (FIN, no TLS
               close_notify) where that reply would be sent, without it
requiretls     true | false | "always": overrides the server's own
               ``requiretls`` (below) for this host
=============  ===========================================================

REQUIRETLS (RFC 8689 §4): a server whose world.json entry has ``requiretls: true``
(scenarios.py ``Host(requiretls=True)``), or whose behaviour file says
``"requiretls": true``, lists ``REQUIRETLS`` in its EHLO reply inside TLS only (just
before the last line), and then accepts the bare ``REQUIRETLS`` MAIL FROM parameter,
recorded in the message's ``mail_options`` (and ``requiretls: true``).  ``"always"``
also announces and accepts it in clear: a broken server, meant for the real MX behind
an attacker (the attacker's TLS session is its cleartext one), so that a client fooled
by the attacker would visibly deliver.  Otherwise (default) REQUIRETLS is never listed
and the parameter gets aiosmtpd's ``555`` (unknown parameter).  A scripted ``ehlo``
reply replaces the whole reply, REQUIRETLS included.

SMTPUTF8 (RFC 6531): every server announces it (aiosmtpd ``enable_SMTPUTF8``) unless its
world.json entry says ``smtputf8: false`` (scenarios.py ``Host(smtputf8=False)``): then it is
not listed, ``MAIL ... SMTPUTF8`` gets ``501`` and a command line with non-ASCII bytes
``500 Error: strict ASCII mode`` (aiosmtpd's own replies).

Each use is appended to the session record's ``scripted`` list
(``{"at", "reply", "arg", "tls", "time"}``, ``at`` = key or ``drop_after``);
``dropped`` names the point of a ``drop_after``.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import re
import ssl
import time

from aiosmtpd.smtp import SMTP, syntax

import service

log = logging.getLogger("mx")
_ids = itertools.count(1)
_SNI: dict = {}


def _now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


# --- scripted replies ------------------------------------------------------------------

BEHAVIOUR_KEYS = ("greeting", "ehlo", "mail", "rcpt", "data", "data_end", "drop_after", "requiretls")
DROP_POINTS = ("greeting", "ehlo", "starttls", "mail", "rcpt", "data", "data_end")
_REPLY_LINE = re.compile(r"[2-5]\d\d(?:[ -][^\r\n]*)?")
TRANSCRIPT_MAX = 1000


def reply_lines(value) -> list:
    """A scripted reply as a list of wire lines (continuation hyphens set)."""
    lines = value.splitlines() if isinstance(value, str) else value
    if not isinstance(lines, (list, tuple)) or not lines or \
            not all(isinstance(x, str) for x in lines):
        raise ValueError(f"reply must be a string or a list of strings: {value!r}")
    out = []
    for i, line in enumerate(lines):
        line = line.rstrip("\r\n")
        if not _REPLY_LINE.fullmatch(line):
            raise ValueError(f"not an SMTP reply line (3-digit code 2xx-5xx first): {line!r}")
        if line[:3] != lines[0][:3]:
            raise ValueError(f"reply lines with different codes: {value!r}")
        sep = "-" if i < len(lines) - 1 else " "
        out.append(line[:3] + sep + line[4:] if len(line) > 3 else line[:3] + ("-" if sep == "-" else ""))
    return out


def validate_behaviour(spec) -> dict:
    """Check a behaviour spec; return it with ``rcpt`` keys lower-cased.  ValueError if bad."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ValueError("behaviour must be a JSON object")
    unknown = set(spec) - set(BEHAVIOUR_KEYS)
    if unknown:
        raise ValueError(f"unknown behaviour key(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(BEHAVIOUR_KEYS)}")
    out = {}
    for k, v in spec.items():
        if v is None:
            continue
        if k == "requiretls":
            if v is not True and v is not False and v != "always":
                raise ValueError(f"requiretls must be true, false or \"always\", not {v!r}")
        elif k == "drop_after":
            if v not in DROP_POINTS:
                raise ValueError(f"drop_after must be one of {', '.join(DROP_POINTS)}, not {v!r}")
        elif k == "rcpt":
            if not isinstance(v, dict):
                raise ValueError("rcpt must be an object {address or local part: reply}")
            for r, reply in v.items():
                reply_lines(reply)
            v = {str(r).lower(): reply for r, reply in v.items()}
        else:
            reply_lines(v)
        out[k] = v
    return out


def rcpt_reply(table: dict, address: str):
    """The scripted reply for a recipient: full address, then local part, then "*"."""
    a = address.lower()
    local = a.rsplit("@", 1)[0]
    for key in (a, local, "*"):
        if key in table:
            return table[key]
    return None


def _find_host(world: dict, what: str) -> dict:
    """An MX host entry by DNS name or backend name, or the receiving host of a scenario
    (by name or domain: the expected ``via`` host, else its first MX)."""
    what = what.rstrip(".").lower()
    for s in world["scenarios"].values():
        for h in s["mx"]:
            if what in (h["name"], (h.get("backend") or {}).get("name")):
                return h
    for s in world["scenarios"].values():
        if what in (s["name"], s["domain"]):
            via = (s["expected"].get("via") or {}).get("host")
            hosts = [h for h in s["mx"] if h["name"] == via] or s["mx"]
            if not hosts:
                raise ValueError(f"scenario {s['name']} has no MX host")
            return hosts[0]
    raise ValueError(f"no MX host or scenario {what!r}")


def _behaviour_file(h: dict) -> str:
    if not h.get("behaviour_file"):
        raise ValueError(f"{h['name']} ({h['kind']}) is not served by aiosmtpd: no scripted replies")
    return h["behaviour_file"]


def set_behaviour(world: dict, what: str, spec: dict) -> str:
    """Write the behaviour file of a host (or of a scenario's receiving host); return its path."""
    spec = validate_behaviour(spec)
    path = _behaviour_file(_find_host(world, what))
    service.write_json_atomic(path, spec)
    return path


def clear_behaviour(world: dict, what: str | None = None) -> list:
    """Restore the behaviour a host had at ``up`` (none, or the scenario's), for one host or
    scenario, or for every host if ``what`` is None; return the files rewritten or removed."""
    if what is None:
        hosts = [h for s in world["scenarios"].values() for h in s["mx"] if h.get("behaviour_file")]
    else:
        hosts = [_find_host(world, what)]
        _behaviour_file(hosts[0])
    done = []
    for h in hosts:
        path = h["behaviour_file"]
        if h.get("behaviour") is not None:
            service.write_json_atomic(path, h["behaviour"])
            done.append(path)
        else:
            try:
                os.unlink(path)
                done.append(path)
            except FileNotFoundError:
                pass
    return done


def install_behaviours(world: dict) -> None:
    """At ``up``: write the scenario-defined behaviour files."""
    for s in world["scenarios"].values():
        for h in s["mx"]:
            if h.get("behaviour") is not None:
                service.write_json_atomic(_behaviour_file(h), validate_behaviour(h["behaviour"]))


# --- recording --------------------------------------------------------------------------

class SessionRecord:
    """One TCP connection as seen by an MX."""

    def __init__(self, server: str, records_dir: str):
        self.records_dir = records_dir
        self.id = "%d-%04d" % (time.time_ns() // 1000, next(_ids))
        self.data = {"id": self.id, "server": server, "peer": None, "started": _now(),
                     "ended": None, "closed": False, "tls": False, "tls_version": None,
                     "cipher": None, "sni": None, "starttls_command": False,
                     "tls_bytes": 0, "messages": [], "scripted": [], "dropped": None,
                     "behaviour_error": None, "transcript": []}
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
           "requiretls": "REQUIRETLS" in [str(o).upper() for o in envelope.mail_options],
           "data_b64": base64.b64encode(data).decode(),
           "data": data.decode("utf-8", "replace"), "size": len(data)}
    msg.update(extra)
    service.write_json_atomic(os.path.join(records_dir, f"msg-{mid}.json"), msg)
    return mid


class RecordingSMTP(SMTP):
    """aiosmtpd SMTP that keeps the raw pre-TLS bytes and the TLS parameters, a transcript,
    and answers as its behaviour file says."""

    def __init__(self, handler, record: SessionRecord, behaviour_file=None, requiretls=False, **kw):
        super().__init__(handler, **kw)
        self.record = record
        self.behaviour_file = behaviour_file
        self.requiretls = requiretls    # world.json default; behaviour "requiretls" overrides
        self.behaviour: dict = {}
        self._capture = None            # list: replies are collected instead of sent
        self._replace = None            # (code prefix, lines, key): next such reply is replaced
        self._smtp_methods = {name: self._command(name, m) for name, m in self._smtp_methods.items()}

    # --- behaviour ----------------------------------------------------------------
    def reload_behaviour(self) -> dict:
        self.behaviour = {}
        if not self.behaviour_file:
            return self.behaviour
        try:
            with open(self.behaviour_file) as f:
                self.behaviour = validate_behaviour(json.load(f))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("%s: %s (ignored)", self.behaviour_file, e)
            self.record.data["behaviour_error"] = str(e)
        return self.behaviour

    @property
    def _in_tls(self) -> bool:
        return self._original_transport is not None

    def announces_requiretls(self) -> bool:
        """REQUIRETLS is listed in EHLO and accepted on MAIL FROM in this state (RFC 8689 §4:
        only inside TLS, unless the behaviour says "always")."""
        mode = self.behaviour.get("requiretls", self.requiretls)
        return mode == "always" or (mode is True and self._in_tls)

    def note_scripted(self, key, reply, arg=None, **extra):
        entry = {"at": key, "reply": reply, "arg": arg, "tls": self._in_tls, "time": _now()}
        entry.update(extra)
        self.record.data["scripted"].append(entry)
        self.record.save()

    def _note(self, who, line):
        t = self.record.data["transcript"]
        if len(t) < TRANSCRIPT_MAX:
            t.append(f"{who}: {line[:512]}")

    async def _send_scripted(self, key, lines, arg=None):
        self.note_scripted(key, "\r\n".join(lines), arg)
        for line in lines:
            self._note("S", line)
            await SMTP.push(self, line)

    async def drop(self, point, arg=None, **extra):
        """Close the TCP connection without a reply; the handler task is cancelled by
        connection_lost."""
        self.record.data["dropped"] = point
        self.note_scripted("drop_after", None, arg, point=point, **extra)
        (self._original_transport or self.transport).close()
        await asyncio.sleep(3600)

    async def push(self, status):
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        if self._capture is not None:
            self._capture.append(text)
            return
        if self._replace and text.startswith(self._replace[0]):
            _, lines, key = self._replace
            self._replace = None
            await self._send_scripted(key, lines)
            return
        for line in text.split("\r\n"):
            self._note("S", line)
        await super().push(status)

    async def _captured(self, coro) -> list:
        self._capture = []
        try:
            await coro
            return self._capture
        finally:
            self._capture = None

    def _command(self, name, method):
        point = {"EHLO": "ehlo", "HELO": "ehlo", "STARTTLS": "starttls", "MAIL": "mail",
                 "RCPT": "rcpt", "DATA": "data"}.get(name)

        async def run(arg):
            self._note("C", name if arg is None else f"{name} {arg}")
            self.reload_behaviour()
            if point and self.behaviour.get("drop_after") == point:
                await self.drop(point, arg)
                return
            await method(arg)
        for a in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
            if hasattr(method, a):
                setattr(run, a, getattr(method, a))
        return run

    async def _handle_client(self):
        self.reload_behaviour()
        if self.behaviour.get("drop_after") == "greeting":
            await self.drop("greeting")
            return
        if self.behaviour.get("greeting") is not None:
            lines = reply_lines(self.behaviour["greeting"])
            if not lines[0].startswith("2"):
                await self._send_scripted("greeting", lines)
                self.transport.close()
                return
            self._replace = ("220", lines, "greeting")
        await super()._handle_client()

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname):
        reply = self.behaviour.get("ehlo")
        if reply is None and hostname and self.announces_requiretls():
            lines = await self._captured(super().smtp_EHLO(hostname))
            lines.insert(len(lines) - 1, "250-REQUIRETLS")
            for line in lines:
                await self.push(line)
            return
        if reply is None or not hostname:
            return await super().smtp_EHLO(hostname)
        await self._captured(super().smtp_EHLO(hostname))
        lines = reply_lines(reply)
        if not lines[0].startswith("2"):
            self.session.host_name = None
            self.session.extended_smtp = False
        await self._send_scripted("ehlo", lines, hostname)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg):
        # A bare REQUIRETLS parameter is taken out before aiosmtpd parses the rest (it would
        # answer 555) when this server announces it, and recorded once MAIL is accepted.
        requiretls = False
        if arg and self.announces_requiretls() and ">" in arg:
            head, _, tail = arg.rpartition(">")
            kept = [p for p in tail.split() if p.upper() != "REQUIRETLS"]
            if len(kept) != len(tail.split()):
                requiretls, arg = True, head + ">" + "".join(" " + p for p in kept)
        env = self.envelope
        had = env is not None and env.mail_from is not None
        await self._mail(arg)
        env = self.envelope
        if requiretls and not had and env is not None and env.mail_from is not None:
            env.mail_options.append("REQUIRETLS")

    async def _mail(self, arg):
        reply = self.behaviour.get("mail")
        if reply is None:
            return await super().smtp_MAIL(arg)
        env = self.envelope
        had = env.mail_from is not None
        got = await self._captured(super().smtp_MAIL(arg))
        if had or env.mail_from is None:          # refused by aiosmtpd itself (syntax, nested)
            for line in got:
                await self.push(line)
            return
        lines = reply_lines(reply)
        if not lines[0].startswith("2"):
            env.mail_from = None
            env.mail_options.clear()
            env.smtp_utf8 = False
        await self._send_scripted("mail", lines, arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg):
        table = self.behaviour.get("rcpt")
        if not table:
            return await super().smtp_RCPT(arg)
        env = self.envelope
        n, no = len(env.rcpt_tos), len(env.rcpt_options)
        got = await self._captured(super().smtp_RCPT(arg))
        reply = rcpt_reply(table, env.rcpt_tos[-1]) if len(env.rcpt_tos) > n else None
        if reply is None:
            for line in got:
                await self.push(line)
            return
        lines = reply_lines(reply)
        if not lines[0].startswith("2"):
            del env.rcpt_tos[n:]
            del env.rcpt_options[no:]
        await self._send_scripted("rcpt", lines, arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg):
        reply = self.behaviour.get("data")
        if reply is None:
            return await super().smtp_DATA(arg)
        lines = reply_lines(reply)
        if lines[0].startswith("3"):
            self._replace = ("354", lines, "data")
            try:
                return await super().smtp_DATA(arg)
            finally:
                self._replace = None
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        self._set_post_data_state()
        await self._send_scripted("data", lines, arg)

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
        b = smtp.reload_behaviour()
        size = len(envelope.content)
        if b.get("drop_after") == "data_end":
            await smtp.drop("data_end", size=size, rcpt_tos=list(envelope.rcpt_tos))
        if b.get("data_end") is not None:
            lines = reply_lines(b["data_end"])
            if not lines[0].startswith("2"):
                smtp.note_scripted("data_end", "\r\n".join(lines), size=size,
                                   rcpt_tos=list(envelope.rcpt_tos))
                return "\r\n".join(lines)
        mid = save_message(self.server["records_dir"], r.id, envelope, {
            "server": self.server["name"], "via": "aiosmtpd", "peer": r.data["peer"],
            "helo": session.host_name, "tls": r.data["tls"], "tls_version": r.data["tls_version"],
            "cipher": r.data["cipher"], "sni": r.data["sni"]})
        r.data["messages"].append(mid)
        if b.get("data_end") is not None:        # a 2xx line: recorded, scripted text
            lines = reply_lines(b["data_end"])
            smtp.note_scripted("data_end", "\r\n".join(lines), size=size,
                               rcpt_tos=list(envelope.rcpt_tos), message=mid)
            return "\r\n".join(lines)
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
        return RecordingSMTP(handler, rec, behaviour_file=server.get("behaviour_file"),
                             requiretls=bool(server.get("requiretls")),
                             hostname=server["banner"], tls_context=ctx,
                             require_starttls=False, data_size_limit=60 * 1024 * 1024,
                             enable_SMTPUTF8=server.get("smtputf8", True), decode_data=False, loop=loop,
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
