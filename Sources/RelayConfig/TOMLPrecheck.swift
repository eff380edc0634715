/// A light scan of TOML text for the syntax errors that toml++ (the parser inside TOMLKit)
/// does not report but stops the process on, with an assertion: a table header without a key
/// (`[>[x]]`, `[ ]`) and a closing bracket that does not match the innermost open array or
/// inline table (`listen = ["a", }]`). Both are invalid TOML 1.0 ("Table", "Array", "Inline
/// Table"); everything else is left to toml++. Strings (basic, literal, multi-line) and
/// comments are skipped, so brackets inside them do not count. Found by fuzzing.
enum TOMLPrecheck {
    /// The first such error: its line (from 1) and the reason; nil when there is none.
    static func firstError(in text: String) -> (line: Int, reason: String)? {
        let scalars = Array(text.unicodeScalars)
        var index = 0
        var line = 1
        var atLineStart = true
        var open: [Unicode.Scalar] = []

        func skipToEndOfLine() {
            while index < scalars.count && scalars[index] != "\n" { index += 1 }
        }

        /// Skips a string that starts at `index`; counts the lines it spans.
        func skipString() {
            let quote = scalars[index]
            let basic = quote == "\""
            if index + 2 < scalars.count && scalars[index + 1] == quote && scalars[index + 2] == quote {
                index += 3
                while index < scalars.count {
                    let scalar = scalars[index]
                    if basic && scalar == "\\" {
                        // An escape; a backslash at the end of a line joins the next one.
                        if index + 1 < scalars.count && scalars[index + 1] == "\n" { line += 1 }
                        index += 2
                        continue
                    }
                    if scalar == "\n" { line += 1 }
                    if scalar == quote && index + 2 < scalars.count && scalars[index + 1] == quote && scalars[index + 2] == quote {
                        index += 3
                        // Up to two more quotes may belong to the content ("""a"""" is a"").
                        var extra = 0
                        while extra < 2 && index < scalars.count && scalars[index] == quote { index += 1; extra += 1 }
                        return
                    }
                    index += 1
                }
                return
            }
            index += 1
            while index < scalars.count && scalars[index] != "\n" {
                let scalar = scalars[index]
                if basic && scalar == "\\" {
                    // An escape; never past the end of the line (the string is unterminated then).
                    index += index + 1 < scalars.count && scalars[index + 1] == "\n" ? 1 : 2
                    continue
                }
                index += 1
                if scalar == quote { return }
            }
        }

        while index < scalars.count {
            let scalar = scalars[index]
            switch scalar {
            case "\n":
                line += 1
                atLineStart = true
                index += 1
                continue
            case " ", "\t", "\r":
                index += 1
                continue
            case "#":
                skipToEndOfLine()
                continue
            case "\"", "'":
                skipString()
                atLineStart = false
                continue
            case "[" where atLineStart && open.isEmpty:
                // A table header: after "[" or "[[" and blanks, a key must begin.
                var next = index + 1
                if next < scalars.count && scalars[next] == "[" { next += 1 }
                while next < scalars.count && (scalars[next] == " " || scalars[next] == "\t") { next += 1 }
                let starts = next < scalars.count ? scalars[next] : "\n"
                let isKeyStart = starts == "\"" || starts == "'" || starts == "_" || starts == "-"
                    || (starts.isASCII && (("a"..."z").contains(starts) || ("A"..."Z").contains(starts) || ("0"..."9").contains(starts)))
                if !isKeyStart {
                    return (line, "TOML syntax: a table header needs a key, as in [server] or [[policy.domain]]")
                }
                skipToEndOfLine()
                continue
            case "[", "{":
                open.append(scalar)
            case "]", "}":
                if let innermost = open.popLast(), (innermost == "[") != (scalar == "]") {
                    return (line, innermost == "["
                        ? "TOML syntax: '}' inside an array (an array ends with ']')"
                        : "TOML syntax: ']' inside an inline table (an inline table ends with '}')")
                }
            default:
                break
            }
            atLineStart = false
            index += 1
        }
        return nil
    }
}
