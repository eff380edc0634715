/// One SMTP command line from a client, parsed (RFC 5321 §4.1.1).
public enum Command: Sendable, Equatable {
    case ehlo(String)
    case helo(String)
    /// `MAIL FROM:` reverse-path (nil = `<>`) and the raw parameter list.
    case mail(path: Substring, parameters: [ESMTPParameter])
    case rcpt(path: Substring, parameters: [ESMTPParameter])
    case data
    case rset
    case noop
    case quit
    case vrfy(String)
    case expn(String)
    case help
    /// `STARTTLS` (RFC 3207 §4), which takes no parameters.
    case starttls
    /// A verb this server knows of but does not offer (AUTH, BDAT, ETRN, TURN).
    case notImplemented(String)
    /// A verb nobody knows.
    case unknown(String)
}

/// `esmtp-keyword ["=" esmtp-value]` (RFC 5321 §4.1.2).
public struct ESMTPParameter: Sendable, Equatable {
    public let keyword: String
    public let value: Substring?

    public init(keyword: String, value: Substring?) {
        self.keyword = keyword
        self.value = value
    }
}

/// A command line the grammar rejects; `reply` is what the client is told.
public struct CommandSyntaxError: Error, Sendable, Equatable {
    public let reply: Reply
}

/// Parses command lines (without their CRLF).
public enum CommandParser {
    /// Parses one command line (the bytes before CRLF).
    /// - Throws: `CommandSyntaxError` with the reply to send (500/501 with 5.5.2 or 5.5.4).
    public static func parse(_ line: String) throws -> Command {
        let verbEnd = line.firstIndex(of: " ") ?? line.endIndex
        let verb = line[..<verbEnd].uppercased()
        let rest = verbEnd == line.endIndex ? Substring("") : line[line.index(after: verbEnd)...]
        switch verb {
        case "EHLO", "HELO":
            let argument = rest.trimmingSpaces()
            guard !argument.isEmpty, !argument.contains(" ") else {
                throw CommandSyntaxError(reply: Reply(501, .syntaxError, "Syntax: \(verb) hostname"))
            }
            return verb == "EHLO" ? .ehlo(String(argument)) : .helo(String(argument))
        case "MAIL":
            let (path, parameters) = try parsePathCommand(rest, prefix: "FROM:", verb: "MAIL FROM:<address>")
            return .mail(path: path, parameters: parameters)
        case "RCPT":
            let (path, parameters) = try parsePathCommand(rest, prefix: "TO:", verb: "RCPT TO:<address>")
            return .rcpt(path: path, parameters: parameters)
        case "DATA", "RSET", "QUIT":
            guard rest.trimmingSpaces().isEmpty else {
                throw CommandSyntaxError(reply: Reply(501, .syntaxError, "Syntax: \(verb)"))
            }
            return verb == "DATA" ? .data : verb == "RSET" ? .rset : .quit
        case "NOOP":
            return .noop
        case "VRFY":
            return .vrfy(String(rest))
        case "EXPN":
            return .expn(String(rest))
        case "HELP":
            return .help
        case "STARTTLS":
            guard rest.trimmingSpaces().isEmpty else {
                throw CommandSyntaxError(reply: Reply(501, .invalidArguments, "Syntax: STARTTLS (no parameters allowed, RFC 3207 section 4)"))
            }
            return .starttls
        case "AUTH", "BDAT", "ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML":
            return .notImplemented(verb)
        default:
            return .unknown(verb)
        }
    }

    /// `FROM:<path> [SP params]` / `TO:<path> [SP params]`. A space after the colon is
    /// tolerated, as most servers do.
    static func parsePathCommand(_ text: Substring, prefix: String, verb: String) throws -> (Substring, [ESMTPParameter]) {
        guard text.uppercased().hasPrefix(prefix) else {
            throw CommandSyntaxError(reply: Reply(501, .syntaxError, "Syntax: \(verb)"))
        }
        var rest = text.dropFirst(prefix.count)
        while rest.first == " " { rest = rest.dropFirst() }
        guard rest.first == "<" else {
            throw CommandSyntaxError(reply: Reply(501, .syntaxError, "Syntax: \(verb)"))
        }
        guard let close = findPathEnd(rest) else {
            throw CommandSyntaxError(reply: Reply(501, .syntaxError, "Syntax: \(verb)"))
        }
        let path = rest[...close]
        let tail = rest[rest.index(after: close)...]
        if !tail.isEmpty && tail.first != " " {
            throw CommandSyntaxError(reply: Reply(501, .syntaxError, "Syntax: \(verb)"))
        }
        var parameters: [ESMTPParameter] = []
        for word in tail.split(separator: " ") {
            let keyword: Substring
            let value: Substring?
            if let equals = word.firstIndex(of: "=") {
                keyword = word[..<equals]
                value = word[word.index(after: equals)...]
            } else {
                keyword = word
                value = nil
            }
            // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); esmtp-value = 1*(%d33-60 / %d62-126)
            guard let first = keyword.first, first.isASCII, first.isLetter || first.isNumber,
                  keyword.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") })
            else {
                throw CommandSyntaxError(reply: Reply(501, .invalidArguments, "Bad parameter syntax"))
            }
            if let value, value.isEmpty || value.utf8.contains(where: { $0 < 33 || $0 == 61 || ($0 > 126 && $0 < 0x80) }) {
                throw CommandSyntaxError(reply: Reply(501, .invalidArguments, "Bad parameter value"))
            }
            parameters.append(ESMTPParameter(keyword: keyword.uppercased(), value: value))
        }
        return (path, parameters)
    }

    /// Index of the `>` that closes the path, skipping quoted strings in the local part.
    static func findPathEnd(_ text: Substring) -> Substring.Index? {
        var inQuotes = false
        var escaped = false
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if escaped {
                escaped = false
            } else if inQuotes && character == "\\" {
                escaped = true
            } else if character == "\"" {
                inQuotes.toggle()
            } else if character == ">" && !inQuotes {
                return index
            }
            index = text.index(after: index)
        }
        return nil
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var result = self
        while result.first == " " || result.first == "\t" { result = result.dropFirst() }
        while result.last == " " || result.last == "\t" { result = result.dropLast() }
        return result
    }
}
