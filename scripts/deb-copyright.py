#!/usr/bin/env python3
"""Writes /usr/share/doc/tlsrelay/copyright (plain text) for the tlsrelay package: tlsrelay
itself, the Swift runtime linked in statically (--static-swift-stdlib), and every Swift package
of Package.resolved with the licence its checkout carries (they are linked in statically
too). Usage: deb-copyright.py --resolved Package.resolved --checkouts DIR > copyright"""

import argparse
import glob
import json
import os

MIT_TEXT = """Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:
.
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE."""


def licence_of(checkout):
    """(short name, copyright line) from the checkout's LICENSE file."""
    files = sorted(glob.glob(os.path.join(checkout, "LICENSE*")) + glob.glob(os.path.join(checkout, "COPYING*")))
    if not files:
        return None, None
    with open(files[0], encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    holder = next((line.strip() for line in text.splitlines() if line.strip().lower().startswith("copyright (c)")), None)
    if "Apache License" in text and "Version 2.0" in text:
        return "Apache-2.0", holder
    if "Permission is hereby granted, free of charge" in text:
        return "MIT", holder
    return None, holder


def indent(text):
    return "\n".join(" " + line if line.strip() else " ." for line in text.splitlines())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolved", required=True)
    parser.add_argument("--checkouts", required=True)
    args = parser.parse_args()
    with open(args.resolved, encoding="utf-8") as handle:
        pins = json.load(handle)["pins"]
    out = ["tlsrelay: a relayhost that delivers mail only over the TLS that DANE and",
           "MTA-STS require.",
           "",
           "Copyright (C) the tlsrelay authors.",
           "The tlsrelay source tree carries no licence statement of its own yet; ask its",
           "authors before redistributing it.",
           "",
           "The binaries /usr/sbin/tlsrelayd and /usr/sbin/tlsrelayctl are linked",
           "statically with the following components (and dynamically with the system",
           "libraries named in the package's Depends, which have their own copyright",
           "files).",
           "",
           "The Swift standard library, Foundation and the Swift runtime",
           "(swift build --static-swift-stdlib)",
           "  Copyright: Apple Inc. and the Swift project authors",
           "  License: Apache-2.0 with the Runtime Library Exception",
           "  (https://swift.org/LICENSE.txt)",
           ""]
    used = {"Apache-2.0"}
    for pin in sorted(pins, key=lambda p: p["identity"]):
        name = pin["identity"]
        checkout = os.path.join(args.checkouts, os.path.basename(pin["location"]).removesuffix(".git"))
        if not os.path.isdir(checkout):
            checkout = os.path.join(args.checkouts, name)
        short, holder = licence_of(checkout)
        version = pin["state"].get("version") or pin["state"].get("revision", "")[:12]
        out.append("Swift package %s %s, %s" % (name, version, pin["location"]))
        out.append("  Copyright: %s" % (holder[len("copyright (c)"):].strip() if holder else "the %s authors" % name))
        if short:
            used.add(short)
            out.append("  License: %s" % short)
        else:
            out.append("  License: see the LICENSE file of %s" % pin["location"])
        if name in ("swift-nio-ssl", "swift-crypto"):
            out.append("  It vendors BoringSSL (OpenSSL and ISC licences; see the package's")
            out.append("  Sources/CNIOBoringSSL or Sources/CCryptoBoringSSL).")
        out.append("")
    out += ["On Debian systems the full text of the Apache License, Version 2.0 is in",
            "/usr/share/common-licenses/Apache-2.0.", ""]
    if "MIT" in used:
        out += ["The MIT License:", "", MIT_TEXT.replace("\n.\n", "\n\n"), ""]
    print("\n".join(out).rstrip("\n"))


if __name__ == "__main__":
    main()
