"""Connection reuse (Postfix's connection cache): after a message, the connection to an MX
stays open and idle for connection_cache_time_limit seconds and the next message to the same
address under the same TLS policy goes on it (RFC 5321 §4.1.4: a new MAIL after the end of
data). Checked against the test world's DANE MX and against a small scripted SMTP server
that this file runs on the address of mx1.two-mx-first-down.test (where nothing else
listens), so that it can count connections and misbehave on a reused one.
"""
import asyncio
import re
import threading

import pytest

from relay import Relay, wait_for
from test_delivery_behaviour import attempts, send


def reuse_toml(world, cache_time):
    return world.relay_sections(
        dns_extra="timeout = 3\n",
        delivery_extra=f"min_backoff = 3600\nmax_backoff = 3600\nconnect_timeout = 5\ncommand_timeout = 10\n"
                       f"connection_cache_time_limit = {cache_time}\n")


class CountingMX:
    """An SMTP server without STARTTLS on ADDRESS:25 in a thread of its own. It records every
    connection (its commands) and every message; with drop_reused, a MAIL on a connection
    that already carried a message is answered by closing the connection."""

    def __init__(self, address, drop_reused=False):
        self.address = address
        self.drop_reused = drop_reused
        self.connections = []      # per connection: the command lines received
        self.messages = []         # (connection index, data bytes)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._session, self.address, 25))
        self.ready.set()
        self.loop.run_forever()
        server.close()

    async def _session(self, reader, writer):
        index = len(self.connections)
        commands = []
        self.connections.append(commands)
        carried = 0
        writer.write(b"220 mx1.two-mx-first-down.test ESMTP\r\n")
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line.strip().upper()
                commands.append(line.strip().decode())
                if verb.startswith(b"EHLO"):
                    writer.write(b"250-mx1.two-mx-first-down.test\r\n250 8BITMIME\r\n")
                elif verb.startswith(b"MAIL"):
                    if self.drop_reused and carried:
                        return
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb.startswith(b"RCPT"):
                    writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    data = b""
                    while not data.endswith(b"\r\n.\r\n"):
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        data += chunk
                    self.messages.append((index, data))
                    carried += 1
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 2.0.0 Ok\r\n")
                await writer.drain()
        finally:
            writer.close()


def mx1_address(world):
    return next(h["address"] for h in world.scenario("two-mx-first-down")["mx"] if h["preference"] == 10)


def sent_via(relay, recipient):
    return [a for a in attempts(relay, recipient) if a[2] == "sent"]


def relay_one(relay, recipient, body):
    """Submits one message and waits until the relay logs it sent."""
    send(relay, "sender@example.org", [recipient], body)
    assert wait_for(lambda: sent_via(relay, recipient), timeout=30), relay.log_text()[-2000:]


def test_second_message_goes_on_the_same_dane_authenticated_connection(world, tmp_path):
    relay = Relay(tmp_path / "relay", extra_toml=reuse_toml(world, 30)).start()
    try:
        relay_one(relay, "a@dane-ee.test", b"Subject: one\r\n\r\nreuse-token-1\r\n")
        relay_one(relay, "b@dane-ee.test", b"Subject: two\r\n\r\nreuse-token-2\r\n")
        log = relay.log_text()
        assert re.search(r"reusing the connection to mx\.dane-ee\.test\[[0-9.]+\]:25 \(conn_use=2, Verified TLS", log), log[-2000:]
        assert len(re.findall(r"Verified TLS connection established to mx\.dane-ee\.test", log)) == 1, log[-3000:]
    finally:
        relay.stop()
    received = {m["data_bytes"].split(b"reuse-token-")[1][:1]: m for m in world.messages("dane-ee") if b"reuse-token-" in m["data_bytes"]}
    assert set(received) == {b"1", b"2"}
    assert received[b"1"]["session"] == received[b"2"]["session"], "both messages in one SMTP session"
    session = next(s for s in world.sessions("dane-ee") if s["id"] == received[b"1"]["session"])
    assert session["tls"]
    assert b"reuse-token" not in session["cleartext"]


def test_idle_connection_is_reused_and_closed_with_quit_at_shutdown(world, tmp_path):
    with CountingMX(mx1_address(world)) as mx:
        relay = Relay(tmp_path / "relay", extra_toml=reuse_toml(world, 30)).start()
        try:
            for n in range(3):
                relay_one(relay, f"r{n}@two-mx-first-down.test", f"Subject: {n}\r\n\r\ncount-{n}\r\n".encode())
        finally:
            relay.stop()
        assert len(mx.connections) == 1, mx.connections
        assert [c for c, _ in mx.messages] == [0, 0, 0]
        assert sum(1 for line in mx.connections[0] if line.upper().startswith("EHLO")) == 1
        assert wait_for(lambda: mx.connections[0][-1:] == ["QUIT"], timeout=5), mx.connections[0]


def test_no_reuse_when_turned_off(world, tmp_path):
    with CountingMX(mx1_address(world)) as mx:
        relay = Relay(tmp_path / "relay", extra_toml=reuse_toml(world, 0)).start()
        try:
            for n in range(2):
                relay_one(relay, f"off{n}@two-mx-first-down.test", f"Subject: {n}\r\n\r\noff-{n}\r\n".encode())
        finally:
            relay.stop()
        assert len(mx.connections) == 2
        assert all(c[-1] == "QUIT" for c in mx.connections), mx.connections
        assert "reusing the connection" not in relay.log_text()


def test_connection_dropped_by_the_mx_while_idle_costs_nothing(world, tmp_path):
    """The MX closes the reused connection at MAIL (as one whose idle timeout ran out would):
    the message goes on a new connection to the same MX at once, not deferred, not to MX 20."""
    with CountingMX(mx1_address(world), drop_reused=True) as mx:
        relay = Relay(tmp_path / "relay", extra_toml=reuse_toml(world, 30)).start()
        try:
            relay_one(relay, "first@two-mx-first-down.test", b"Subject: 1\r\n\r\ndrop-1\r\n")
            send(relay, "sender@example.org", ["second@two-mx-first-down.test"], b"Subject: 2\r\n\r\ndrop-2\r\n")
            outcome = wait_for(lambda: attempts(relay, "second@two-mx-first-down.test"), timeout=30)
        finally:
            relay.stop()
        assert outcome and outcome[0][2] == "sent", outcome
        assert outcome[0][0].startswith("mx1.two-mx-first-down.test["), outcome
        assert len(mx.connections) == 2
        assert [c for c, _ in mx.messages] == [0, 1]
        assert mx.connections[0][-1].upper().startswith("MAIL FROM"), "the first connection died at the second MAIL"
