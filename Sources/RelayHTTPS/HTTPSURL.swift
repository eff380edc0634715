/// An `https:` URL taken apart for one request (RFC 9110 §4.2.2): host, port and the request
/// target. Nothing but `https` is accepted, no user information, no fragment.
public struct HTTPSURL: Sendable, Equatable, CustomStringConvertible {
    /// The host in lowercase, without brackets for an IPv6 literal.
    public let host: String
    /// TCP port, 443 unless the URL names one.
    public let port: Int
    /// Path and query as sent on the request line (`/` when the URL has no path).
    public let target: String

    public init(host: String, port: Int = 443, target: String = "/") {
        self.host = host.lowercased()
        self.port = port
        self.target = target
    }

    /// Parses `text`. Nil when it is not an absolute `https://host[:port][/path][?query]` URL
    /// with a non-empty host and a port in 1...65535, or when it holds user information, a
    /// fragment, white space or control characters.
    public init?(_ text: String) {
        guard text.count > 8, text.prefix(8).lowercased() == "https://" else { return nil }
        let rest = text.dropFirst(8)
        guard !rest.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7f || $0 == "#" }) else { return nil }
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var target = String(rest[authorityEnd...])
        if target.isEmpty { target = "/" } else if target.first == "?" { target = "/" + target }
        guard !authority.contains("@") else { return nil }
        var host: Substring
        var portText: Substring?
        if authority.first == "[" {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":" else { return nil }
                portText = after.dropFirst()
            }
        } else if let colon = authority.firstIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        if host.hasSuffix(".") { host = host.dropLast() }
        guard !host.isEmpty else { return nil }
        var port = 443
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value), portText.allSatisfy(\.isASCII) else { return nil }
            port = value
        }
        self.init(host: String(host), port: port, target: target)
    }

    /// The `Host` header field value (RFC 9110 §7.2): the port only when it is not 443.
    public var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == 443 ? name : "\(name):\(port)"
    }

    public var description: String { "https://\(hostHeader)\(target)" }
}
