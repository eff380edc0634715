"""tlsrelayd without privileges, as the systemd unit runs it (User=tlsrelay, no capabilities):
it accepts mail and delivers it. (Socket options that need privileges, such as SO_DEBUG set by
mistake for TCP_NODELAY, closed every connection without a word.)"""
import os
import shutil
import tempfile

from relay import Relay
from test_delivery_behaviour import attempts, send, wait_for


def test_accepts_and_delivers_without_privileges(world, world_relay_toml):
    base = tempfile.mkdtemp(prefix="tlsrelay-unprivileged-")
    os.chmod(base, 0o755)
    try:
        relay = Relay(base, extra_toml=world_relay_toml)
        relay.state.mkdir()
        shutil.chown(relay.state, "nobody", "nogroup")
        os.chmod(relay.config, 0o644)
        relay.start(user="nobody:nogroup")
        try:
            send(relay, "sender@plain-mx2.test", ["user@plain-mx.test", "user@dane-ee.test"],
                 b"Subject: unprivileged\r\n\r\nunprivileged-token\r\n")
            assert wait_for(lambda: [a for a in attempts(relay, "user@plain-mx.test") if a[2] == "sent"]), relay.log_text()[-2000:]
            assert wait_for(lambda: [a for a in attempts(relay, "user@dane-ee.test") if a[2] == "sent"]), relay.log_text()[-2000:]
            assert any(b"unprivileged-token" in m["data_bytes"] for m in world.wait_for_messages("dane-ee"))
        finally:
            relay.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
