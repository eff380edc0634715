"""The DNS front: a small authoritative server for the signed child zones NSD cannot serve.

    python3 dnsfront.py DIR          (started by world.py up, like mx.py / sts.py)

It answers on ``world["dns"]["front"]["address"]`` port 53 (UDP and TCP) for the
zones in ``world["dns"]["front"]["zones"]``: signed zone files written by
zones.py (ldns-signzone, NSEC), delegated from ``test.`` with NS
``ns-front.test.`` and a DS, so a validating resolver sees them as secure.

What NSD cannot do and this server does:

* ``failures``: a (name, type) pair answered with an rcode (SERVFAIL) while
  every other type of that name is answered normally: an AAAA lookup that fails
  while A and TLSA of the same host are secure.
* rdata that NSD 4.6 refuses, such as a TLSA record of 2 octets: the zone file
  holds it in generic syntax (``\\# 2 0301``) and it is served as those octets.

Otherwise it is a plain authoritative server (RFC 1034 §4.3.2, RFC 4035 §3.1):
AA answers, RRSIGs when the query has the DO bit, NODATA / NXDOMAIN with the
SOA and the NSEC records that prove it, REFUSED outside its zones, TC over UDP
when the answer does not fit.  No wildcards, CNAMEs or delegations inside its
zones (the world has none there).  Every query is appended to
``world["dns"]["front"]["query_log"]`` (JSON lines: time, peer, proto, qname,
qtype, do, rcode, answer count).
"""
from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

import service

log = logging.getLogger("dnsfront")
PAYLOAD = 1232          # our EDNS UDP payload size (DNS flag day 2020)


def _rdata(rdclass, rdtype, text: str):
    """Parse rdata text; RFC 3597 generic ``\\# LEN HEX`` is kept as those octets even where
    they are not a valid record of the type (dnspython would reject a short TLSA)."""
    p = text.split(";", 1)[0].split()
    if p and p[0] == "\\#":
        data = bytes.fromhex("".join(p[2:]))
        if len(data) != int(p[1]):
            raise ValueError(f"generic rdata length mismatch: {text}")
        return dns.rdata.GenericRdata(rdclass, rdtype, data)
    return dns.rdata.from_text(rdclass, rdtype, text, origin=dns.name.root, relativize=False)


class Zone:
    """One signed zone read from ldns-signzone output (one record per line, absolute names)."""

    def __init__(self, origin: str, path: str):
        self.origin = dns.name.from_text(origin)
        self.nodes = {}         # name -> {(rdtype, covers): RRset}
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                owner, ttl, rdclass, rdtype, text = line.split(None, 4)
                name = dns.name.from_text(owner)
                if not name.is_subdomain(self.origin):
                    raise ValueError(f"{path}:{n}: {owner} is not in {origin}")
                rdclass = dns.rdataclass.from_text(rdclass)
                rdtype = dns.rdatatype.from_text(rdtype)
                rd = _rdata(rdclass, rdtype, text)
                covers = rd.covers() if rdtype == dns.rdatatype.RRSIG else dns.rdatatype.NONE
                node = self.nodes.setdefault(name, {})
                rrset = node.get((rdtype, covers))
                if rrset is None:
                    rrset = node[(rdtype, covers)] = dns.rrset.RRset(name, rdclass, rdtype, covers)
                rrset.add(rd, int(ttl))
        if (dns.rdatatype.SOA, dns.rdatatype.NONE) not in self.nodes.get(self.origin, {}):
            raise ValueError(f"{path}: no SOA at {origin}")
        self.nsec_owners = sorted(n for n, node in self.nodes.items()
                                  if (dns.rdatatype.NSEC, dns.rdatatype.NONE) in node)

    def get(self, name, rdtype):
        return self.nodes.get(name, {}).get((rdtype, dns.rdatatype.NONE))

    def sig(self, name, rdtype):
        return self.nodes.get(name, {}).get((dns.rdatatype.RRSIG, rdtype))

    def exists(self, name) -> bool:
        """The name owns records or is an empty non-terminal (RFC 4592 §2.2.2)."""
        return name in self.nodes or any(n.is_subdomain(name) for n in self.nodes)

    def covering_nsec(self, name):
        """The owner of the NSEC record whose span holds ``name`` (canonical order, RFC 4034 §6.1)."""
        i = bisect.bisect_right(self.nsec_owners, name) - 1
        return self.nsec_owners[i]       # i == -1 wraps to the last one (never: apex is first)


class Front:
    def __init__(self, world: dict):
        f = world["dns"]["front"]
        self.zones = [Zone(z["name"], z["zonefile"]) for z in f["zones"]]
        self.failures = {(dns.name.from_text(x["name"]), dns.rdatatype.from_text(x["type"])):
                         dns.rcode.from_text(x["rcode"]) for x in f["failures"]}
        self.query_log = f["query_log"]      # opened per query: World.clear_records removes it

    def zone_for(self, qname):
        zs = [z for z in self.zones if qname.is_subdomain(z.origin)]
        return max(zs, key=lambda z: len(z.origin)) if zs else None

    def _add(self, section, zone, name, rdtype, dnssec):
        rrset = zone.get(name, rdtype)
        if rrset is not None and rrset not in section:
            section.append(rrset)
            sig = zone.sig(name, rdtype)
            if dnssec and sig is not None:
                section.append(sig)

    def answer(self, wire: bytes, peer, proto: str):
        """Response wire for one query (None: not answerable, dropped)."""
        try:
            q = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            if len(wire) < 12:
                return None
            # FORMERR with the query's id and opcode, no sections
            return wire[:2] + bytes([0x80 | (wire[2] & 0x78), 0x01]) + b"\0" * 8
        if q.flags & dns.flags.QR:
            return None
        r = dns.message.make_response(q, our_payload=PAYLOAD)
        dnssec = bool(q.ednsflags & dns.flags.DO)
        if q.edns >= 0:
            r.use_edns(0, dns.flags.DO if dnssec else 0, PAYLOAD)
        qname = qtype = None
        if q.opcode() != dns.opcode.QUERY:
            r.set_rcode(dns.rcode.NOTIMP)
        elif len(q.question) != 1:
            r.set_rcode(dns.rcode.FORMERR)
        else:
            qname, qtype = q.question[0].name, q.question[0].rdtype
            self._resolve(r, qname, qtype, dnssec)
        out = r.to_wire()
        limit = 65535 if proto == "tcp" else max(512, min(q.payload, PAYLOAD)) if q.edns >= 0 else 512
        if len(out) > limit:
            r.answer, r.authority, r.additional = [], [], []
            r.flags |= dns.flags.TC
            out = r.to_wire()
        entry = json.dumps({
            "time": round(time.time(), 6), "peer": peer, "proto": proto,
            "qname": qname.to_text() if qname else None,
            "qtype": dns.rdatatype.to_text(qtype) if qtype is not None else None,
            "do": dnssec, "rcode": dns.rcode.to_text(r.rcode()),
            "answers": sum(len(x) for x in r.answer if x.rdtype != dns.rdatatype.RRSIG)})
        with open(self.query_log, "a") as f:
            f.write(entry + "\n")
        return out

    def _resolve(self, r, qname, qtype, dnssec):
        zone = self.zone_for(qname)
        if zone is None:
            r.set_rcode(dns.rcode.REFUSED)
            return
        fail = self.failures.get((qname, qtype))
        if fail is not None:
            r.set_rcode(fail)                       # no AA, no records: the scripted failure
            return
        r.flags |= dns.flags.AA
        node = zone.nodes.get(qname)
        if node is not None:
            if qtype == dns.rdatatype.ANY:
                for (t, cov) in sorted(node):
                    if t != dns.rdatatype.RRSIG:
                        self._add(r.answer, zone, qname, t, dnssec)
                return
            if qtype == dns.rdatatype.RRSIG:
                r.answer += [s for (t, cov), s in sorted(node.items()) if t == dns.rdatatype.RRSIG]
                if r.answer:
                    return
            elif zone.get(qname, qtype) is not None:
                self._add(r.answer, zone, qname, qtype, dnssec)
                return
            # NODATA (RFC 4035 §3.1.3.1): the NSEC of the name itself
            self._add(r.authority, zone, zone.origin, dns.rdatatype.SOA, dnssec)
            if dnssec:
                self._add(r.authority, zone, qname, dns.rdatatype.NSEC, dnssec)
            return
        self._add(r.authority, zone, zone.origin, dns.rdatatype.SOA, dnssec)
        if zone.exists(qname):
            # empty non-terminal: NODATA, the NSEC that covers it (RFC 4035 §3.1.3.2 note)
            if dnssec:
                self._add(r.authority, zone, zone.covering_nsec(qname), dns.rdatatype.NSEC, dnssec)
            return
        # NXDOMAIN (RFC 4035 §3.1.3.2): NSEC covering the name and the wildcard at the
        # closest encloser
        r.set_rcode(dns.rcode.NXDOMAIN)
        if dnssec:
            ce = qname.parent()
            while not zone.exists(ce):
                ce = ce.parent()
            for n in (qname, dns.name.from_text("*", ce)):
                self._add(r.authority, zone, zone.covering_nsec(n), dns.rdatatype.NSEC, dnssec)


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, front):
        self.front = front

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            out = self.front.answer(data, f"{addr[0]}:{addr[1]}", "udp")
        except Exception:
            log.exception("query from %s", addr)
            return
        if out:
            self.transport.sendto(out, addr)


async def _tcp(front, reader, writer):
    peer = writer.get_extra_info("peername")
    try:
        while True:
            n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10), "big")
            data = await asyncio.wait_for(reader.readexactly(n), 10)
            out = front.answer(data, f"{peer[0]}:{peer[1]}", "tcp")
            if not out:
                break
            writer.write(len(out).to_bytes(2, "big") + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        pass
    except Exception:
        log.exception("TCP query from %s", peer)
    finally:
        writer.close()


async def setup(world):
    f = world["dns"]["front"]
    if not f["zones"]:
        return None
    front = Front(world)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(front),
                                                       local_addr=(f["address"], f["port"]))
    server = await asyncio.start_server(lambda r, w: _tcp(front, r, w), f["address"], f["port"],
                                        reuse_address=True)
    log.info("serving %s on %s:%d", ", ".join(z.origin.to_text() for z in front.zones),
             f["address"], f["port"])

    async def cleanup():
        transport.close()
        server.close()
        await server.wait_closed()
    return cleanup


if __name__ == "__main__":
    service.run("dnsfront", setup)
