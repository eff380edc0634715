import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Durable replacement of a small state file (MTA-STS cache entries, downgrade memory): write a
/// temporary file beside it, fsync it, rename it over the old one, fsync the directory. After a
/// crash the file holds either the old or the new contents, never a torn mix.
public enum StateFile {
    public struct WriteError: Error, CustomStringConvertible {
        public let path: String
        public let operation: String
        public let errno: Int32
        public var description: String { "\(operation) \(path): \(String(cString: strerror(errno)))" }
    }

    /// Replaces `path` with `data`, durably.
    /// - Throws: `WriteError` naming the path and the failed system call; the old file is then
    ///   left as it was and no temporary file remains.
    public static func replace(_ path: String, with data: Data, mode: mode_t = 0o600) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = "\(directory)/.\((path as NSString).lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw WriteError(path: temporary, operation: "open", errno: errno) }
        var ok = false
        defer {
            if !ok { unlink(temporary) }
        }
        do {
            defer { close(fd) }
            try data.withUnsafeBytes { (buffer: UnsafeRawBufferPointer) in
                var offset = 0
                while offset < buffer.count {
                    let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw WriteError(path: temporary, operation: "write", errno: errno)
                    }
                    offset += n
                }
            }
            guard fsync(fd) == 0 else { throw WriteError(path: temporary, operation: "fsync", errno: errno) }
        }
        guard rename(temporary, path) == 0 else { throw WriteError(path: path, operation: "rename", errno: errno) }
        ok = true
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw WriteError(path: directory, operation: "open", errno: errno) }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else { throw WriteError(path: directory, operation: "fsync", errno: errno) }
    }
}
