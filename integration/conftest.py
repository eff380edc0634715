import pytest

from relay import Relay


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
