#!/usr/bin/env python3
"""tlsrelay test world: a loopback Internet for a DANE / MTA-STS enforcing relay.

    python3 testworld/world.py up --dir DIR        build + start everything, print the relay TOML
    python3 testworld/world.py down --dir DIR [--keep]
    python3 testworld/world.py status --dir DIR
    python3 testworld/world.py config --dir DIR    print the relay TOML again
    python3 testworld/world.py sts-set --dir DIR DOMAIN BEHAVIOUR [--body TEXT] ...
    python3 testworld/world.py mx-set --dir DIR HOST JSON   script an aiosmtpd MX's replies
    python3 testworld/world.py mx-clear --dir DIR [HOST]    back to its behaviour at `up`
    python3 testworld/world.py hostile-set --dir DIR HOST BEHAVIOUR [--delay S]
    python3 testworld/world.py hostile-clear --dir DIR [HOST]

``up`` generates a PKI (pki.py), a DNSSEC-signed zone (zones.py), writes
``DIR/world.json`` (plan.py) and starts, as detached processes recorded in
``DIR/run/pids.json``: NSD, the DNS front for the signed child zones NSD cannot
serve (dnsfront.py), the recording MX servers (mx.py), the MTA-STS HTTPS
servers (sts.py), the MITM attackers (attackers.py), the hostile MX servers
(hostile.py) and one Postfix (postfix.py).  See README.md for the scenario table and address plan.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import plan      # noqa: E402
import postfix   # noqa: E402
import scenarios  # noqa: E402
import procs     # noqa: E402
import service   # noqa: E402
import sts       # noqa: E402
import zones     # noqa: E402

SERVER_MODULES = ("dnsfront", "mx", "sts", "attackers", "hostile")
READY_TIMEOUT = 10.0


class WorldError(RuntimeError):
    pass


def _postfix_conf(world):
    return next((h["postfix"] for s in world["scenarios"].values() for h in s["mx"]
                 if h.get("postfix")), None)


def running(d: str) -> dict:
    """Recorded processes of the world in ``d`` that are still alive."""
    return {n: e for n, e in procs.load(d).items() if procs.ours(e)}


def _check_dir(d: str) -> None:
    if os.path.exists(os.path.join(d, "world.json")) or os.path.exists(procs.pidfile(d)):
        live = running(d)
        if live:
            raise WorldError(f"a world is already running in {d} (pids "
                             f"{', '.join(str(e['pid']) for e in live.values())}); "
                             f"run: world.py down --dir {d}")
        raise WorldError(f"{d} holds a stopped world; run: world.py down --dir {d}")
    if os.path.isdir(d) and os.listdir(d):
        raise WorldError(f"{d} exists and is not empty")
    # Postfix daemons run as user postfix and must reach DIR/postfix.
    p = os.path.dirname(d)
    while p != "/":
        if os.path.exists(p) and not os.stat(p).st_mode & 0o001:
            raise WorldError(f"{p} is not searchable by others (mode "
                             f"{oct(os.stat(p).st_mode & 0o777)}); Postfix could not reach {d}")
        p = os.path.dirname(p)


def _check_addresses(world: dict) -> None:
    """Fail early and clearly if some address:port is taken (another world?)."""
    eps = [(s["address"], s["port"]) for s in world["servers"]]
    eps.append((world["dns"]["address"], world["dns"]["port"]))
    if world["dns"]["front"]["zones"]:
        eps.append((world["dns"]["front"]["address"], world["dns"]["front"]["port"]))
    pf = _postfix_conf(world)
    if pf:
        eps.append((pf["smtpd_address"], 25))
    # "down" MX hosts: published in DNS, nothing may listen there
    eps += [(h["address"], 25) for sc in world["scenarios"].values() for h in sc["mx"]
            if h["kind"] == scenarios.DOWN]
    for addr, port in eps:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as e:
            raise WorldError(f"{addr}:{port} is not free ({e.strerror}); is another world up?")
        finally:
            s.close()


def _dns_ready(addr: str, port: int) -> bool:
    """True when NSD answers a SOA query for test. (zones loaded)."""
    q = (b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
         b"\x04test\x00\x00\x06\x00\x01")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.1)
    try:
        s.sendto(q, (addr, port))
        r = s.recv(512)
        return r[:2] == b"\x12\x34" and (r[3] & 0x0F) == 0 and r[6:8] != b"\x00\x00"
    except OSError:
        return False
    finally:
        s.close()


def _tcp_ready(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def free_slot(first: int = 0) -> int:
    """The first slot whose DNS address:53 can be bound (no world running there)."""
    def free(addr, port, kind):
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    for slot in range(first, 255):
        probes = [(a, 53, kind) for a in (scenarios.dns_address(slot), scenarios.front_address(slot))
                  for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]
        probes += [(scenarios.addr(slot, third, 1), port, socket.SOCK_STREAM)
                   for third, port in ((2, 25), (3, 443), (4, 25), (5, 25), (6, 25))]
        if all(free(*p) for p in probes):
            return slot
    raise WorldError("no free slot")


def up(d: str, slot: int = 0) -> dict:
    """Build and start a world in ``d`` on address slot ``slot``; return the world description."""
    t0 = time.monotonic()
    d = os.path.abspath(d)
    _check_dir(d)
    created = not os.path.exists(d)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    try:
        world = plan.build(d, slot)
        _check_addresses(world)
        for sub in ("mx", "sts", "attackers", "hostile", "run", "logs"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        zinfo = zones.build(world)
        import mx                            # (imports aiosmtpd: only where needed)
        mx.install_behaviours(world)         # scenario-defined scripted replies
        world["status"] = "starting"
        service.write_json_atomic(os.path.join(d, "world.json"), world)
        with open(world["relay"]["toml_file"], "w") as f:
            f.write(plan.relay_toml(world))

        procs.spawn(d, "nsd", ["nsd", "-d", "-c", zinfo["nsd_conf"]])
        # Postfix first: its start-up runs half a dozen short programs that are
        # slowed down a lot when competing with three Python interpreters for CPU.
        pf = _postfix_conf(world)
        if pf:
            postfix.configure(pf)
            postfix.start(pf)
            mp = postfix.master_pid(pf)
            if not mp:
                raise WorldError("postfix started but wrote no master.pid")
            procs.record(d, "postfix", mp, None)
        for m in SERVER_MODULES:
            procs.spawn(d, m, [sys.executable, os.path.join(HERE, m + ".py"), d])

        deadline = time.monotonic() + READY_TIMEOUT
        waiting = {"nsd": lambda: _dns_ready(world["dns"]["address"], world["dns"]["port"])}
        for m in SERVER_MODULES:
            waiting[m] = (lambda m=m: os.path.exists(os.path.join(d, "run", m + ".ready")))
        if pf:
            waiting["postfix"] = lambda: _tcp_ready(pf["smtpd_address"], 25)
        while waiting:
            for name in list(waiting):
                if waiting[name]():
                    del waiting[name]
            dead = [n for n, e in procs.load(d).items() if not procs.alive(e["pid"])]
            if dead:
                raise WorldError(f"{', '.join(dead)} exited during start-up; see {d}/logs/")
            if time.monotonic() > deadline:
                raise WorldError(f"not ready after {READY_TIMEOUT:.0f} s: {', '.join(waiting)}; "
                                 f"see {d}/logs/")
            if waiting:
                time.sleep(0.02)
    except BaseException:
        # stop whatever was started, keep DIR (logs) for diagnosis, report the original error
        if os.path.exists(procs.pidfile(d)):
            try:
                down(d, keep=True)
            except WorldError:
                pass
        elif created:
            shutil.rmtree(d, ignore_errors=True)
        raise
    world["status"] = "running"
    world["processes"] = procs.load(d)
    world["startup_seconds"] = round(time.monotonic() - t0, 3)
    service.write_json_atomic(os.path.join(d, "world.json"), world)
    return world


def down(d: str, keep: bool = False) -> list:
    """Stop every recorded process (SIGTERM, then SIGKILL) and remove ``d``."""
    d = os.path.abspath(d)
    if not os.path.exists(os.path.join(d, "world.json")) and not os.path.exists(procs.pidfile(d)):
        raise WorldError(f"no world in {d}")
    pids = procs.load(d)
    left = []
    if "postfix" in pids:
        try:
            with open(os.path.join(d, "world.json")) as f:
                pf = _postfix_conf(json.load(f))
            if pf and procs.ours(pids["postfix"]):
                postfix.stop(pf)
                procs.wait_gone(pids["postfix"]["pid"], 5)
        except (OSError, ValueError):
            pass
    for name, entry in pids.items():
        left += procs.stop(entry)
    if left:
        raise WorldError(f"processes would not die: {left}")
    if not keep:
        shutil.rmtree(d)
    return left


def scenario_table(table=None) -> str:
    """Markdown table of the scenarios (default ``scenarios.SCENARIOS``; the hostile ones are
    ``scenarios.HOSTILE_SCENARIOS``) and their expected relay outcome."""
    rows = ["| scenario | domain | MX host(s): server | MTA-STS | expected outcome | source |",
            "|---|---|---|---|---|---|"]
    for s in scenarios.SCENARIOS if table is None else table:
        hosts = ", ".join(f"{scenarios.host_name(s, h.label)}: {h.kind}"
                          + (f" cert={h.cert}" if h.cert != "good" else "")
                          + (f" TLSA[{'; '.join(h.tlsa)}]" if h.tlsa else "")
                          + (" A-bogus" if h.a_bogus else "") + (" TLSA-bogus" if h.tlsa_bogus else "")
                          + (" TLSA-servfail" if h.tlsa_servfail else "")
                          + (f" TLSA-malformed[{'; '.join(h.tlsa_malformed)}]" if h.tlsa_malformed else "")
                          + (" AAAA-servfail" if h.aaaa_servfail else "")
                          + (f" CNAME->{scenarios.host_name(s, h.cname)}" if h.cname else "")
                          + (" (nothing listens)" if h.kind == scenarios.DOWN else "")
                          + (f" behaviour={json.dumps(h.behaviour)}" if h.behaviour else "")
                          + (" REQUIRETLS" if h.requiretls else "")
                          + (" no-SMTPUTF8" if not h.smtputf8 else "")
                          for h in s.hosts) or f"({s.mx})"
        out = s.action + (f" {s.status}" if s.action != "deliver" else "")
        if s.security:
            out += f" [{s.security}{', cleartext' if s.tls is False else ''}]"
        if s.via:
            out += f" via {scenarios.host_name(s, s.via)}"
        rows.append(f"| {s.name} | {scenarios.domain_of(s)} | {hosts} | {s.sts or '-'} | {out} | {s.rfc} |")
    return "\n".join(rows)


def _print_toml(d):
    with open(os.path.join(d, "tlsrelay.toml")) as f:
        sys.stdout.write(f"# tlsrelayd configuration for the test world in {d}\n"
                         f"# (also written to {d}/tlsrelay.toml)\n" + f.read())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("up", "down", "status", "config"):
        p = sub.add_parser(name)
        p.add_argument("--dir", required=True)
        if name == "up":
            p.add_argument("--slot", default="0",
                           help="second address octet: 127.SLOT.x.y (default 0; 'auto' = first free)")
        if name == "down":
            p.add_argument("--keep", action="store_true", help="keep DIR after stopping")
    sub.add_parser("scenarios", help="print the scenario table (markdown)")
    p = sub.add_parser("sts-set", help="script an MTA-STS policy host")
    p.add_argument("--dir", required=True)
    p.add_argument("domain", help="policy domain or scenario name")
    p.add_argument("behaviour", choices=sts.BEHAVIOURS)
    p.add_argument("--body")
    p.add_argument("--content-type")
    p.add_argument("--status", type=int)
    p.add_argument("--delay", type=float)
    p.add_argument("--location")
    p = sub.add_parser("mx-set", help="script the replies of an aiosmtpd MX (behaviour.json)")
    p.add_argument("--dir", required=True)
    p.add_argument("host", help="MX host name, or scenario name/domain (its receiving host)")
    p.add_argument("json", help='behaviour, e.g. \'{"rcpt": {"tempfail": "450 4.2.0 busy"}}\'')
    p = sub.add_parser("mx-clear", help="restore the behaviour an MX had at up (all if no HOST)")
    p.add_argument("--dir", required=True)
    p.add_argument("host", nargs="?")
    p = sub.add_parser("hostile-set", help="switch a hostile MX to another behaviour (hostile.py)")
    p.add_argument("--dir", required=True)
    p.add_argument("host", help="hostile MX host name, or scenario name/domain")
    p.add_argument("behaviour")
    p.add_argument("--delay", type=float, help="slow-final: seconds before the 250")
    p = sub.add_parser("hostile-clear", help="hostile MX back to its behaviour at up (all if no HOST)")
    p.add_argument("--dir", required=True)
    p.add_argument("host", nargs="?")
    a = ap.parse_args(argv)
    if a.cmd == "scenarios":
        print(scenario_table())
        print("\nHostile MX scenarios (hostile.py; integration/test_hostile_mx.py):\n")
        print(scenario_table(scenarios.HOSTILE_SCENARIOS))
        print("\nREQUIRETLS scenarios (MX hosts announcing REQUIRETLS; integration/test_requiretls.py):\n")
        print(scenario_table(scenarios.REQUIRETLS_SCENARIOS))
        print("\nIDN scenarios (A-label domains; integration/test_idn.py):\n")
        print(scenario_table(scenarios.IDN_SCENARIOS))
        return 0
    d = os.path.abspath(a.dir)
    try:
        if a.cmd == "up":
            w = up(d, free_slot() if a.slot == "auto" else int(a.slot))
            print(f"world up in {w['startup_seconds']:.2f} s: {len(w['scenarios'])} scenarios, "
                  f"{len(w['servers'])} servers, DNS {w['dns']['address']}:{w['dns']['port']}",
                  file=sys.stderr)
            _print_toml(d)
        elif a.cmd == "down":
            down(d, keep=a.keep)
        elif a.cmd == "config":
            _print_toml(d)
        elif a.cmd == "status":
            pids = procs.load(d)
            if not pids:
                raise WorldError(f"no world in {d}")
            bad = 0
            for n, e in pids.items():
                ok = procs.ours(e)
                bad += not ok
                print(f"{n:10} {e['pid']:>7} {'running' if ok else 'GONE'}")
            return 1 if bad else 0
        elif a.cmd == "sts-set":
            with open(os.path.join(d, "world.json")) as f:
                world = json.load(f)
            print(sts.set_behaviour(world, a.domain, a.behaviour, body=a.body,
                                    content_type=a.content_type, status=a.status,
                                    delay=a.delay, location=a.location))
        elif a.cmd in ("hostile-set", "hostile-clear"):
            import hostile
            with open(os.path.join(d, "world.json")) as f:
                world = json.load(f)
            if a.cmd == "hostile-set":
                opts = {} if a.delay is None else {"delay": a.delay}
                print(hostile.set_behaviour(world, a.host, a.behaviour, **opts))
            else:
                print("\n".join(hostile.clear_behaviour(world, a.host)))
        elif a.cmd in ("mx-set", "mx-clear"):
            import mx
            with open(os.path.join(d, "world.json")) as f:
                world = json.load(f)
            if a.cmd == "mx-set":
                try:
                    spec = json.loads(a.json)
                except ValueError as e:
                    raise ValueError(f"JSON: {e}")
                print(mx.set_behaviour(world, a.host, spec))
            else:
                print("\n".join(mx.clear_behaviour(world, a.host)))
    except (WorldError, ValueError, FileNotFoundError) as e:
        print(f"world.py {a.cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
