import Foundation

/// The command-line arguments of this process.
public enum ProcessArguments {
    /// The arguments after the program name. Swift's `CommandLine.arguments` comes back empty
    /// on Linux when a preloaded library calls `setenv` before the Swift runtime looks for argv
    /// (swiftlang/swift#76080; libfaketime does, so may sandboxing or allocator preloads); a
    /// daemon that then silently ignored `--config` would run with the wrong settings. In that
    /// case the arguments are read from `/proc/self/cmdline` (NUL-separated).
    public static func afterProgramName() -> [String] {
        if !CommandLine.arguments.isEmpty { return Array(CommandLine.arguments.dropFirst()) }
        guard let data = FileManager.default.contents(atPath: "/proc/self/cmdline") else { return [] }
        return parse(cmdline: [UInt8](data))
    }

    /// Splits the bytes of `/proc/PID/cmdline` (each argument NUL-terminated) and drops the
    /// program name.
    static func parse(cmdline: [UInt8]) -> [String] {
        var parts = cmdline.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        if parts.last == "" { parts.removeLast() }
        return Array(parts.dropFirst())
    }
}
