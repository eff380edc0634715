/// A configuration problem, pointing at the file and line (1-based) it comes from.
/// `tlsrelayd` prints it and exits 78 (EX_CONFIG, sysexits.h).
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let reason: String

    public init(file: String, line: Int, reason: String) {
        self.file = file
        self.line = line
        self.reason = reason
    }

    /// `FILE:LINE: reason`, the shape compilers and editors understand.
    public var description: String { "\(file):\(line): \(reason)" }
}
