#!/usr/bin/env python3
"""`make bench`: tlsrelayd side by side with Postfix, on this machine, in one run.

Inbound side (accept and queue, delivery held), measured for both with the same parameters:
Postfix's own smtp-source drives N sessions sending M messages of S bytes; every figure is
taken for tlsrelayd and for a private Postfix instance configured the same way (loopback
listener, delivery deferred), in alternating rounds (A B A B) after a warm-up of each.

Figures: accepted messages per second (wall clock), CPU milliseconds per message (busy CPU
of the whole machine during the run minus the load generator's own CPU), latency of the reply
to the end of DATA (p50/p99, measured by a separate client), peak memory (PSS of all server
processes).

Relay side: end-to-end relay rate (submission to the last message handed to the sink), in
clear to smtp-sink and over STARTTLS to a TLS sink (see relay_part).

Only loopback addresses are used. Recovery time and enqueue cost with a large queue:
bench/large_queue.py.
"""
import argparse
import asyncio
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "testworld"))
from postfix import UNIX_SERVICES  # noqa: E402
TLSRELAYD = ROOT / ".build" / "release" / "tlsrelayd"
WRAPPER = []   # --wrap: a command tlsrelayd runs under (a profiler)

POSTFIX_MASTER = "127.0.0.1:{port} inet n - n - - smtpd\n" + UNIX_SERVICES.replace("{", "{{").replace("}", "}}")

POSTFIX_MAIN = """\
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix-bench.example.org
mydestination =
local_recipient_maps =
alias_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 200
relayhost = [127.0.0.1]:9
defer_transports = smtp relay
message_size_limit = 52428800
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.recv(100)
                return
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"nothing listens on {port}")


def descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def busy_jiffies():
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle


def postfix_directories(base):
    """Creates the config, queue and data directories of a private Postfix instance under base;
    returns them and its main.cf text (delivery deferred)."""
    conf, queue, data = base / "conf", base / "queue", base / "data"
    for d in (conf, queue, data):
        d.mkdir(parents=True)
    entry = pwd.getpwnam("postfix")
    os.chown(data, entry.pw_uid, entry.pw_gid)
    return conf, queue, data, POSTFIX_MAIN.format(conf=conf, queue=queue, data=data, base=base)


class Server:
    name = "?"
    port = 0

    def pids(self):
        return descendants(self.pid())

    def reset(self):
        pass


class TLSRelay(Server):
    name = "tlsrelay"

    def __init__(self, base, relay_world=None, tag="relay"):
        """Delivery held, or (relay_world) delivering through the test world's DNS."""
        self.base = base / (f"tlsrelay-{tag}" if relay_world else "tlsrelay")
        self.base.mkdir()
        self.port = free_port()
        self.config = self.base / "tlsrelay.toml"
        if relay_world:
            delivery = relay_world.relay_sections(delivery_extra="concurrency = 20\naddress_concurrency = 20\ndestination_concurrency = 20\n")
        else:
            # Delivery held: no lookups at all, the DNSSEC self-test included.
            delivery = '[dns]\nstub_zones = []\ncheck_secure_name = ""\ncheck_bogus_name = ""\n[delivery]\nhold = true\n'
        self.config.write_text(
            f'state_directory = "{self.base}/state"\nlog_level = "warning"\n[server]\nlisten = ["127.0.0.1:{self.port}"]\n'
            f'hostname = "tlsrelay-bench.example.org"\nmax_connections = 1000\n' + delivery)
        self.process = None

    def queued(self):
        total = 0
        for bucket in (self.base / "state" / "spool" / "queue").glob("*"):
            total += sum(1 for _ in bucket.iterdir())
        return total

    def start(self, timeout=30):
        self.process = subprocess.Popen(WRAPPER + [str(TLSRELAYD), "--config", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.base / "log", "ab"))
        wait_port(self.port, timeout=timeout)

    def stop(self):
        if self.process:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
            self.process = None

    def reset(self):
        self.stop()
        shutil.rmtree(self.base / "state", ignore_errors=True)
        self.start()

    def pid(self):
        return self.process.pid


class Postfix(Server):
    name = "postfix"

    def __init__(self, base, relay_to=None, tls_level="may"):
        """Delivery deferred, or (relay_to = "IP") relaying everything to IP:25 with
        smtp_tls_security_level = tls_level."""
        self.base = base / (f"postfix-relay-{tls_level}" if relay_to else "postfix")
        self.conf, self.queue, self.data, main = postfix_directories(self.base)
        self.port = free_port()
        (self.conf / "master.cf").write_text(POSTFIX_MASTER.format(port=self.port))
        if relay_to:
            main = main.replace("relayhost = [127.0.0.1]:9\ndefer_transports = smtp relay\n",
                                f"relayhost = [{relay_to}]:25\ndefault_destination_concurrency_limit = 20\n"
                                f"smtp_tls_security_level = {tls_level}\n")
        (self.conf / "main.cf").write_text(main)

    def queued(self):
        return sum(1 for d in ("incoming", "active", "deferred", "maildrop") for _ in (self.queue / d).rglob("*") if _.is_file())

    def postfix(self, *args):
        return subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True, text=True, timeout=120)

    def start(self):
        result = self.postfix("start")
        if result.returncode != 0:
            raise SystemExit("postfix start failed: " + result.stdout + result.stderr)
        wait_port(self.port)

    def stop(self):
        self.postfix("stop")
        deadline = time.time() + 30
        while time.time() < deadline and (self.queue / "pid" / "master.pid").exists():
            try:
                os.kill(int((self.queue / "pid" / "master.pid").read_text().split()[0]), 0)
            except (OSError, ValueError):
                break
            time.sleep(0.1)

    def reset(self):
        subprocess.run(["postsuper", "-c", str(self.conf), "-d", "ALL"], capture_output=True)

    def pid(self):
        return int((self.queue / "pid" / "master.pid").read_text().split()[0])


def accept_round(server, sessions, messages, size, reset=True):
    """smtp-source against one server (emptied first unless reset is False); returns (msg/s,
    CPU ms/msg, peak PSS MiB)."""
    if reset:
        server.reset()
    subprocess.run(["sync"])   # no write-back of an earlier round inside this one
    peak = pss_kib(server.pids())
    busy0 = busy_jiffies()
    usage0 = os.times()
    t0 = time.monotonic()
    source = subprocess.Popen(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                               "-f", "bench@example.org", "-t", "sink@example.net", "-M", "bench.example.org",
                               f"127.0.0.1:{server.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while source.poll() is None:
        peak = max(peak, pss_kib(server.pids()))
        time.sleep(0.1)
    wall = time.monotonic() - t0
    if source.returncode != 0:
        raise SystemExit(f"smtp-source against {server.name} failed: {source.stderr.read().decode()}")
    usage1 = os.times()
    busy = (busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
    generator = (usage1.children_user - usage0.children_user) + (usage1.children_system - usage0.children_system)
    return messages / wall, max(0.0, busy - generator) * 1000 / messages, peak / 1024


def relay_round(server, sessions, messages, size, domain):
    """smtp-source submits; the clock stops when the server's queue is empty again (every
    message handed to the sink). Returns msg/s end to end."""
    server.reset()
    subprocess.run(["sync"])   # no write-back of an earlier round inside this one
    t0 = time.monotonic()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", "bench@example.org", "-t", f"sink@{domain}", "-M", "bench.example.org",
                    f"127.0.0.1:{server.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    deadline = time.monotonic() + 600
    while server.queued() > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.queued() > 0:
        raise SystemExit(f"{server.name} did not relay everything within 10 minutes")
    return messages / (time.monotonic() - t0)


async def latency_client(port, count, size, results):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply():
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] == b" ":
                return line

    await reply()
    writer.write(b"EHLO latency.example.org\r\n")
    await reply()
    body = b"Subject: latency\r\n\r\n" + b"x" * (size - 22) + b"\r\n"
    for _ in range(count):
        writer.write(b"MAIL FROM:<bench@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n")
        await reply(), await reply(), await reply()
        writer.write(body)
        await writer.drain()
        t0 = time.perf_counter()
        writer.write(b".\r\n")
        line = await reply()
        results.append(time.perf_counter() - t0)
        assert line.startswith(b"250"), line
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


def latency_round(server, sessions, per_session, size):
    server.reset()
    results = []

    async def main():
        await asyncio.gather(*(latency_client(server.port, per_session, size, results) for _ in range(sessions)))

    asyncio.run(main())
    results.sort()
    return results[len(results) // 2] * 1000, results[int(len(results) * 0.99)] * 1000


class PlainSink:
    """smtp-sink on ADDRESS:25: accepts and discards, no STARTTLS."""

    def __init__(self, address):
        self.address = address
        self.process = None

    def start(self):
        self.process = subprocess.Popen(["smtp-sink", "-u", "postfix", f"{self.address}:25", "256"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(25, host=self.address)

    def stop(self):
        if self.process:
            self.process.terminate()
            self.process.wait()


class TLSSink(PlainSink):
    """A Postfix smtpd on the MX host's address offering STARTTLS with the host's certificate
    and refusing mail in clear (smtpd_tls_security_level = encrypt: what is relayed was relayed
    over TLS); each transaction goes through smtpd_proxy_filter to an smtp-sink on 127.0.0.1
    (nothing is queued)."""

    def __init__(self, base, host):
        super().__init__(host["address"])
        self.base = base / "tls-sink"
        self.conf, self.queue, self.data, main = postfix_directories(self.base)
        self.sink_port = free_port()
        master = POSTFIX_MASTER.replace("127.0.0.1:{port}", "{address}:25").format(address=self.address)
        (self.conf / "master.cf").write_text(master)
        main = main.replace("myhostname = postfix-bench.example.org", f"myhostname = {host['name']}")
        main += (f"smtpd_tls_security_level = encrypt\n"
                 f"smtpd_tls_chain_files = {host['certificate']['key_file']}, {host['certificate']['chain_file']}\n"
                 f"smtpd_proxy_filter = 127.0.0.1:{self.sink_port}\n")
        (self.conf / "main.cf").write_text(main)

    def start(self):
        self.process = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{self.sink_port}", "256"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.sink_port)
        result = subprocess.run(["postfix", "-c", str(self.conf), "start"], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise SystemExit("TLS sink: postfix start failed: " + result.stdout + result.stderr)
        wait_port(25, host=self.address)

    def stop(self):
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True, timeout=120)
        super().stop()


def stop_all(servers):
    """Stops every server; a failure to stop one is reported and the others are still stopped."""
    for server in servers:
        try:
            server.stop()
        except Exception as e:
            print(f"stopping {server.name}: {e}", file=sys.stderr)


def relay_part(base, world, domain, sink, tls, args):
    """Relay rate of tlsrelayd and Postfix to one sink: a warm-up, then alternating rounds.
    Returns a table row."""
    relays = []
    try:
        sink.start()
        relays = [TLSRelay(base, relay_world=world, tag="tls" if tls else "plain"),
                  Postfix(base, relay_to=sink.address, tls_level="encrypt" if tls else "may")]
        for r in relays:
            r.start()
        for r in relays:
            relay_round(r, 10, max(300, args.messages // 10), args.size, domain)   # warm-up
        figures = {r.name: [] for r in relays}
        for _ in range(args.rounds):
            for r in relays:
                figures[r.name].append(relay_round(r, 10, args.messages, args.size, domain))
        what = "over STARTTLS (DANE-EE / encrypt) to a TLS sink" if tls else "to smtp-sink (no STARTTLS offered)"
        return (f"relay end to end {what}, 10 sessions: msg/s", statistics.median(figures["tlsrelay"]),
                statistics.median(figures["postfix"]), "higher is better")
    finally:
        stop_all(relays)
        sink.stop()


def main():
    global TLSRELAYD
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sessions", default="10,50")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--binary", default=str(TLSRELAYD), help="tlsrelayd to measure (default: the release build)")
    parser.add_argument("--no-relay", action="store_true", help="skip the end-to-end relay rates (they need the test world)")
    parser.add_argument("--only", choices=["accept", "relay"], help="run one part: the inbound side or the relay rates")
    parser.add_argument("--wrap", default="", help='run tlsrelayd under this command, e.g. "perf record -g -o /tmp/relay.perf --"')
    args = parser.parse_args()
    WRAPPER[:] = args.wrap.split()
    TLSRELAYD = Path(args.binary)
    if not TLSRELAYD.exists():
        raise SystemExit(f"{TLSRELAYD} missing: run make release first")
    base = Path(tempfile.mkdtemp(prefix="tlsrelay-bench-"))
    os.chmod(base, 0o755)
    servers = [] if args.only == "relay" else [TLSRelay(base), Postfix(base)]
    rows = []
    print(f"# tlsrelay vs Postfix on {platform.node()} ({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    postfix_version = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    print(f"# Postfix {postfix_version}; {args.messages} messages x {args.size} bytes; median of {args.rounds} alternating rounds after a warm-up")
    try:
        for s in servers:
            s.start()
        for sessions in [int(x) for x in args.sessions.split(",") if servers]:
            for s in servers:   # warm-up
                accept_round(s, sessions, max(500, args.messages // 10), args.size)
            figures = {s.name: [] for s in servers}
            for _ in range(args.rounds):
                for s in servers:
                    figures[s.name].append(accept_round(s, sessions, args.messages, args.size))
            med = {name: [statistics.median(v[i] for v in values) for i in range(3)] for name, values in figures.items()}
            rows.append((f"accept+queue, {sessions} sessions: msg/s", med["tlsrelay"][0], med["postfix"][0], "higher is better"))
            rows.append((f"accept+queue, {sessions} sessions: CPU ms/msg", med["tlsrelay"][1], med["postfix"][1], "lower is better"))
            rows.append((f"accept+queue, {sessions} sessions: peak PSS MiB", med["tlsrelay"][2], med["postfix"][2], "lower is better"))
        lat = {} if not servers else {s.name: latency_round(s, 10, max(50, args.messages // 20), args.size) for s in servers}
        if lat:
            rows.append(("end of DATA -> 250, 10 sessions: p50 ms", lat["tlsrelay"][0], lat["postfix"][0], "lower is better"))
            rows.append(("end of DATA -> 250, 10 sessions: p99 ms", lat["tlsrelay"][1], lat["postfix"][1], "lower is better"))
    finally:
        stop_all(servers)
        shutil.rmtree(base, ignore_errors=True)
    # Relay end to end: both relays deliver to the same sink, on the address of a test-world MX
    # host where nothing else listens. tlsrelayd finds it through DNS (MX, A, TLSA lookups,
    # validated); Postfix is pointed at it with relayhost.
    #   plain: smtp-sink on mx1.two-mx-first-down.test (no STARTTLS offered, so both send in clear);
    #   STARTTLS: a Postfix smtpd offering STARTTLS with the certificate of mx.dane-ee-down.test,
    #   passing each transaction to an smtp-sink (smtpd_proxy_filter, nothing queued). tlsrelayd
    #   authenticates it by its DNSSEC-signed TLSA record (DANE-EE); Postfix uses
    #   smtp_tls_security_level = encrypt (its DANE needs a validating system resolver).
    if not args.no_relay and args.only != "accept":
        base = Path(tempfile.mkdtemp(prefix="tlsrelay-bench-"))
        os.chmod(base, 0o755)
        sys.path.insert(0, str(ROOT / "testworld"))
        from worldlib import World
        world = World.up(None, slot=None)
        try:
            plain = world.scenario("two-mx-first-down")
            address = next(h["address"] for h in plain["mx"] if h["preference"] == 10)
            rows.append(relay_part(base, world, plain["domain"], PlainSink(address), tls=False, args=args))
            dane = world.scenario("dane-ee-down")
            rows.append(relay_part(base, world, dane["domain"], TLSSink(base, dane["mx"][0]), tls=True, args=args))
        finally:
            world.down()
            shutil.rmtree(base, ignore_errors=True)
    print()
    print("| figure | tlsrelay | Postfix | tlsrelay / Postfix | |")
    print("|---|---:|---:|---:|---|")
    for name, ours, theirs, note in rows:
        ratio = ours / theirs if theirs else float("nan")
        print(f"| {name} | {ours:.2f} | {theirs:.2f} | {ratio:.2f} | {note} |")


if __name__ == "__main__":
    main()
