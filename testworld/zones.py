"""DNS for the test world: zone files, DNSSEC signing, NSD and unbound configs.

* ``test.`` is signed at ``up`` time with ldns (ECDSAP256SHA256 KSK + ZSK,
  NSEC3 with 0 iterations and no salt, RFC 9276); the KSK's DS is the trust
  anchor (``DIR/dns/trust-anchor.ds``, usable as unbound ``trust-anchor-file``
  and libunbound ``ub_ctx_add_ta_file``).
* ``insecure.test.`` is delegated without DS and served unsigned
  (RFC 4035 §5.2: provably insecure delegation).
* Bogus data (RFC 4035 §5.5): after signing, the rdata of selected RRsets is
  replaced while the old RRSIG is kept.  The *signed* value is a decoy that
  leads nowhere; the *served* value is the working one, so a relay that ignores
  the validation failure visibly delivers.
* SERVFAIL: a name is delegated (NS, no DS) to a zone that NSD also serves but
  with ``allow-query`` refusing everybody, so the resolver never gets an
  answer (RFC 7672 §2.1.1).
* DNS front zones (``world["dns"]["front"]``): signed children of ``test.``
  (NS ``ns-front.test.`` + DS in the parent, so they stay secure) for what NSD
  cannot serve: an AAAA lookup that fails while A and TLSA of the same name are
  secure (NSD answers all types of a name alike), and TLSA rdata shorter than
  the 3 fixed octets (NSD 4.6 refuses it, also as ``\\# 2 0301``).  Each is
  signed by ldns-signzone with its own key and NSEC; ldns prints a short TLSA
  record as ``3 1``, which is rewritten to the generic ``\\# 2 0301`` afterwards
  (the signature is over the wire form, so it stays valid).  dnsfront.py
  serves them.
"""
from __future__ import annotations

import datetime as _dt
import os
import subprocess

import scenarios as S
import tlsrpt_sink

TTL = 60
NS_NAME = f"ns.{S.ZONE}."


def _fq(name: str) -> str:
    return name if name.endswith(".") else name + "."


class Records:
    """Resource records per zone; for bogus RRsets the signed rdata and, separately,
    the rdata served after signing."""

    def __init__(self, front_zones=()):
        self.rr = []            # (zone, owner, type, rdata)
        self.bogus = {}         # (owner, type) -> [served rdata] (signed rdata is in self.rr)
        self.refused_zones = []
        self.front_zones = [_fq(z) for z in front_zones]

    def zone_of(self, owner: str) -> str:
        """The zone (no trailing dot) an owner name falls in: the deepest front zone, else
        ``test`` or ``insecure.test``."""
        owner = _fq(owner)
        fronts = [z for z in self.front_zones if owner == z or owner.endswith("." + z)]
        return max(fronts, key=len)[:-1] if fronts else S.zone_of(owner)

    def add(self, owner, rtype, rdata, signed_as=None, zone=None):
        """Add a record to ``zone`` (default: the zone the owner name falls in)."""
        owner = _fq(owner)
        zone = zone or self.zone_of(owner)
        if signed_as is not None:
            self.rr.append((zone, owner, rtype, signed_as))
            self.bogus.setdefault((owner, rtype), []).append(rdata)
        elif (zone, owner, rtype, rdata) not in self.rr:
            # once only: an MX host named by several scenarios (the tarpit domains) has one A
            self.rr.append((zone, owner, rtype, rdata))

    def refuse(self, owner):
        """Delegate ``owner`` to a zone that NSD refuses to answer for."""
        self.add(owner, "NS", NS_NAME)
        self.refused_zones.append(_fq(owner))

    def zone_text(self, zone: str, ns: str = NS_NAME) -> str:
        apex = _fq(zone)
        out = [f"$TTL {TTL}",
               f"{apex} {TTL} IN SOA {ns} hostmaster.{S.ZONE}. 1 3600 900 604800 {TTL}",
               f"{apex} {TTL} IN NS {ns}"]
        out += [f"{owner} {TTL} IN {rtype} {rdata}" for z, owner, rtype, rdata in self.rr if z == zone]
        return "\n".join(out) + "\n"


def records_for(world: dict) -> Records:
    """All resource records the scenarios in ``world`` need."""
    front = world["dns"]["front"]
    r = Records(z["name"] for z in front["zones"])
    r.add(NS_NAME, "A", world["dns"]["address"])
    r.add(S.INSECURE_ZONE, "NS", NS_NAME, zone=S.ZONE)   # delegation without DS
    if front["zones"]:
        r.add(front["ns_name"], "A", front["address"], zone=S.ZONE)
    for z in front["zones"]:                              # delegation; the DS follows in build()
        r.add(z["name"], "NS", front["ns_name"], zone=S.ZONE)
    for sc in world["scenarios"].values():
        dom = sc["domain"]
        mode = sc["mx_mode"]
        if mode in ("mx", "bogus"):
            for h in sc["mx"]:
                served = f"{h['preference']} {_fq(h['name'])}"
                r.add(dom, "MX", served,
                      signed_as=f"{h['preference']} decoy.{_fq(dom)}" if mode == "bogus" else None)
        elif mode == "null":
            r.add(dom, "MX", "0 .")
        elif mode == "servfail":
            r.refuse(dom)
        for h in sc["mx"]:
            base = h["cname_target"] or h["name"]
            if h["cname_target"]:
                r.add(h["name"], "CNAME", _fq(base))
            r.add(base, "A", h["address"],
                  signed_as=world["dns"]["bait_address"] if h["dns"]["a_bogus"] else None)
            if h["dns"]["tlsa_servfail"]:
                r.refuse(h["tlsa_name"])
            for t in h["tlsa"]:
                decoy = " ".join(t.split()[:3]) + " " + "00" * 32
                r.add(h["tlsa_name"], "TLSA", t,
                      signed_as=decoy if h["dns"]["tlsa_bogus"] else None)
            for t in h["tlsa_malformed"]:
                if r.zone_of(h["tlsa_name"]) + "." not in r.front_zones:
                    raise ValueError(f"{h['name']}: NSD cannot serve the malformed TLSA {t}")
                r.add(h["tlsa_name"], "TLSA", t)
        sts = sc["mta_sts"]
        if sts:
            r.add(f"_mta-sts.{dom}", "TXT", f'"{sts["txt"]}"')
            r.add(sts["policy_host"], "A", sts["address"])
        if "tlsrpt" not in world and (sts or any(h["tlsa"] for h in sc["mx"])):
            r.add(f"_smtp._tls.{dom}", "TXT", f'"v=TLSRPTv1; rua=mailto:tlsrpt@{dom}"')
    if "tlsrpt" in world:                    # tlsrpt_sink.py: the collector and the records
        for owner, rtype, rdata in tlsrpt_sink.zone_records(world):
            r.add(owner, rtype, rdata)
    return r


def _run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    return p.stdout.strip()


def _make_bogus(signed_file: str, bogus: dict):
    """Replace the rdata of the listed RRsets in the signed zone, keeping the RRSIGs."""
    with open(signed_file) as f:
        lines = f.read().splitlines()
    out, done = [], set()
    for line in lines:
        p = line.split(None, 4)
        key = (p[0].lower(), p[3]) if len(p) >= 5 and p[2] == "IN" else None
        match = next((k for k in bogus if key and (k[0].lower(), k[1]) == key), None)
        if match:
            if match not in done:
                out += [f"{match[0]}\t{TTL}\tIN\t{match[1]}\t{rd}" for rd in bogus[match]]
                done.add(match)
            continue
        out.append(line)
    missing = set(bogus) - done
    if missing:
        raise RuntimeError(f"bogus records not found in signed zone: {missing}")
    with open(signed_file, "w") as f:
        f.write("\n".join(out) + "\n")


def _generic(rdata: str) -> bytes:
    """Wire form of RFC 3597 generic rdata text ``\\# LEN HEX``."""
    p = rdata.split()
    if p[0] != "\\#":
        raise ValueError(f"not generic rdata: {rdata}")
    data = bytes.fromhex("".join(p[2:]))
    if len(data) != int(p[1]):
        raise ValueError(f"length {p[1]} does not match the data: {rdata}")
    return data


def _restore_short_tlsa(signed_file: str, wanted: dict):
    """ldns prints TLSA rdata shorter than 3 octets as its octets in decimal (``3 1``), which no
    parser reads back; write those records in generic syntax again.  ``wanted``: owner ->
    wire forms expected."""
    with open(signed_file) as f:
        lines = f.read().splitlines()
    found = {}
    for i, line in enumerate(lines):
        p = line.split(None, 4)
        if len(p) == 5 and p[2] == "IN" and p[3] == "TLSA" and len(p[4].split()) < 4:
            data = bytes(int(x) for x in p[4].split())
            found.setdefault(p[0].lower(), []).append(data)
            hexdata = f" {data.hex()}" if data else ""
            lines[i] = f"{p[0]}\t{p[1]}\tIN\tTLSA\t\\# {len(data)}{hexdata}"
    if {k: sorted(v) for k, v in found.items()} != {k: sorted(v) for k, v in wanted.items()}:
        raise RuntimeError(f"{signed_file}: short TLSA records {found}, expected {wanted}")
    with open(signed_file, "w") as f:
        f.write("\n".join(lines) + "\n")


def _front_zones(world: dict, r: Records, keys: str, inception: str) -> None:
    """Key, write and sign every DNS front zone; add its DS to the parent (before the parent
    is signed)."""
    front = world["dns"]["front"]
    if front["zones"]:
        os.makedirs(os.path.dirname(front["zones"][0]["zonefile"]), exist_ok=True)
    for z in front["zones"]:
        name = z["name"]
        # one key (SEP flag) signs everything: a CSK; ldns-keygen -k also writes its DS
        key = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", name], keys)
        with open(os.path.join(keys, key + ".ds")) as f:
            tokens = f.read().split()                 # "<zone> IN DS <tag> 13 2 <hex>"
        ds = " ".join(tokens[tokens.index("DS") + 1:])
        r.add(name, "DS", ds, zone=S.ZONE)
        unsigned = z["zonefile"][:-len(".signed")]
        with open(unsigned, "w") as f:
            f.write(r.zone_text(name[:-1], ns=front["ns_name"]))
        _run(["ldns-signzone", "-i", inception, "-o", name, "-f", z["zonefile"], unsigned,
              os.path.join(keys, key)], os.path.dirname(unsigned))
        short = {}
        for zone, owner, rtype, rdata in r.rr:
            if zone + "." == name and rtype == "TLSA" and rdata.startswith("\\#"):
                short.setdefault(owner.lower(), []).append(_generic(rdata))
        _restore_short_tlsa(z["zonefile"], {k: [d for d in v if len(d) <= 3]
                                            for k, v in short.items() if any(len(d) <= 3 for d in v)})


def build(world: dict) -> dict:
    """Write, sign and configure everything in ``DIR/dns``; return file paths."""
    d = os.path.join(world["dir"], "dns")
    keys = os.path.join(d, "keys")
    os.makedirs(keys, exist_ok=True)
    r = records_for(world)
    inception = (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(hours=1)).strftime("%Y%m%d%H%M%S")
    _front_zones(world, r, keys, inception)

    signed_zone = os.path.join(d, "test.zone")
    with open(signed_zone, "w") as f:
        f.write(r.zone_text(S.ZONE))
    with open(os.path.join(d, "insecure.test.zone"), "w") as f:
        f.write(r.zone_text(S.INSECURE_ZONE))
    for z in r.refused_zones:
        with open(os.path.join(d, z + "zone"), "w") as f:
            f.write(f"$TTL {TTL}\n{z} IN SOA {NS_NAME} hostmaster.{S.ZONE}. 1 3600 900 604800 {TTL}\n"
                    f"{z} IN NS {NS_NAME}\n")

    # RFC 6781 style KSK/ZSK split; ldns-keygen -k also writes the KSK's DS.
    ksk = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", f"{S.ZONE}."], keys)
    zsk = _run(["ldns-keygen", "-a", "ECDSAP256SHA256", f"{S.ZONE}."], keys)
    _run(["ldns-signzone", "-n", "-t", "0", "-i", inception, "-o", f"{S.ZONE}.",
          "-f", signed_zone + ".signed", signed_zone,
          os.path.join(keys, ksk), os.path.join(keys, zsk)], d)
    _make_bogus(signed_zone + ".signed", r.bogus)
    with open(os.path.join(keys, ksk + ".ds")) as f:
        ds = f.read()
    ta = world["dns"]["trust_anchor_file"]
    with open(ta, "w") as f:
        f.write(ds)

    nsd_conf = os.path.join(d, "nsd.conf")
    zones = [f'zone:\n  name: "{S.ZONE}."\n  zonefile: "{signed_zone}.signed"\n',
             f'zone:\n  name: "{S.INSECURE_ZONE}."\n  zonefile: "{d}/insecure.test.zone"\n']
    zones += [f'zone:\n  name: "{z}"\n  zonefile: "{d}/{z}zone"\n'
              f'  allow-query: 0.0.0.0/0 BLOCKED\n  allow-query: ::0/0 BLOCKED\n'
              for z in r.refused_zones]
    with open(nsd_conf, "w") as f:
        f.write(f'''server:
  ip-address: {world["dns"]["address"]}@{world["dns"]["port"]}
  do-ip6: no
  database: ""
  username: ""
  chroot: ""
  server-count: 1
  # Response rate limiting (on by default, 200 qps per source) would drop answers to the
  # relay's bursts from 127.0.0.1 and make lookups fail at random: off in the test world.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
  zonesdir: "{d}"
  pidfile: "{d}/nsd.pid"
  xfrdfile: "{d}/xfrd.state"
  xfrdir: "{d}"
  zonelistfile: "{d}/zone.list"
  logfile: "{d}/nsd.log"
  hide-version: yes
  verbosity: 1
  refuse-any: yes
remote-control:
  control-enable: no
''' + "".join(zones))

    # A validating stub for checks (unbound-host -C) - RFC 4035 §4.
    ub = world["dns"]["unbound_conf"]
    with open(ub, "w") as f:
        f.write(f'''server:
  do-not-query-localhost: no
  do-ip6: no
  local-zone: "{S.ZONE}." nodefault
  trust-anchor-file: "{ta}"
  val-log-level: 2
stub-zone:
  name: "{S.ZONE}."
  stub-addr: {world["dns"]["address"]}@{world["dns"]["port"]}
''')
    return {"nsd_conf": nsd_conf, "unbound_conf": ub, "trust_anchor": ta,
            "signed_zone": signed_zone + ".signed",
            "front_zones": [z["zonefile"] for z in world["dns"]["front"]["zones"]]}
