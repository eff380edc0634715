"""The scenario table of the tlsrelay test world.

Each scenario is one recipient domain under the fake TLD ``test.`` (or under
the insecure child zone ``insecure.test.``) together with the MX hosts that
serve it, the certificate each host presents, its TLSA records, any MTA-STS
policy, and the outcome a correct relay must produce:

* RFC 7672 (SMTP security via opportunistic DANE TLS),
* RFC 8461 (MTA-STS), RFC 3207 (STARTTLS), RFC 7505 (null MX),
* RFC 5321 §5.1 (MX / implicit MX).

This module is pure data plus address allocation; ``world.plan()`` turns it
into ``world.json``.  The expected DNSSEC status of every lookup is *derived*
here from the same flags that ``zones.py`` uses to build the zone, and the
self-check (tests/test_world.py) verifies each claim with libunbound.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

ZONE = "test"                      # signed fake TLD
INSECURE_ZONE = "insecure.test"    # unsigned child, NS delegation without DS
DNS_PORT = 53


def addr(slot: int, third: int, fourth: int) -> str:
    """Address plan: 127.<slot>.<third>.<fourth>; slot 0 is the default world."""
    return f"127.{slot}.{third}.{fourth}"


def dns_address(slot: int = 0) -> str:
    return addr(slot, 1, 53)


def relay_listen(slot: int = 0) -> str:
    return f"{addr(slot, 0, 1)}:10031"


def bait_address(slot: int = 0) -> str:
    """Address signed for an A record that is made bogus afterwards (nothing listens)."""
    return addr(slot, 9, 9)


def front_address(slot: int = 0) -> str:
    """The DNS front (dnsfront.py, port 53): the signed child zones that NSD cannot serve."""
    return addr(slot, 1, 54)


FRONT_NS = f"ns-front.{ZONE}"      # NS name of every zone the DNS front serves (A in ``test.``)

# Server kinds (what listens on a host's address, port 25).
STARTTLS = "aiosmtpd-starttls"     # aiosmtpd offering STARTTLS (RFC 3207)
NOTLS = "aiosmtpd-plain"           # aiosmtpd without STARTTLS
POSTFIX = "postfix"                # recording tap -> real Postfix smtpd -> recording sink
DOWN = "down"                      # A record only: nothing listens there (connection refused)
ATTACKERS = ("strip-starttls", "starttls-454", "mitm-cert", "inject-after-220")
HOSTILE = "hostile"                # "hostile:<behaviour>": hostile.py on 127.S.6.N (no STARTTLS)


def hostile_address(slot: int, n: int) -> str:
    """The n-th hostile MX address (hostile.py), 127.<slot>.6.n."""
    return addr(slot, 6, n)


@dataclass
class Host:
    label: str                      # left-most label(s) relative to the domain, or FQDN if it ends in '.'
    preference: int = 10
    kind: str = STARTTLS            # STARTTLS | NOTLS | POSTFIX | DOWN | "attacker:<kind>" | "hostile:<behaviour>"
    cert: str = "good"              # pki.VARIANTS
    tlsa: list = field(default_factory=list)   # ["3 1 1 leaf", "2 1 1 ca", "3 1 1 random", ...]
    a_bogus: bool = False           # A record changed after signing (RFC 7672 §2.2.3)
    tlsa_bogus: bool = False        # TLSA changed after signing
    tlsa_servfail: bool = False     # _25._tcp.<host> delegated to a server answering REFUSED
    # more TLSA records in generic syntax, e.g. r"\# 2 0301" (2 octets, shorter than the 3 fixed
    # ones: RFC 7672 §3.1.3 "unusable"); served by the DNS front (front_zone)
    tlsa_malformed: list = field(default_factory=list)
    aaaa_servfail: bool = False     # AAAA lookup fails (SERVFAIL from the DNS front; front_zone)
    cname: Optional[str] = None     # label of the CNAME target (RFC 7672 §2.2.3)
    behaviour: Optional[dict] = None   # scripted replies written at `up` (aiosmtpd only; mx.py)
    requiretls: bool = False        # announces REQUIRETLS inside TLS (RFC 8689 §4; aiosmtpd-starttls only)
    smtputf8: bool = True           # announces SMTPUTF8 (RFC 6531); False: aiosmtpd enable_SMTPUTF8=False


@dataclass
class Scenario:
    name: str
    summary: str
    rfc: str
    hosts: list = field(default_factory=list)
    domain: Optional[str] = None    # default "<name>.test"
    mx: str = "mx"                  # mx | implicit | null | nxdomain | servfail | bogus
    sts: Optional[str] = None       # MTA-STS mode: enforce | testing | none
    sts_mx: Optional[list] = None   # policy "mx:" patterns (default: the MX host names)
    action: str = "deliver"         # deliver | defer | bounce
    status: str = "2.0.0"
    security: Optional[str] = None  # dane | mta-sts | mta-sts-testing | encrypt | opportunistic
    tls: Optional[bool] = None      # does the delivered message arrive over TLS
    via: Optional[str] = None       # label of the host that must receive the message
    u_label: Optional[str] = None   # the U-label form of an internationalized domain (A-label `domain`)


def _deliver(security, tls=True, via=None):
    return dict(action="deliver", status="2.0.0", security=security, tls=tls, via=via)


def _defer(status="4.7.5"):
    return dict(action="defer", status=status, security=None, tls=None, via=None)


def _bounce(status):
    return dict(action="bounce", status=status, security=None, tls=None, via=None)


def S(name, summary, rfc, hosts=(), expect=None, **kw) -> Scenario:
    return Scenario(name=name, summary=summary, rfc=rfc, hosts=list(hosts), **(expect or {}), **kw)


H = Host
LEAF = "3 1 1 leaf"
CA_TA = "2 1 1 ca"
NOMATCH = "3 1 1 random"

SCENARIOS: list[Scenario] = [
    # --- DANE (RFC 7672) -------------------------------------------------
    S("dane-ee", "DANE-EE 3 1 1 matches the MX leaf", "RFC 7672 §3.1.1",
      [H("mx", tlsa=[LEAF])], _deliver("dane")),
    S("dane-mixed", "one mismatching and one matching TLSA record: any usable match authenticates",
      "RFC 6698 §4.1, RFC 7672 §3", [H("mx", tlsa=[NOMATCH, LEAF])], _deliver("dane")),
    S("dane-ta", "DANE-TA 2 1 1 of the test CA; leaf names the MX host", "RFC 7672 §3.1.2",
      [H("mx", tlsa=[CA_TA])], _deliver("dane")),
    S("dane-ta-badname", "DANE-TA 2 1 1 matches, but the leaf does not name the MX host",
      "RFC 7672 §3.2.2", [H("mx", cert="wrongname", tlsa=[CA_TA])], _defer()),
    S("dane-ee-expired", "DANE-EE matches an expired leaf: no expiry check for DANE-EE",
      "RFC 7672 §3.1.1", [H("mx", cert="expired", tlsa=[LEAF])], _deliver("dane")),
    S("dane-ee-selfsigned", "DANE-EE matches a self-signed leaf: no PKIX/name check for DANE-EE",
      "RFC 7672 §3.1.1", [H("mx", cert="selfsigned", tlsa=[LEAF])], _deliver("dane")),
    S("dane-tlsa-mismatch", "secure TLSA records, none matches the presented chain",
      "RFC 7672 §2.2, §3", [H("mx", tlsa=[NOMATCH, "2 1 1 otherca"])], _defer()),
    S("dane-unusable", "only unusable TLSA (usage 0 and 1): STARTTLS required, no authentication",
      "RFC 7672 §3.1.3", [H("mx", tlsa=["0 1 1 random", "1 1 1 random"])], _deliver("encrypt")),
    S("dane-bogus-tlsa", "TLSA RRset bogus (rdata changed after signing; served data would match)",
      "RFC 7672 §2.2.3", [H("mx", tlsa=[LEAF], tlsa_bogus=True)], _defer()),
    S("dane-bogus-a", "MX host A record bogus (changed after signing): host unusable",
      "RFC 7672 §2.2.3", [H("mx", tlsa=[LEAF], a_bogus=True)], _defer()),
    S("dane-bogus-mx", "MX RRset bogus (changed after signing; served MX would work)",
      "RFC 7672 §2.2.1", [H("mx", tlsa=[LEAF])], _defer(), mx="bogus"),
    S("dane-tlsa-servfail", "secure MX host, TLSA lookup fails (_25._tcp delegated to a REFUSED server)",
      "RFC 7672 §2.1.1, §2.2.3", [H("mx", tlsa_servfail=True)], _defer()),
    S("dane-malformed-tlsa", "a matching DANE-EE record and a malformed TLSA record (2 octets of "
      "rdata) in one secure RRset: the malformed one is unusable, no more", "RFC 7672 §3.1.3",
      [H("mx", tlsa=[LEAF], tlsa_malformed=[r"\# 2 0301"])], _deliver("dane")),
    S("dane-aaaa-servfail", "secure A and matching TLSA, the AAAA lookup fails (SERVFAIL): "
      "deliver via the IPv4 address", "RFC 5321 §5.1, RFC 7672 §2.2",
      [H("mx", tlsa=[LEAF], aaaa_servfail=True)], _deliver("dane")),
    S("dane-postfix", "DANE-EE and DANE-TA, MX is a real Postfix smtpd",
      "RFC 7672 §3.1", [H("mx", kind=POSTFIX, tlsa=[LEAF, CA_TA])], _deliver("dane")),
    S("two-mx-second-good", "MX 10 has a mismatching TLSA, MX 20 is good: deliver via the second",
      "RFC 7672 §2.2, RFC 5321 §5.1",
      [H("mx1", 10, tlsa=[NOMATCH]), H("mx2", 20, tlsa=[LEAF])], _deliver("dane", via="mx2")),
    S("implicit-mx", "no MX, A at the domain, TLSA at _25._tcp.<domain>",
      "RFC 5321 §5.1, RFC 7672 §2.2.2", [H(".", tlsa=[LEAF])], _deliver("dane"), mx="implicit"),
    S("cname-mx", "MX host is a CNAME; TLSA at the expanded target name",
      "RFC 7672 §2.2.3", [H("mx", tlsa=[LEAF], cname="mx-target")], _deliver("dane")),
    # --- insecure DNS -------------------------------------------------------
    S("insecure-child", "domain in an unsigned delegated zone; its (ignored) TLSA would not match",
      "RFC 7672 §2.2.1, §2.2.3", [H("mx", cert="selfsigned", tlsa=[NOMATCH])],
      _deliver("opportunistic"), domain=INSECURE_ZONE),
    S("insecure-mx-signed", "insecure MX RRset, MX host in the signed zone with matching TLSA",
      "RFC 7672 §2.2.1", [H("mx.insecure-mx-signed.test.", tlsa=[LEAF])], _deliver("dane"),
      domain="signed-mx." + INSECURE_ZONE),
    # --- DNS failures and non-delivery ------------------------------------------
    S("null-mx", "null MX (MX 0 .)", "RFC 7505 §3", [], _bounce("5.1.10"), mx="null"),
    S("nxdomain", "the domain does not exist (secure NXDOMAIN)", "RFC 5321 §5.1",
      [], _bounce("5.1.2"), mx="nxdomain"),
    S("servfail-mx", "MX lookup fails (domain delegated to a REFUSED server)",
      "RFC 5321 §5.1, §4.5.4.1", [], _defer("4.4.3"), mx="servfail"),
    # --- no policy --------------------------------------------------------------
    S("no-tls", "MX without STARTTLS, no TLSA, no MTA-STS: cleartext is allowed",
      "RFC 7435, RFC 3207", [H("mx", kind=NOTLS)], _deliver("opportunistic", tls=False)),
    # --- MTA-STS (RFC 8461) -----------------------------------------------------
    S("sts-enforce", "MTA-STS enforce, valid WebPKI certificate", "RFC 8461 §4.2, §5",
      [H("mx")], _deliver("mta-sts"), sts="enforce"),
    S("sts-testing", "MTA-STS testing, valid certificate", "RFC 8461 §5",
      [H("mx")], _deliver("mta-sts-testing"), sts="testing"),
    S("sts-none", "MTA-STS none", "RFC 8461 §5", [H("mx")], _deliver("opportunistic"), sts="none"),
    S("sts-enforce-wildcard", "MTA-STS enforce with an mx: *.<domain> pattern", "RFC 8461 §4.1",
      [H("mx")], _deliver("mta-sts"), sts="enforce", sts_mx=["*.sts-enforce-wildcard.test"]),
    S("sts-enforce-otherca", "MTA-STS enforce, MX certificate from an untrusted CA",
      "RFC 8461 §4.2", [H("mx", cert="otherca")], _defer(), sts="enforce"),
    S("sts-enforce-wrongname", "MTA-STS enforce, MX certificate names another host",
      "RFC 8461 §4.2", [H("mx", cert="wrongname")], _defer(), sts="enforce"),
    S("sts-enforce-expired", "MTA-STS enforce, MX certificate expired",
      "RFC 8461 §4.2", [H("mx", cert="expired")], _defer(), sts="enforce"),
    S("sts-enforce-mx-mismatch", "MTA-STS enforce, MX host not matched by the policy",
      "RFC 8461 §4.1", [H("mx")], _defer(), sts="enforce", sts_mx=["mx.elsewhere.test"]),
    S("sts-testing-otherca", "MTA-STS testing, untrusted certificate: deliver anyway, report",
      "RFC 8461 §5", [H("mx", cert="otherca")], _deliver("mta-sts-testing"), sts="testing"),
    S("dane-sts-tlsa-mismatch", "DANE and MTA-STS enforce, TLSA mismatch: DANE governs",
      "RFC 8461 §2", [H("mx", tlsa=[NOMATCH])], _defer(), sts="enforce"),
    S("dane-unusable-sts", "only unusable TLSA (usage 0 and 1) and MTA-STS enforce, valid "
      "certificate: MTA-STS governs", "RFC 7672 §3.1.3, RFC 8461 §2",
      [H("mx", tlsa=["0 1 1 random", "1 1 1 random"])], _deliver("mta-sts"), sts="enforce"),
    S("dane-unusable-sts-otherca", "only unusable TLSA and MTA-STS enforce, MX certificate from an "
      "untrusted CA: the enforce policy's WebPKI check still applies", "RFC 7672 §3.1.3, RFC 8461 §2, §4.2",
      [H("mx", cert="otherca", tlsa=["0 1 1 random", "1 1 1 random"])], _defer(), sts="enforce"),
    S("dane-sts-mx-mismatch", "matching DANE-EE and MTA-STS enforce whose mx: patterns do not match "
      "the host: a host DANE authenticates is not judged by MTA-STS", "RFC 8461 §2",
      [H("mx", tlsa=[LEAF])], _deliver("dane"), sts="enforce", sts_mx=["mx.elsewhere.test"]),
    # --- active attackers (RFC 3207 §4.2, §6) ---------------------------------
    S("attack-strip-starttls", "DANE domain, MITM deletes STARTTLS from the EHLO reply",
      "RFC 7672 §2.2, RFC 3207 §6", [H("mx", kind="attacker:strip-starttls", tlsa=[LEAF])], _defer()),
    S("attack-starttls-454", "DANE domain, MITM answers STARTTLS with 454",
      "RFC 7672 §2.2, RFC 3207 §4", [H("mx", kind="attacker:starttls-454", tlsa=[LEAF])], _defer()),
    S("attack-mitm-cert", "DANE domain, MITM terminates TLS with a foreign-CA certificate",
      "RFC 7672 §3", [H("mx", kind="attacker:mitm-cert", tlsa=[LEAF])], _defer()),
    S("attack-inject", "DANE domain, MITM appends plaintext to the 220 reply to STARTTLS",
      "RFC 3207 §4.2", [H("mx", kind="attacker:inject-after-220", tlsa=[LEAF])], _defer()),
    S("attack-sts-strip-starttls", "MTA-STS enforce domain, MITM deletes STARTTLS",
      "RFC 8461 §5", [H("mx", kind="attacker:strip-starttls")], _defer(), sts="enforce"),
    S("sts-testing-strip", "MTA-STS testing domain, MITM deletes STARTTLS: testing mode never "
      "blocks, cleartext delivery is expected", "RFC 8461 §5",
      [H("mx", kind="attacker:strip-starttls")], _deliver("mta-sts-testing", tls=False), sts="testing"),
    S("attack-strip-nopolicy", "no policy, MITM deletes STARTTLS: cleartext delivery is expected",
      "RFC 7435 §3", [H("mx", kind="attacker:strip-starttls")],
      _deliver("opportunistic", tls=False)),
    # --- MX fallback and plain MX hosts (no TLSA, no MTA-STS) ---------------------
    S("two-mx-first-down", "MX 10 has an address where nothing listens, MX 20 is good: "
      "deliver via the second", "RFC 5321 §5.1, §4.5.4.1",
      [H("mx1", 10, kind=DOWN), H("mx2", 20)], _deliver("opportunistic", via="mx2")),
    S("two-mx-first-421", "MX 10 greets with 421 and closes, MX 20 is good: deliver via the second",
      "RFC 5321 §3.8, §5.1", [H("mx1", 10, behaviour={"greeting": "421 4.3.2 Service shutting down"}),
                              H("mx2", 20)], _deliver("opportunistic", via="mx2")),
    S("plain-mx", "one STARTTLS MX, no TLSA, no MTA-STS (for tests that script its replies)",
      "RFC 5321, RFC 3207", [H("mx")], _deliver("opportunistic")),
    S("plain-mx2", "a second plain STARTTLS MX domain (multi-domain tests)",
      "RFC 5321, RFC 3207", [H("mx")], _deliver("opportunistic")),
    S("dane-ee-down", "DANE-EE 3 1 1 host where nothing listens: defer (make bench starts its own "
      "STARTTLS sink on this address to measure relay rates over DANE-authenticated TLS)",
      "RFC 7672 §2.2, RFC 5321 §4.5.4.1", [H("mx", kind=DOWN, tlsa=[LEAF])], _defer("4.4.1")),
]

# --- hostile MX hosts (hostile.py) ------------------------------------------------------
# Robustness domains for integration/test_hostile_mx.py, kept out of SCENARIOS (the suites that
# deliver once to every scenario, test_delivery.py and test_tlsrelayctl.py, use SCENARIOS only):
# secure MX and A, no TLSA, no MTA-STS (plain opportunistic), hosts that offer no STARTTLS and
# break SMTP on purpose, one behaviour per address (hostile.py documents each).  The TARPIT_COUNT
# tarpit-NN domains all name one MX host, TARPIT_HOST, so they share one address.
TARPIT_HOST = f"mx.hostile-tarpit.{ZONE}."
TARPIT_COUNT = 25
_CLEAR = dict(action="deliver", status="2.0.0", security="opportunistic", tls=False, via=None)


def _hostile(behaviour, summary, rfc, expect):
    return S(f"hostile-{behaviour}", summary, rfc, [H("mx", kind=f"{HOSTILE}:{behaviour}")], expect)


HOSTILE_SCENARIOS: list[Scenario] = [
    _hostile("early-250-same-segment", "DATA answered 354 and 250 in one segment: a final reply "
             "before any message data is a protocol error, never a delivery",
             "RFC 5321 §4.1.1.4, §4.2", _defer("4.5.0")),
    _hostile("early-250-midbody", "250 while the message data is being sent, then a reset: "
             "not delivered", "RFC 5321 §4.1.1.4", _defer("4.5.0")),
    _hostile("unsolicited-nopipelining", "no PIPELINING, MAIL answered with two replies: the "
             "session is out of step, nothing more may be sent", "RFC 5321 §4.2, RFC 2920 §3.1",
             _defer("4.5.0")),
    _hostile("unsolicited-pipelining", "PIPELINING, one surplus reply in the batch",
             "RFC 2920 §3.1", _defer("4.5.0")),
    _hostile("two-250-after-dot", "two 250 replies after the end of data: the first one delivers, "
             "the surplus ends the connection", "RFC 5321 §4.1.1.4, §4.2", _CLEAR),
    _hostile("slow-final", "the 250 after the dot comes 20 s late (within the 10 minutes "
             "RFC 5321 allows): delivered, other domains unaffected", "RFC 5321 §4.5.3.2.6", _CLEAR),
    _hostile("control-bytes", "greeting and replies carry NUL, ESC, OSC, DEL and invalid UTF-8: "
             "delivered, logged escaped", "RFC 5321 §4.2", _CLEAR),
    _hostile("huge-size", "EHLO offers SIZE 99999999999999999999999999: delivered",
             "RFC 1870 §4", _CLEAR),
    _hostile("slowloris", "the greeting trickles one byte per second and never ends",
             "RFC 5321 §4.5.3.2.1", _defer("4.4.2")),
    _hostile("endless-reply", "EHLO answered with an endless stream of 250- lines",
             "RFC 5321 §4.2.1, §4.5.3.1", _defer("4.5.0")),
    _hostile("bad-code", "every reply after the greeting is 999 what", "RFC 5321 §4.2",
             _defer("4.5.0")),
] + [S(f"tarpit-{i:02d}", f"one of {TARPIT_COUNT} domains whose MX ({TARPIT_HOST[:-1]}) accepts "
       "TCP and never answers", "RFC 5321 §4.5.3.2.1",
       [H(TARPIT_HOST, kind=f"{HOSTILE}:tarpit")], _defer("4.4.2"))
     for i in range(1, TARPIT_COUNT + 1)]

# --- REQUIRETLS (RFC 8689) ----------------------------------------------------------------
# MX hosts that announce REQUIRETLS inside TLS (mx.py), for integration/test_requiretls.py: one
# per kind of authentication a REQUIRETLS message may or may not rely on (RFC 8689 §4.2.1: DANE,
# or MTA-STS enforce; not MTA-STS testing, not none).  Their expected outcome is that of an
# ordinary message; a REQUIRETLS message is delivered to the first two only.  The MX hosts that
# do not announce REQUIRETLS are the ordinary ones (dane-ee, sts-enforce, ...).  Kept out of
# SCENARIOS like the hostile ones, so the suites that deliver once to every scenario are unchanged.
REQUIRETLS_SCENARIOS: list[Scenario] = [
    S("requiretls-dane", "DANE-EE 3 1 1, the MX announces REQUIRETLS: a REQUIRETLS message is "
      "delivered, with REQUIRETLS on MAIL FROM", "RFC 8689 §4.2.1, RFC 7672 §3.1.1",
      [H("mx", tlsa=[LEAF], requiretls=True)], _deliver("dane")),
    S("requiretls-sts", "MTA-STS enforce, the MX announces REQUIRETLS: a REQUIRETLS message is "
      "delivered, with REQUIRETLS on MAIL FROM", "RFC 8689 §4.2.1, RFC 8461 §5",
      [H("mx", requiretls=True)], _deliver("mta-sts"), sts="enforce"),
    S("requiretls-sts-testing", "MTA-STS testing, the MX announces REQUIRETLS: testing "
      "authenticates nothing, a REQUIRETLS message bounces 5.7.30", "RFC 8689 §4.2.1, RFC 8461 §5",
      [H("mx", requiretls=True)], _deliver("mta-sts-testing"), sts="testing"),
    S("requiretls-nopolicy", "no TLSA, no MTA-STS, the MX announces REQUIRETLS: a REQUIRETLS "
      "message bounces 5.7.30", "RFC 8689 §4.2.1", [H("mx", requiretls=True)],
      _deliver("opportunistic")),
]

# --- internationalized domains (IDNA 2008, RFC 5890/5891) -------------------------------------
# A-label domains in the signed zone for integration/test_idn.py: a client writes the U-label
# (with SMTPUTF8), the relay must route, look up TLSA/MTA-STS and check names by the A-label and
# put the A-label on the wire.  ``faß`` is the UTS #46 non-transitional case (xn--fa-hia; the
# transitional "fass.test" does not exist: NXDOMAIN).  The MX of idn-no-smtputf8 does not announce
# SMTPUTF8 (RFC 6531 §3.4: an ASCII local part at an IDN domain is still deliverable there, a UTF-8
# local part bounces 5.6.7).  Kept out of SCENARIOS like the hostile and REQUIRETLS ones.
IDN_SCENARIOS: list[Scenario] = [
    S("idn-dane", "bücher.test (A-label xn--bcher-kva.test), DANE-EE 3 1 1 of the MX leaf, whose "
      "SAN is the A-label MX name", "RFC 5891 §4, RFC 7672 §3.1.1", [H("mx", tlsa=[LEAF])],
      _deliver("dane"), domain="xn--bcher-kva." + ZONE, u_label="bücher." + ZONE),
    S("idn-sts", "faß.test (UTS #46 non-transitional A-label xn--fa-hia.test), MTA-STS enforce "
      "with the A-label MX name in the policy", "RFC 5891 §4, UTS #46, RFC 8461 §4.1",
      [H("mx")], _deliver("mta-sts"), sts="enforce", domain="xn--fa-hia." + ZONE,
      u_label="faß." + ZONE),
    S("idn-no-smtputf8", "müller.test (A-label xn--mller-kva.test), DANE-EE, the MX does not "
      "announce SMTPUTF8", "RFC 6531 §3.4, RFC 7672 §3.1.1", [H("mx", tlsa=[LEAF], smtputf8=False)],
      _deliver("dane"), domain="xn--mller-kva." + ZONE, u_label="müller." + ZONE),
]

ALL_SCENARIOS: list[Scenario] = SCENARIOS + HOSTILE_SCENARIOS + REQUIRETLS_SCENARIOS + IDN_SCENARIOS


def domain_of(s: Scenario) -> str:
    return s.domain or f"{s.name}.{ZONE}"


def host_name(s: Scenario, label: str) -> str:
    """FQDN (no trailing dot) of a host label relative to the scenario domain."""
    if label == ".":
        return domain_of(s)
    if label.endswith("."):
        return label[:-1]
    return f"{label}.{domain_of(s)}"


def zone_of(name: str) -> str:
    n = name.rstrip(".")
    return INSECURE_ZONE if n == INSECURE_ZONE or n.endswith("." + INSECURE_ZONE) else ZONE


def front_zone(s: Scenario, h: Host) -> Optional[str]:
    """The signed child zone (FQDN with trailing dot, delegated with a DS from ``test.``) that
    the DNS front serves for this host, or None (NSD serves its records).

    NSD 4.6 answers every type of a name alike and refuses TLSA rdata shorter than the three
    fixed octets (even as ``\\# 2 0301``), so an AAAA failure takes the host's own zone
    ``<host>.`` and a malformed TLSA record the zone ``_25._tcp.<host>.``."""
    base = host_name(s, h.cname) if h.cname else host_name(s, h.label)
    if h.aaaa_servfail:
        return base + "."
    if h.tlsa_malformed:
        return f"_25._tcp.{base}."
    return None


def dnssec_of(name: str) -> str:
    return "insecure" if zone_of(name) == INSECURE_ZONE else "secure"


def lookup(name, rtype, status, result):
    """One expected validating-resolver answer: status secure|insecure|bogus|servfail,
    result data|nodata|nxdomain|none (none = no answer, SERVFAIL)."""
    return {"name": name, "type": rtype, "status": status, "result": result}


def expected_mx_lookup(s: Scenario) -> dict:
    d = domain_of(s)
    return {
        "mx": lookup(d, "MX", dnssec_of(d), "data"),
        "implicit": lookup(d, "MX", dnssec_of(d), "nodata"),
        "null": lookup(d, "MX", "secure", "data"),
        "nxdomain": lookup(d, "MX", "secure", "nxdomain"),
        "servfail": lookup(d, "MX", "servfail", "none"),
        "bogus": lookup(d, "MX", "bogus", "data"),
    }[s.mx]


def expected_host_lookups(s: Scenario, h: Host) -> dict:
    name = host_name(s, h.label)
    base = host_name(s, h.cname) if h.cname else name
    tname = f"_25._tcp.{base}"
    a = lookup(name, "A", "bogus" if h.a_bogus else dnssec_of(base), "data")
    # no host has an AAAA record: NODATA, except where the DNS front fails the lookup
    aaaa = (lookup(name, "AAAA", "servfail", "none") if h.aaaa_servfail
            else lookup(name, "AAAA", dnssec_of(base), "nodata"))
    if h.tlsa_servfail:
        t = lookup(tname, "TLSA", "servfail", "none")
    elif h.tlsa_bogus:
        t = lookup(tname, "TLSA", "bogus", "data")
    else:
        t = lookup(tname, "TLSA", dnssec_of(base),
                   "data" if h.tlsa or h.tlsa_malformed else "nxdomain")
    return {"a": a, "aaaa": aaaa, "tlsa": t}
