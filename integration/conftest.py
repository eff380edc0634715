import os
import sys

import pytest

from relay import ROOT, Relay

sys.path.insert(0, str(ROOT / "testworld"))
from worldlib import World  # noqa: E402


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The loopback test world, shared by the suites that deliver into it.
    TLSRELAY_WORLD_DIR attaches to a world started by hand (make world-up) instead."""
    if os.environ.get("TLSRELAY_WORLD_DIR"):
        attached = World(os.environ["TLSRELAY_WORLD_DIR"])
        attached.clear_records()
        yield attached
        return
    # Postfix's daemons must reach the world directory: not under pytest's 0700 tmp_path.
    # slot=None picks a free 127.S.x.y address slot, so a world started by hand does not clash.
    w = World.up(None, slot=None)
    yield w
    w.down()


@pytest.fixture(scope="session")
def world_relay_toml(world):
    """[dns] and [delivery] sections pointing tlsrelayd at the world (its zone, trust anchor
    and test CA), with retries far enough apart that a deferred message stays deferred."""
    return world.relay_sections(
        dns_extra="timeout = 3\n",
        delivery_extra="min_backoff = 3600\nmax_backoff = 3600\nconnect_timeout = 5\ncommand_timeout = 10\n")


@pytest.fixture
def relay_factory(tmp_path):
    """Builds relays with server overrides; stops all of them afterwards."""
    relays = []

    def make(name="relay", start=True, **overrides):
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        relay = Relay(workdir, **overrides)
        relays.append(relay)
        if start:
            relay.start()
        return relay

    yield make
    for relay in relays:
        try:
            relay.stop()
        except Exception:
            relay.process.kill()


@pytest.fixture
def relay(relay_factory):
    return relay_factory()
