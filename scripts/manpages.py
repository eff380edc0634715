#!/usr/bin/env python3
"""Renders the man pages tlsrelayd(8), tlsrelayctl(8) and tlsrelay.toml(5) (man(7) roff).

One source for each part, so the pages cannot drift from what they describe:
  - the commands, options, arguments, defaults and help texts come from the binaries
    themselves (`<bin> --experimental-dump-help`, swift-argument-parser's JSON dump of the
    whole command tree), and the version from `tlsrelayd --version`;
  - tlsrelay.toml(5) is rendered from etc/tlsrelay.toml: its [sections], its keys with the
    values written there (the defaults), and the comment lines above each key;
  - the framing (DESCRIPTION, FILES, SIGNALS, EXIT STATUS, SEE ALSO) is the text in man/*.in.

Usage: scripts/manpages.py [--bin-dir .build/release] [--config etc/tlsrelay.toml]
                           [--out .build-man]
The date in the pages is SOURCE_DATE_EPOCH when set, else the date of the last commit, else
CHANGELOG.md's modification time: the same tree renders the same bytes.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# roff helpers

def esc(text):
    """Escapes plain text for a roff text line or macro argument: backslashes, minus signs
    (so options copy and paste as ASCII), and every non-ASCII character as \\[uXXXX] (no
    dependence on the input encoding that groff or mandoc assume)."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\e")
        elif ch == "-":
            out.append("\\-")
        elif ord(ch) > 126:
            out.append("\\[u%04X]" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def inline(text):
    """Plain text with `code` spans in bold."""
    parts = re.split(r"`([^`]*)`", text)
    out = []
    for index, part in enumerate(parts):
        out.append("\\fB" + esc(part) + "\\fR" if index % 2 else esc(part))
    return "".join(out)


def safe_lines(text):
    """Splits rendered text into lines that cannot be read as requests: a line starting with
    '.' or a quote gets a zero-width \\& in front; blank lines are dropped (they are paragraph
    breaks in roff, and warnings in mandoc -Tlint)."""
    lines = []
    for line in text.split("\n"):
        line = line.rstrip()
        if not line:
            continue
        if line[0] in ".'":
            line = "\\&" + line
        lines.append(line)
    return lines


def paragraphs(text):
    """Prose (paragraphs separated by blank lines) as roff lines, one sentence per line where
    the sentence ends a source line (roff's rule for end-of-sentence spacing)."""
    out = []
    for index, para in enumerate(re.split(r"\n\s*\n", text.strip())):
        if index:
            out.append(".PP")
        joined = " ".join(line.strip() for line in para.split("\n"))
        # One sentence per line: "end. Next" starts a new line.
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(`\"])", joined)
        for sentence in sentences:
            # Wrapped at spaces to short source lines (mandoc -Tlint's style); a break inside
            # a \fB...\fR span is harmless.
            wrapped = textwrap.fill(inline(sentence), width=78, break_long_words=False, break_on_hyphens=False)
            out.extend(safe_lines(wrapped))
    return out


def code_block(lines, nested=False):
    """A literal block; nested: inside a tagged paragraph (indented as its text)."""
    out = [".RS" if nested else ".RS 4", ".nf"]
    for line in lines:
        out.append("\\&" + esc(line) if line else "")
    # No blank lines inside .nf either: mandoc warns about them.
    out = [line if line else "\\&" for line in out]
    out += [".fi", ".RE"]
    return out


def read_framing(name):
    """man/NAME.in: sections as '## TITLE' lines followed by prose (blank line = new
    paragraph), indented lines ('    ...') as literal blocks, and '- tag: text' items as
    tagged paragraphs."""
    path = os.path.join(ROOT, "man", name + ".in")
    sections = {}
    current = None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line.startswith("## "):
                current = line[3:].strip()
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
    return {title: "\n".join(lines).strip("\n") for title, lines in sections.items()}


def render_framing(text, substitutions):
    """Renders one framing section (see read_framing)."""
    for key, value in substitutions.items():
        text = text.replace("@" + key + "@", value)
    out = []
    block = []  # prose lines of the current paragraph
    literal = []

    def flush_prose():
        if block:
            if out and out[-1] not in (".PP",) and not out[-1].startswith(".SH"):
                pass
            out.extend(paragraphs("\n".join(block)))
            block.clear()

    def flush_literal():
        if literal:
            out.extend(code_block(literal))
            literal.clear()

    pending_pp = False
    for line in text.split("\n"):
        item = re.match(r"^- (.+?): (.*)$", line)
        if line.startswith("    "):
            flush_prose()
            literal.append(line[4:])
        elif item:
            flush_prose()
            flush_literal()
            out.append(".TP")
            out.extend(safe_lines(inline(item.group(1)).join(["\\fB", "\\fR"]) if not item.group(1).startswith("`") else inline(item.group(1))))
            block.append(item.group(2))
        elif line.startswith("  ") and block:
            block.append(line.strip())  # continuation of an item
        elif not line.strip():
            flush_prose()
            flush_literal()
            pending_pp = True
        else:
            flush_literal()
            if pending_pp and out:
                out.append(".PP")
            block.append(line)
        if line.strip():
            pending_pp = False
    flush_prose()
    flush_literal()
    return out


def header(title, section, date, version, manual):
    return [
        '.\\" Generated by scripts/manpages.py from the binaries\' --experimental-dump-help,',
        '.\\" etc/tlsrelay.toml and man/*.in. Do not edit: edit those and run make man.',
        '.TH "%s" "%s" "%s" "tlsrelay %s" "%s"' % (title.upper(), section, date, version, manual),
        ".nh",  # no hyphenation: paths, keys and options stay whole
        ".ad l",
    ]


def name_line(name, abstract):
    """NAME: 'tlsrelayd \\- a relayhost ...' (lower case, no final period), wrapped."""
    text = abstract.strip().rstrip(".")
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return textwrap.fill("%s \\- %s" % (esc(name), esc(text)), width=78, break_long_words=False, break_on_hyphens=False).split("\n")


# --------------------------------------------------------------------------------------------
# The command pages, from ArgumentParser's dump

def dump_help(binary):
    output = subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True, text=True).stdout
    return json.loads(output)["command"]


def version_of(binary):
    output = subprocess.run([binary, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    return output.split()[-1]


def names_of(argument):
    """['-h', '--help'] from the dump's names, short first."""
    result = []
    for name in argument.get("names", []):
        kind, text = name["kind"], name["name"]
        result.append(("-" if kind in ("short", "longWithSingleDash") else "--") + text)
    return sorted(result, key=lambda n: (n.startswith("--"), n))


def value_name(argument):
    return (argument.get("valueName") or "value").upper()


def option_tag(argument):
    """The tag of an option or argument in OPTIONS: \\fB\\-\\-config\\fR \\fIFILE\\fR."""
    if argument["kind"] == "positional":
        return "\\fI" + esc(value_name(argument)) + "\\fR"
    names = ", ".join("\\fB" + esc(n) + "\\fR" for n in names_of(argument))
    if argument["kind"] == "option":
        names += " \\fI" + esc(value_name(argument)) + "\\fR"
    return names


def synopsis_word(argument):
    if argument["kind"] == "positional":
        word = "\\fI" + esc(value_name(argument)) + "\\fR"
    else:
        name = names_of(argument)[-1]
        word = "\\fB" + esc(name) + "\\fR"
        if argument["kind"] == "option":
            word += " \\fI" + esc(value_name(argument)) + "\\fR"
    if argument.get("isRepeating"):
        word += "\\ ..."
    return "[" + word + "]" if argument.get("isOptional") else word


def synopsis(name, words):
    """One synopsis line as a paragraph with a hanging indent (.SY/.YS: groff and mandoc)."""
    return [".SY " + esc(name)] + textwrap.fill(" ".join(words), width=78, break_long_words=False, break_on_hyphens=False).split("\n") + [".YS"]


def visible(arguments):
    return [a for a in arguments or [] if a.get("shouldDisplay", True)]


def is_builtin(argument):
    """--help and --version, which ArgumentParser adds to every command."""
    return argument["kind"] == "flag" and set(names_of(argument)) <= {"-h", "--help", "--version"}


def describe_argument(argument):
    text = (argument.get("abstract") or "").strip()
    if argument.get("discussion"):
        text += "\n\n" + argument["discussion"].strip()
    values = argument.get("allValues") or argument.get("allValueStrings")
    if values:
        text += " One of: " + ", ".join("`%s`" % v for v in values) + "."
    default = argument.get("defaultValue")
    if default not in (None, "") and argument["kind"] != "flag":
        text += " Default: `%s`." % default
    return paragraphs(text)


def options_list(arguments):
    out = []
    for argument in arguments:
        out.append(".TP")
        out.append(option_tag(argument))
        out.extend(describe_argument(argument))
    return out


def leaf_commands(command, path=()):
    """(path, command) of every runnable command, depth first, in the dump's order."""
    path = path + (command["commandName"],)
    subcommands = [c for c in command.get("subcommands") or [] if c.get("shouldDisplay", True)]
    if not subcommands:
        return [(path, command)]
    result = []
    for sub in subcommands:
        result.extend(leaf_commands(sub, path))
    return result


def render_tlsrelayd(dump, framing, date, version):
    name = dump["commandName"]
    arguments = visible(dump.get("arguments"))
    out = header(name, "8", date, version, "System Manager's Manual")
    out += [".SH NAME"] + name_line(name, dump["abstract"])
    out += [".SH SYNOPSIS"]
    out += synopsis(name, [synopsis_word(a) for a in arguments if not is_builtin(a)])
    out += synopsis(name, ["\\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR"])
    out += [".SH DESCRIPTION"] + render_framing(framing.pop("DESCRIPTION"), {})
    if dump.get("discussion"):
        out += [".PP"] + paragraphs(dump["discussion"])
    out += [".SH OPTIONS"] + options_list(arguments)
    for title, text in framing.items():
        out += [".SH " + esc(title)] + render_framing(text, {})
    return out


def render_tlsrelayctl(dump, framing, date, version):
    name = dump["commandName"]
    leaves = leaf_commands(dump)
    # Options that every command has with the same help (the --config/--json option group
    # and ArgumentParser's --help): described once, under OPTIONS.
    def key(argument):
        return (tuple(names_of(argument)), argument["kind"], argument.get("abstract"), argument.get("defaultValue"))
    common_keys = None
    for path, command in leaves:
        if path[1:] == ("help",):
            continue  # ArgumentParser's own help command has none of the common options
        keys = {key(a) for a in visible(command.get("arguments")) if a["kind"] != "positional"}
        common_keys = keys if common_keys is None else common_keys & keys
    common = [a for a in visible(leaves[0][1].get("arguments")) if key(a) in common_keys]
    common += [a for a in visible(dump.get("arguments")) if key(a) not in common_keys]  # --version

    out = header(name, "8", date, version, "System Manager's Manual")
    out += [".SH NAME"] + name_line(name, dump["abstract"])
    out += [".SH SYNOPSIS"]
    global_words = [synopsis_word(a) for a in common if not is_builtin(a)]
    for path, command in leaves:
        own = [a for a in visible(command.get("arguments")) if key(a) not in common_keys and not is_builtin(a)]
        words = ["\\fB" + esc(" ".join(path[1:])) + "\\fR"] + [synopsis_word(a) for a in own]
        if path[1:] != ("help",):
            words = global_words + words
        out += synopsis(path[0], words)
    out += synopsis(name, ["\\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR"])
    out += [".SH DESCRIPTION"] + paragraphs(dump.get("discussion") or dump["abstract"])
    if "DESCRIPTION" in framing:
        out += [".PP"] + render_framing(framing.pop("DESCRIPTION"), {})
    out += [".SH OPTIONS", "These options are accepted by every command, before or after its name."]
    out += options_list(common)
    out += [".SH COMMANDS"]

    def walk(command, path):
        path = path + (command["commandName"],)
        subcommands = [c for c in command.get("subcommands") or [] if c.get("shouldDisplay", True)]
        if len(path) > 1:
            own = [a for a in visible(command.get("arguments")) if key(a) not in common_keys]
            if subcommands:
                out.append(".SS " + '"%s"' % esc(" ".join(path[1:])))
                out.extend(paragraphs(command.get("abstract") or ""))
            else:
                positionals = tuple(("[%s]" if a.get("isOptional") else "%s") % value_name(a) for a in own if a["kind"] == "positional")
                out.append(".SS " + '"%s"' % esc(" ".join(path[1:] + positionals)))
                out.extend(paragraphs(command.get("abstract") or ""))
            if command.get("discussion"):
                out.append(".PP")
                out.extend(paragraphs(command["discussion"]))
            if own:
                out.extend(options_list(own))
        for sub in subcommands:
            walk(sub, path)
    walk(dump, ())
    for title, text in framing.items():
        out += [".SH " + esc(title)] + render_framing(text, {})
    return out


# --------------------------------------------------------------------------------------------
# tlsrelay.toml(5), from the example configuration

KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
SECTION_LINE = re.compile(r"^\[(\[?)([A-Za-z0-9_.]+)\]?\]\s*$")
CODE_COMMENT = re.compile(r"^(\[\[?[a-z_.]+\]\]?|[a-z_][a-z0-9_]*\s*=\s*\S.*)$")
INLINE_CODE = re.compile(r"^(.*[:.])\s+([a-z_][a-z0-9_]*\s*=\s*\S.*)$")


def parse_config(path):
    """Reads the example configuration into (intro, [(section, [entry])]). An entry is
    {'keys': [(name, value)], 'text': [comment lines], 'commented': bool}: the comment block
    above a run of key lines (a block describes every key of the run), or a key that is only
    shown commented out (`# hostname = "..."` ending the prose about it), or a free comment
    block that no key follows."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle]
    intro = []
    index = 0
    while index < len(lines) and lines[index].startswith("#"):
        intro.append(lines[index][1:].strip())
        index += 1
    sections = [("", [])]
    comments = []
    keys = []

    def close_entry():
        if keys:
            sections[-1][1].append({"keys": list(keys), "text": list(comments), "commented": False})
        elif comments:
            sections[-1][1].append({"keys": [], "text": list(comments), "commented": False})
        keys.clear()
        comments.clear()

    for line in lines[index:]:
        stripped = line.strip()
        if not stripped:
            close_entry()
        elif stripped.startswith("#"):
            if keys:
                close_entry()
            comments.append(stripped[1:][1:] if stripped[1:2] == " " else stripped[1:])
        elif SECTION_LINE.match(stripped):
            close_entry()
            match = SECTION_LINE.match(stripped)
            sections.append((match.group(2), []))
        else:
            match = KEY_LINE.match(stripped)
            if not match:
                raise SystemExit("%s: cannot read line: %s" % (path, line))
            keys.append((match.group(1), match.group(2)))
    close_entry()

    # Split a block at a commented-out key that is not one of the keys the block describes and
    # that prose follows: that key is documented only in the comment (server.hostname).
    for _, entries in sections:
        result = []
        for entry in entries:
            names = {name for name, _ in entry["keys"]}
            text = entry["text"]
            start = 0
            for position, comment in enumerate(text):
                match = KEY_LINE.match(comment.strip())
                follows_prose = position + 1 < len(text) and not CODE_COMMENT.match(text[position + 1].strip())
                if match and match.group(1) not in names and comment == comment.strip() and follows_prose and start <= position:
                    result.append({"keys": [(match.group(1), match.group(2))], "text": text[start:position + 1], "commented": True})
                    start = position + 1
            entry["text"] = text[start:]
            result.append(entry)
        entries[:] = result
    return intro, sections


def comment_to_roff(text, nested):
    """Comment lines to roff: prose joined into paragraphs ('#' alone separates them); lines
    that are TOML (a commented-out `key = value`, a [table] header), indented lines (tables,
    continuations) and the TOML after 'Example:' set as literal blocks. nested: the text of a
    tagged paragraph (its paragraph breaks are .IP, which keep the indentation)."""
    out = []
    prose = []
    literal = []
    brk = ".IP" if nested else ".PP"

    def flush_prose():
        if prose:
            if out and out[-1] in (".fi", ".RE"):
                out.append(brk)
            out.extend(paragraphs("\n".join(prose)))
            prose.clear()

    def flush_literal():
        if literal:
            # TOML lines flush left; a table keeps its columns, less its common indentation.
            indent = min(len(line) - len(line.lstrip()) for line in literal)
            out.extend(code_block([line[indent:] for line in literal], nested))
            literal.clear()

    for line in text:
        if not line.strip():
            flush_prose()
            flush_literal()
            out.append(brk)
            continue
        inline_code = INLINE_CODE.match(line)
        if CODE_COMMENT.match(line.strip()):
            flush_prose()
            literal.append(line.strip())
        elif line.startswith(" "):
            flush_prose()
            literal.append(line)
        elif inline_code:
            flush_literal()
            prose.append(inline_code.group(1))
            flush_prose()
            literal.append(inline_code.group(2))
        else:
            flush_literal()
            prose.append(line)
    flush_prose()
    flush_literal()
    while out and out[0] == brk:
        out.pop(0)
    while out and out[-1] == brk:
        out.pop()
    return out


def split_lead(entry):
    """A block of several paragraphs whose first one names none of its keys: that paragraph
    is about the section (e.g. [policy]'s order of precedence), not about the keys."""
    text = entry["text"]
    if "" not in text or not entry["keys"]:
        return [], text
    cut = text.index("")
    lead = " ".join(text[:cut])
    if any(name in lead for name, _ in entry["keys"]):
        return [], text
    return text[:cut], text[cut + 1:]


def render_config(path, framing, date, version):
    intro, sections = parse_config(path)
    headings = {}
    heading_text = framing.pop("SECTIONS", "")
    for line in heading_text.split("\n"):
        match = re.match(r"^- \[(.+?)\]: (.*)$", line)
        if match:
            headings[match.group(1)] = match.group(2)
    out = header("tlsrelay.toml", "5", date, version, "File Formats Manual")
    out += [".SH NAME", "tlsrelay.toml \\- configuration file of the tlsrelay mail relay"]
    out += [".SH SYNOPSIS", ".I /etc/tlsrelay/tlsrelay.toml"]
    out += [".SH DESCRIPTION"] + paragraphs("\n".join(intro))
    out += [".PP"] + render_framing(framing.pop("DESCRIPTION"), {})
    for name, entries in sections:
        if name:
            out.append(".SH " + esc("[%s]" % name))
            if name not in headings:
                raise SystemExit("man/tlsrelay.toml.5.in: no heading for [%s] under ## SECTIONS" % name)
            out.extend(paragraphs(headings[name]))
        else:
            out.append(".SH \"TOP-LEVEL KEYS\"")
        for entry in entries:
            if not entry["keys"]:
                # A comment block that no key follows: a table of its own (a [[table]] line
                # in its example names it) or more text about the section.
                tables = [line.strip() for line in entry["text"] if re.match(r"^\s*\[\[[a-z_.]+\]\]\s*$", line)]
                out.append(".SS " + esc(tables[0]) if tables else ".PP")
                out.extend(comment_to_roff(entry["text"], nested=False))
                continue
            lead, entry["text"] = split_lead(entry)
            if lead:
                out.append(".PP")
                out.extend(comment_to_roff(lead, nested=False))
            for position, (key, value) in enumerate(entry["keys"]):
                out.append(".TP" if position == 0 else ".TQ")
                if entry["commented"]:
                    out.append("\\fB%s\\fR (not set by default)" % esc(key))
                else:
                    out.append("\\fB%s\\fR = %s" % (esc(key), esc(value)))
            out.extend(comment_to_roff(entry["text"], nested=True))
    for title, text in framing.items():
        out += [".SH " + esc(title)] + render_framing(text, {})
    return out


# --------------------------------------------------------------------------------------------

def page_date():
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        try:
            epoch = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            epoch = ""
    if not epoch:
        epoch = int(os.path.getmtime(os.path.join(ROOT, "CHANGELOG.md")))
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%d")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, ".build", "release"),
                        help="directory with the tlsrelayd and tlsrelayctl binaries")
    parser.add_argument("--config", default=os.path.join(ROOT, "etc", "tlsrelay.toml"))
    parser.add_argument("--out", default=os.path.join(ROOT, ".build-man"))
    args = parser.parse_args()

    daemon = os.path.join(args.bin_dir, "tlsrelayd")
    control = os.path.join(args.bin_dir, "tlsrelayctl")
    for binary in (daemon, control):
        if not os.access(binary, os.X_OK):
            raise SystemExit("manpages.py: %s is missing: build first (make release, or --bin-dir DIR)" % binary)
    version = version_of(daemon)
    date = page_date()
    os.makedirs(args.out, exist_ok=True)
    pages = {
        "tlsrelayd.8": render_tlsrelayd(dump_help(daemon), read_framing("tlsrelayd.8"), date, version),
        "tlsrelayctl.8": render_tlsrelayctl(dump_help(control), read_framing("tlsrelayctl.8"), date, version),
        "tlsrelay.toml.5": render_config(args.config, read_framing("tlsrelay.toml.5"), date, version),
    }
    for name, lines in pages.items():
        with open(os.path.join(args.out, name), "w", encoding="ascii") as handle:
            handle.write("\n".join(lines) + "\n")
        print(os.path.join(args.out, name))


if __name__ == "__main__":
    sys.exit(main())
