"""Shared plumbing for the world's background server processes (mx, sts, attackers).

Each server module is started as ``python3 <module>.py DIR``; it reads
``DIR/world.json``, binds every listener of its role, then writes
``DIR/run/<role>.ready`` so that ``world.py up`` knows it is serving.
SIGTERM/SIGINT stop the event loop cleanly.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile


def write_json_atomic(path: str, obj) -> None:
    """Write JSON so a reader never sees a partial file (rename is atomic)."""
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_world(d: str) -> dict:
    with open(os.path.join(d, "world.json")) as f:
        return json.load(f)


def run(role: str, setup) -> None:
    """``setup(world)`` is a coroutine that binds the listeners and returns an optional
    coroutine function called at shutdown."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    d = os.path.abspath(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd chatter
    world = load_world(d)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        cleanup = await setup(world)
        ready = os.path.join(d, "run", role + ".ready")
        os.makedirs(os.path.dirname(ready), exist_ok=True)
        with open(ready, "w") as f:
            f.write(str(os.getpid()))
        logging.info("ready")
        await stop.wait()
        if cleanup:
            await cleanup()
        logging.info("stopped")

    asyncio.run(main())
