#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address as its network-order bytes (4 or 16).
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// Parses dotted-quad IPv4 or RFC 4291 §2.2 IPv6 text (no brackets, no zone). An IPv4-mapped
    /// IPv6 address (`::ffff:a.b.c.d`) is kept as IPv6; use `unmapped` to compare with IPv4.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            bytes = withUnsafeBytes(of: &v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            bytes = withUnsafeBytes(of: &v6) { Array($0) }
            return
        }
        return nil
    }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    public var isIPv4: Bool { bytes.count == 4 }

    /// The IPv4 address inside an IPv4-mapped IPv6 address, else self.
    public var unmapped: IPAddress {
        if bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            return IPAddress(bytes: Array(bytes[12..<16]))!
        }
        return self
    }

    /// True for 127.0.0.0/8 and ::1.
    public var isLoopback: Bool {
        let address = unmapped
        if address.isIPv4 { return address.bytes[0] == 127 }
        return address.bytes == [UInt8](repeating: 0, count: 15) + [1]
    }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        bytes.withUnsafeBytes { raw in
            _ = inet_ntop(isIPv4 ? AF_INET : AF_INET6, raw.baseAddress, &buffer, socklen_t(buffer.count))
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An address block `address/prefix` (RFC 4632 for IPv4, RFC 4291 §2.3 for IPv6).
public struct CIDRBlock: Sendable, Hashable, CustomStringConvertible {
    public let network: IPAddress
    public let prefixLength: Int

    /// Parses `a.b.c.d/n` or `x::y/n`; a bare address means a single host (/32 or /128).
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress(String(parts[0])) else { return nil }
        let maxLength = address.bytes.count * 8
        if parts.count == 2 {
            guard let length = Int(parts[1]), parts[1].allSatisfy(\.isNumber), (0...maxLength).contains(length) else { return nil }
            prefixLength = length
        } else {
            prefixLength = maxLength
        }
        network = address
    }

    /// True when `address` lies in this block (IPv4-mapped IPv6 addresses match IPv4 blocks).
    public func contains(_ address: IPAddress) -> Bool {
        let candidate = network.isIPv4 ? address.unmapped : address
        guard candidate.bytes.count == network.bytes.count else { return false }
        var remaining = prefixLength
        for index in 0..<network.bytes.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if candidate.bytes[index] & mask != network.bytes[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    public var description: String { "\(network)/\(prefixLength)" }
}

/// A host address and port, written `IP:port` / `[IPv6]:port` (listeners) or `IP@port` (DNS).
public struct SocketAddressText: Sendable, Hashable, CustomStringConvertible {
    public let address: IPAddress
    public let port: Int

    public init(address: IPAddress, port: Int) {
        self.address = address
        self.port = port
    }

    /// Parses `127.0.0.1:10030` or `[::1]:10030`.
    public static func parseListen(_ text: String) -> SocketAddressText? {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.first == ":" else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let address = IPAddress(String(host)), let port = Int(portText), portText.allSatisfy(\.isNumber),
              (1...65535).contains(port) else { return nil }
        if text.hasPrefix("[") != !address.isIPv4 { return nil }
        return SocketAddressText(address: address, port: port)
    }

    /// Parses `IP`, `IP@port` (unbound's notation), or `IP:port` / `[IPv6]:port` as `listen`
    /// takes it; the port defaults to 53.
    public static func parseDNS(_ text: String) -> SocketAddressText? {
        if !text.contains("@"), let listen = parseListen(text) { return listen }
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress(String(parts[0])) else { return nil }
        var port = 53
        if parts.count == 2 {
            guard let value = Int(parts[1]), parts[1].allSatisfy(\.isNumber), (1...65535).contains(value) else { return nil }
            port = value
        }
        return SocketAddressText(address: address, port: port)
    }

    /// Parses a next hop as Postfix writes one: `[127.0.0.1]:25`, `[::1]:25`, or `127.0.0.1:25`
    /// (an IP address, never a name to look up).
    public static func parseNextHop(_ text: String) -> SocketAddressText? {
        if text.hasPrefix("["), let close = text.firstIndex(of: "]"),
           let address = IPAddress(String(text[text.index(after: text.startIndex)..<close])), address.isIPv4 {
            return parseListen(String(text[text.index(after: text.startIndex)..<close]) + String(text[text.index(after: close)...]))
        }
        return parseListen(text)
    }

    /// `IP:port` with brackets around IPv6.
    public var description: String { address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)" }
    /// `IP@port`, as libunbound takes it.
    public var unboundNotation: String { "\(address)@\(port)" }
}
