"""DSNs through the upstream MTA (delivery.dsn_relay): a bounce goes back to the MTA that knows
the sender — in the README's topology the Postfix on the same host — never to the sender
domain's MX, never held to recipient TLS policy, and a DSN is never sent about a DSN."""
import socket
import time

from aiosmtpd.controller import Controller

from relay import Relay
from test_delivery_behaviour import attempts, send, wait_for


class Upstream:
    """The upstream MTA: records what it is sent; refuses RCPT for refuse@..."""

    def __init__(self):
        self.messages = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refuse@"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                              "data": envelope.original_content, "tls": session.ssl is not None})
        return "250 2.0.0 Ok: queued"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bounces_go_to_the_dsn_relay_without_recipient_policy(world, tmp_path):
    upstream = Upstream()
    port = free_port()
    controller = Controller(upstream, hostname="127.0.0.1", port=port)
    controller.start()
    toml = world.relay_sections(dns_extra="timeout = 3\n", delivery_extra="min_backoff = 3600\nmax_backoff = 3600\nconnect_timeout = 5\n",
                                dsn_relay=f"[127.0.0.1]:{port}")
    relay = Relay(tmp_path / "dsn-relay", extra_toml=toml).start()
    try:
        # The sender's domain is DANE-protected and its MX is behind a STARTTLS-stripping
        # attacker: a DSN to its MX would be deferred for ever. Through the DSN relay it arrives.
        sender = "alice@attack-strip-starttls.test"
        send(relay, sender, ["user@null-mx.test"], b"Subject: bounce me\r\n\r\ndsn-relay-token\r\n")
        assert wait_for(lambda: upstream.messages, timeout=30), relay.log_text()[-3000:]
        dsn = upstream.messages[0]
        assert dsn["mail_from"] in ("", "<>") and dsn["rcpt_tos"] == [sender]
        assert b"report-type=delivery-status" in dsn["data"] and b"Status: 5.1.10" in dsn["data"]
        assert f"goes to the DSN relay [127.0.0.1]:{port}" in relay.log_text()
        assert wait_for(lambda: [a for a in attempts(relay, sender) if a[2] == "sent" and a[0] == f"127.0.0.1[127.0.0.1]:{port}"], timeout=10)
        # No recipient policy, no MX lookup of the sender's domain: its (attacked) MX is never tried.
        assert "mx.attack-strip-starttls.test" not in relay.log_text()
        # A DSN the relay refuses is dropped with its reason: never a DSN of a DSN.
        send(relay, "refuse@plain-mx.test", ["user@null-mx.test"], b"Subject: bounce me too\r\n\r\nno-loop-token\r\n")
        refused = wait_for(lambda: [a for a in attempts(relay, "refuse@plain-mx.test") if a[2] == "bounced"], timeout=30)
        assert "no such user here" in refused[0][3]
        time.sleep(1)
        assert relay.queued() == {}, relay.queued()
        assert len(upstream.messages) == 1
    finally:
        relay.stop()
        controller.stop()
