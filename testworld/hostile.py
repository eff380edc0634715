"""Hostile MX servers: SMTP peers that break the protocol on purpose (raw asyncio, no aiosmtpd).

Run as ``python3 hostile.py DIR``.  ONE process serves every ``world.json`` server of role
``hostile``: port 25 on its own loopback address (127.S.6.N), **one behaviour per address**.
None offers STARTTLS; every other reply is honest unless the behaviour says otherwise.  An
honest session is: greeting ``220 <host> ESMTP``, EHLO reply ``250-<host>`` ``250-8BITMIME``
``250 ENHANCEDSTATUSCODES`` (no PIPELINING, no SIZE), HELO, MAIL ``250 2.1.0``, RCPT
``250 2.1.5``, DATA ``354``, the message (dot-unstuffed) answered ``250 2.0.0 ok: queued as
<id>``, RSET, NOOP, QUIT ``221``, anything else ``502 5.5.2``.  Replies to a batch of
commands that arrived together go out in one write (one TCP segment: asyncio sets
TCP_NODELAY), as a pipelining server's would.

Behaviours (``BEHAVIOURS``):

``honest``                   the session above (what a switch file turns a host into)
``early-250-same-segment``   DATA is answered ``354 go\\r\\n250 2.0.0 ok\\r\\n`` in ONE write: the
                             final reply before any message data (RFC 5321 §4.1.1.4, §4.2).
                             The data is still read; a message completed by the dot is recorded
                             (``early_reply: true``) and gets no further reply
``early-250-midbody``        DATA: ``354``, one line of the message is read, then
                             ``250 2.0.0 ok`` is sent and, 0.5 s later, the connection is reset
                             (RST: SO_LINGER 0); nothing is recorded.  The listener has a small
                             receive buffer (``MIDBODY_RCVBUF``); a message larger than what the
                             client's send buffer holds (a few MB) is still being written when
                             the 250 arrives.  (A small message is all written before the 250
                             comes: no client can tell that 250 from an honest one.)
``unsolicited-nopipelining`` no PIPELINING offered; MAIL is answered ``250 2.1.0 ok\\r\\n250
                             unsolicited\\r\\n`` in one write (a reply nobody asked for); after
                             that honest, except that every RCPT gets ``550 5.1.1 no such user``
                             (a client that took the surplus 250 for its RCPT reply would see
                             its recipient "accepted")
``unsolicited-pipelining``   offers PIPELINING; the replies to the batch holding MAIL (MAIL,
                             RCPT..., DATA if pipelined) get one surplus ``250 2.0.0 surplus``
                             appended, in the same write
``two-250-after-dot``        honest until the end of the data, then ``250 2.0.0 ok\\r\\n250
                             2.0.0 again\\r\\n`` in one write (the message is recorded)
``tarpit``                   accepts the TCP connection and never sends a byte; reads (and
                             logs) what arrives until the client closes
``slow-final``               honest, but waits ``delay`` seconds (option, default 20) after the
                             dot before the 250; the message is recorded at the dot
``control-bytes``            honest (accepts and records the message), but the greeting, the
                             first EHLO line and every reply text carry NUL, ESC ``\\x1b[31m``,
                             an OSC title sequence ``\\x1b]0;pwned\\x07``, DEL and invalid UTF-8
                             ``\\xff\\xfe`` (``CONTROL_PAYLOAD``); a recipient whose local
                             part starts with ``reject`` gets ``550 5.1.1 rejected`` + the bytes
``slowloris``                the greeting trickles one byte per second and never ends
                             (``220-`` continuation lines, no final line)
``endless-reply``            EHLO is answered with an endless stream of ``250-xxx...``
                             continuation lines (stops when the client closes, or after
                             ``ENDLESS_CAP`` bytes / ``ENDLESS_SECONDS``: then logged ``capped``)
``bad-code``                 honest greeting, then every reply is ``999 what``
``huge-size``                the EHLO reply offers ``SIZE 99999999999999999999999999``;
                             otherwise honest

Switch file ``DIR/hostile/<host>.switch.json`` (``set_behaviour`` / ``World.set_hostile``),
read at every connect: ``{"behaviour": NAME, "delay": SECONDS}`` replaces the address's
behaviour (and options) for the new connection; absent = the behaviour from ``world.json``.

What is recorded:

* ``DIR/hostile/<host>.jsonl``: one JSON line per event, in order (one process, one writer):
  ``connect`` (``peer``, ``behaviour``, ``open`` = connections open on this address now,
  this one included), ``recv`` (``line``: a command line, latin-1), ``send`` (``data``:
  the bytes written, latin-1; ``bytes``), ``data`` (end of message data: ``bytes``,
  ``complete``), ``message`` (``id``), ``early-reply``, ``surplus``, ``waiting``
  (slow-final), ``reset``, ``endless`` / ``slowloris`` (summary: ``bytes``, ``capped``),
  ``close`` (``reason``, ``open`` after it, ``bytes_in``, ``bytes_out``).  Every event has
  ``time``, ``server``, ``address``, ``session``.
* ``DIR/mx/<host>/msg-<id>.json`` and ``session-<id>.json`` in the format of mx.py (so
  ``World.messages`` / ``World.sessions`` / ``World.cleartext`` work): a message has
  ``data_b64`` (exact bytes, dot-unstuffed), ``mail_from``, ``rcpt_tos``, ``mail_options``,
  ``tls`` (always false), ``via`` ``"hostile"``, ``behaviour``, ``early_reply``; a session
  has ``cleartext_b64`` (every byte the client sent), ``commands``, ``transcript``,
  ``behaviour``, ``messages``, ``closed``.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import socket
import struct
import time

import service

log = logging.getLogger("hostile")

BEHAVIOURS = ("honest", "early-250-same-segment", "early-250-midbody", "unsolicited-nopipelining",
              "unsolicited-pipelining", "two-250-after-dot", "tarpit", "slow-final",
              "control-bytes", "slowloris", "endless-reply", "bad-code", "huge-size")
DEFAULT_OPTIONS = {"slow-final": {"delay": 20}}
OPTION_KEYS = ("delay",)
CONTROL_PAYLOAD = b"\x00 \x1b[31mred\x1b[0m \x1b]0;pwned\x07 \x7f \xff\xfe"
HUGE_SIZE = b"99999999999999999999999999"
ENDLESS_CAP = 64 * 1024 * 1024
ENDLESS_SECONDS = 120
MIDBODY_RCVBUF = 32 * 1024
MAX_LINE = 1024 * 1024
MAX_MESSAGE = 64 * 1024 * 1024
TRANSCRIPT_MAX = 1000
_ids = itertools.count(1)


def _now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


# --- switch files (used by worldlib and world.py, not only by the server) ----------------

def _find_host(world: dict, what: str) -> dict:
    """A hostile host entry by DNS name, or the (first) MX of a scenario by name or domain."""
    what = what.rstrip(".").lower()
    for s in world["scenarios"].values():
        for h in s["mx"]:
            if h["name"] == what and h.get("hostile"):
                return h
    for s in world["scenarios"].values():
        if what in (s["name"], s["domain"]) and s["mx"] and s["mx"][0].get("hostile"):
            return s["mx"][0]
    raise ValueError(f"no hostile MX host or scenario {what!r}")


def validate_switch(spec) -> dict:
    if not isinstance(spec, dict):
        raise ValueError("switch must be a JSON object")
    unknown = set(spec) - {"behaviour", *OPTION_KEYS}
    if unknown:
        raise ValueError(f"unknown switch key(s) {', '.join(sorted(unknown))}")
    if spec.get("behaviour") not in BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}, not {spec.get('behaviour')!r}")
    if "delay" in spec and not (isinstance(spec["delay"], (int, float)) and spec["delay"] >= 0):
        raise ValueError("delay must be a number of seconds >= 0")
    return dict(spec)


def set_behaviour(world: dict, what: str, behaviour: str, **opts) -> str:
    """Write the switch file of a hostile host: from its next connection on it behaves as
    ``behaviour`` (with ``opts``, e.g. ``delay``); return the file's path."""
    h = _find_host(world, what)
    spec = validate_switch({"behaviour": behaviour, **opts})
    service.write_json_atomic(h["hostile"]["switch_file"], spec)
    return h["hostile"]["switch_file"]


def clear_behaviour(world: dict, what: str | None = None) -> list:
    """Remove the switch file of one host (or of all): back to the behaviour of ``world.json``."""
    hosts = ([_find_host(world, what)] if what is not None else
             [h for s in world["scenarios"].values() for h in s["mx"] if h.get("hostile")])
    done = []
    for path in sorted({h["hostile"]["switch_file"] for h in hosts}):
        try:
            os.unlink(path)
            done.append(path)
        except FileNotFoundError:
            pass
    return done


def read_events(path: str) -> list:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def max_open(events: list) -> int:
    """The most connections open at the same time, from a host's events."""
    return max([e["open"] for e in events if e["event"] == "connect"] or [0])


# --- the server -------------------------------------------------------------------------

class Closed(Exception):
    """The session is over (client EOF, reset, or the server closed it)."""


class HostileServer:
    """One address: its behaviour, counters, event log."""

    def __init__(self, server: dict):
        self.server = server
        self.name = server["name"]
        self.open = 0
        os.makedirs(os.path.dirname(server["log"]), exist_ok=True)
        os.makedirs(server["records_dir"], exist_ok=True)

    def current(self):
        """(behaviour, options) for a new connection: the switch file, else world.json."""
        behaviour = self.server["behaviour"]
        opts = dict(self.server.get("options") or {})
        err = None
        try:
            with open(self.server["switch_file"]) as f:
                spec = validate_switch(json.load(f))
            behaviour = spec.pop("behaviour")
            opts = {**DEFAULT_OPTIONS.get(behaviour, {}), **spec}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            err = str(e)
        return behaviour, opts, err

    def event(self, session, event, **kw):
        rec = {"time": time.time(), "server": self.name, "address": self.server["address"],
               "session": session, "event": event, **kw}
        with open(self.server["log"], "a") as f:      # reopened: World.clear_records unlinks it
            f.write(json.dumps(rec) + "\n")

    async def handle(self, reader, writer):
        self.open += 1
        s = Session(self, reader, writer)
        try:
            await s.run()
        finally:
            self.open -= 1
            s.finish()


class Session:
    def __init__(self, srv: HostileServer, reader, writer):
        self.srv, self.r, self.w = srv, reader, writer
        self.id = "%d-%04d" % (time.time_ns() // 1000, next(_ids))
        self.behaviour, self.opts, err = srv.current()
        self.host = srv.server["banner"].encode()
        self.buf = b""
        self.out = []
        self.cleartext = bytearray()
        self.bytes_out = 0
        self.commands, self.transcript, self.messages = [], [], []
        self.greeted = False
        self.surplus_due = False
        self.close_reason = None
        self.peer = list(writer.get_extra_info("peername") or [])
        self.started = _now()
        self.reset_transaction()
        self.event("connect", peer=self.peer, behaviour=self.behaviour, options=self.opts,
                   open=srv.open, switch_error=err)

    def event(self, event, **kw):
        self.srv.event(self.id, event, **kw)

    def note(self, who, line: bytes):
        if len(self.transcript) < TRANSCRIPT_MAX:
            self.transcript.append(f"{who}: {line[:512].decode('latin-1')}")

    def reset_transaction(self):
        self.mail_from, self.mail_options, self.rcpts = None, [], []

    # --- records ------------------------------------------------------------------------
    def save_session(self, closed=False):
        d = {"id": self.id, "server": self.srv.name, "via": "hostile", "behaviour": self.behaviour,
             "options": self.opts, "peer": self.peer, "started": self.started,
             "ended": _now() if closed else None, "closed": closed, "tls": False,
             "tls_version": None, "cipher": None, "sni": None, "starttls_command": False,
             "tls_bytes": 0, "messages": self.messages, "commands": self.commands,
             "transcript": self.transcript, "scripted": [], "dropped": None,
             "behaviour_error": None, "close_reason": self.close_reason,
             "cleartext_b64": base64.b64encode(bytes(self.cleartext)).decode(),
             "cleartext_len": len(self.cleartext)}
        service.write_json_atomic(os.path.join(self.srv.server["records_dir"],
                                               f"session-{self.id}.json"), d)

    def record_message(self, data: bytes, **extra) -> str:
        mid = "%d-%04d" % (time.time_ns() // 1000, next(_ids))
        msg = {"id": mid, "session": self.id, "received_at": _now(),
               "mail_from": self.mail_from, "rcpt_tos": list(self.rcpts),
               "mail_options": self.mail_options, "rcpt_options": [],
               "data_b64": base64.b64encode(data).decode(),
               "data": data.decode("utf-8", "replace"), "size": len(data),
               "server": self.srv.name, "via": "hostile", "behaviour": self.behaviour,
               "peer": self.peer, "helo": None, "tls": False, "tls_version": None,
               "cipher": None, "sni": None, "early_reply": False}
        msg.update(extra)
        service.write_json_atomic(os.path.join(self.srv.server["records_dir"], f"msg-{mid}.json"), msg)
        self.messages.append(mid)
        self.event("message", id=mid, size=len(data), rcpt_tos=list(self.rcpts), **extra)
        self.save_session()
        return mid

    def finish(self):
        self.event("close", reason=self.close_reason, open=self.srv.open,
                   bytes_in=len(self.cleartext), bytes_out=self.bytes_out)
        self.save_session(closed=True)
        try:
            self.w.close()
        except Exception:
            pass

    # --- I/O ----------------------------------------------------------------------------
    async def fill(self):
        try:
            data = await self.r.read(65536)
        except (ConnectionError, OSError) as e:
            self.close_reason = self.close_reason or f"read error: {e}"
            raise Closed
        if not data:
            self.close_reason = self.close_reason or "client closed"
            raise Closed
        self.cleartext += data
        self.buf += data
        if len(self.buf) > MAX_LINE and b"\n" not in self.buf:
            self.close_reason = "line too long"
            raise Closed

    async def readline(self) -> bytes:
        while b"\n" not in self.buf:
            await self.fill()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def has_line(self) -> bool:
        return b"\n" in self.buf

    async def write(self, data: bytes, log_it=True):
        try:
            self.w.write(data)
            self.bytes_out += len(data)
            if log_it:
                self.event("send", data=data.decode("latin-1"), bytes=len(data))
                for line in data.split(b"\r\n"):
                    if line:
                        self.note("S", line)
            await self.w.drain()
        except (ConnectionError, OSError) as e:
            self.close_reason = self.close_reason or f"write error: {e}"
            raise Closed

    def reply(self, code: bytes, *texts: bytes):
        """Queue one (multi-line) reply; ``flush`` writes what is queued in one write."""
        if self.behaviour == "bad-code":
            code, texts = b"999", (b"what",)
        elif self.behaviour == "control-bytes":
            texts = (texts[0] + b" " + CONTROL_PAYLOAD,) + texts[1:]
        lines = [code + (b"-" if i < len(texts) - 1 else b" ") + t for i, t in enumerate(texts)]
        self.out.append(b"".join(l + b"\r\n" for l in lines))

    async def flush(self):
        if self.surplus_due:
            self.surplus_due = False
            self.out.append(b"250 2.0.0 surplus\r\n")
            self.event("surplus")
        if self.out:
            data, self.out = b"".join(self.out), []
            await self.write(data)

    async def reset_connection(self):
        """Abort with RST (SO_LINGER 0)."""
        sock = self.w.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.event("reset")
        self.close_reason = "server reset the connection"
        self.w.transport.abort()
        raise Closed

    # --- the session --------------------------------------------------------------------
    async def run(self):
        try:
            if self.behaviour == "tarpit":
                await self.tarpit()
            elif self.behaviour == "slowloris":
                await self.slowloris()
            else:
                g = b"220 " + self.host + b" ESMTP"
                if self.behaviour == "control-bytes":
                    g += b" " + CONTROL_PAYLOAD
                await self.write(g + b"\r\n")
                await self.command_loop()
        except Closed:
            pass
        except Exception as e:              # a bug here must not kill the other sessions
            log.exception("%s: session %s", self.srv.name, self.id)
            self.close_reason = f"server error: {e!r}"

    async def tarpit(self):
        while True:
            await self.fill()
            self.event("recv-raw", data=self.buf.decode("latin-1")[:1000])
            self.buf = b""

    async def slowloris(self):
        async def trickle():
            line = b"220-" + self.host + b" is very slow today\r\n"
            n = 0
            try:
                for b in itertools.cycle(line):
                    await self.write(bytes([b]), log_it=False)
                    n += 1
                    await asyncio.sleep(1)
            finally:
                self.event("slowloris", bytes=n)
        t = asyncio.ensure_future(trickle())
        try:
            while not t.done():
                reader = asyncio.ensure_future(self.fill())
                done, _ = await asyncio.wait({t, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reader.result()         # raises Closed at EOF
                    self.event("recv-raw", data=self.buf.decode("latin-1")[:1000])
                    self.buf = b""
                else:
                    reader.cancel()
            t.result()
        finally:
            t.cancel()

    async def endless(self):
        """An EHLO reply that never ends."""
        chunk = (b"250-" + b"x" * 60 + b"\r\n") * 1024
        sent, capped = 0, False
        end = time.monotonic() + ENDLESS_SECONDS
        reader = asyncio.ensure_future(self.fill())
        try:
            await self.write(b"250-" + self.host + b"\r\n")
            while not reader.done():
                if sent >= ENDLESS_CAP or time.monotonic() > end:
                    capped = True
                    break
                w = asyncio.ensure_future(self.write(chunk, log_it=False))
                done, _ = await asyncio.wait({w, reader}, return_when=asyncio.FIRST_COMPLETED)
                if w not in done:
                    w.cancel()
                    break
                w.result()
                sent += len(chunk)
        except Closed:
            pass
        finally:
            if reader.done() and not reader.cancelled():
                reader.exception()          # Closed at EOF: retrieved, not reported
            reader.cancel()
            self.event("endless", bytes=sent, capped=capped,
                       client_closed=bool(self.close_reason and "client" in self.close_reason))
        self.close_reason = self.close_reason or "capped"
        raise Closed

    async def command_loop(self):
        while True:
            line = await self.readline()
            await self.command(line)
            if not self.has_line():
                await self.flush()

    async def command(self, line: bytes):
        text = line.rstrip(b"\r\n")
        self.commands.append(text.decode("latin-1"))
        self.note("C", text)
        self.event("recv", line=text.decode("latin-1"))
        verb, _, arg = text.partition(b" ")
        verb = verb.upper()
        b = self.behaviour
        if verb == b"EHLO":
            if b == "endless-reply":
                await self.flush()
                await self.endless()
            ext = [b"8BITMIME", b"ENHANCEDSTATUSCODES"]
            if b == "unsolicited-pipelining":
                ext.append(b"PIPELINING")
            if b == "huge-size":
                ext.append(b"SIZE " + HUGE_SIZE)
            self.greeted = True
            self.reset_transaction()
            self.reply(b"250", self.host + b" hello", *ext)
        elif verb == b"HELO":
            self.greeted = True
            self.reset_transaction()
            self.reply(b"250", self.host)
        elif verb == b"MAIL":
            if not self.greeted:
                self.reply(b"503", b"5.5.1 EHLO first")
            elif self.mail_from is not None:
                self.reply(b"503", b"5.5.1 nested MAIL")
            elif not arg.upper().startswith(b"FROM:"):
                self.reply(b"501", b"5.5.4 syntax: MAIL FROM:<address>")
            else:
                rest = arg[5:].strip()
                addr, _, params = rest.partition(b" ")
                self.mail_from = addr.strip(b"<>").decode("latin-1")
                self.mail_options = params.decode("latin-1").split()
                if b == "unsolicited-nopipelining":
                    self.out.append(b"250 2.1.0 ok\r\n250 unsolicited\r\n")
                    self.event("surplus")
                else:
                    self.reply(b"250", b"2.1.0 ok")
                if b == "unsolicited-pipelining":
                    self.surplus_due = True
        elif verb == b"RCPT":
            if self.mail_from is None:
                self.reply(b"503", b"5.5.1 MAIL first")
            elif b == "unsolicited-nopipelining":
                self.reply(b"550", b"5.1.1 no such user")
            elif b == "control-bytes" and arg[3:].strip().lstrip(b"<").lower().startswith(b"reject"):
                self.reply(b"550", b"5.1.1 rejected")
            else:
                addr = arg[3:].strip() if arg.upper().startswith(b"TO:") else arg
                self.rcpts.append(addr.partition(b" ")[0].strip(b"<>").decode("latin-1"))
                self.reply(b"250", b"2.1.5 ok")
        elif verb == b"DATA":
            if not self.rcpts:
                self.reply(b"503", b"5.5.1 RCPT first")
            else:
                await self.data_phase()
        elif verb == b"RSET":
            self.reset_transaction()
            self.reply(b"250", b"2.0.0 ok")
        elif verb == b"NOOP":
            self.reply(b"250", b"2.0.0 ok")
        elif verb == b"QUIT":
            self.reply(b"221", b"2.0.0 bye")
            await self.flush()
            self.close_reason = "quit"
            raise Closed
        else:
            self.reply(b"502", b"5.5.2 command not recognized")

    async def read_body(self):
        """The message data up to the lone dot: (unstuffed bytes, complete)."""
        lines, size = [], 0
        while True:
            try:
                line = await self.readline()
            except Closed:
                self.event("data", bytes=size, complete=False)
                raise
            if line in (b".\r\n", b".\n"):
                data = b"".join(lines)
                self.event("data", bytes=len(data), complete=True)
                return data
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)
            size += len(line)
            if size > MAX_MESSAGE:
                self.close_reason = "message too large"
                raise Closed

    async def data_phase(self):
        b = self.behaviour
        if b == "early-250-same-segment":
            self.out.append(b"354 go\r\n250 2.0.0 ok\r\n")
            self.event("early-reply")
            await self.flush()
            data = await self.read_body()
            self.record_message(data, early_reply=True)
            self.reset_transaction()
            return
        self.reply(b"354", b"go ahead")
        await self.flush()
        if b == "early-250-midbody":
            first = await self.readline()
            self.event("body-line", line=first.decode("latin-1")[:200])
            await self.write(b"250 2.0.0 ok\r\n")
            self.event("early-reply")
            await asyncio.sleep(0.5)
            await self.reset_connection()
        data = await self.read_body()
        mid = self.record_message(data)
        if b == "slow-final":
            delay = float(self.opts.get("delay", DEFAULT_OPTIONS["slow-final"]["delay"]))
            self.event("waiting", delay=delay)
            await asyncio.sleep(delay)
        if b == "two-250-after-dot":
            self.out.append(b"250 2.0.0 ok\r\n250 2.0.0 again\r\n")
            self.event("surplus")
        else:
            self.reply(b"250", b"2.0.0 ok: queued as " + mid.encode())
        self.reset_transaction()
        await self.flush()


async def setup(world: dict):
    servers = []
    for s in world["servers"]:
        if s["role"] != "hostile":
            continue
        srv = HostileServer(s)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if s["behaviour"] == "early-250-midbody":
            # a small receive window (set before listen: inherited, and the window scale is
            # negotiated for it), so that a large message cannot vanish into socket buffers
            # before the early 250 arrives: the client is visibly still writing
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MIDBODY_RCVBUF)
        sock.bind((s["address"], s["port"]))
        servers.append(await asyncio.start_server(srv.handle, sock=sock))

    async def cleanup():
        for s in servers:
            s.close()
    return cleanup


if __name__ == "__main__":
    service.run("hostile", setup)
