#if canImport(Glibc)
import Glibc
#endif

/// An exclusive lock on `<state_directory>/tlsrelayd.lock` (flock), held for the life of the
/// process: two daemons on one spool would each recover (and delete) the other's in-flight
/// files, take over its control socket and deliver every message twice.
final class StateDirectoryLock: Sendable {
    private let fd: Int32

    struct Busy: Error, CustomStringConvertible {
        let description: String
    }

    /// Creates the state directory if needed and takes the lock.
    /// - Throws: `Busy` when another process holds it (its pid is named), or an errno text.
    init(stateDirectory: String) throws {
        if mkdir(stateDirectory, 0o700) != 0 && errno != EEXIST {
            throw Busy(description: "cannot create state_directory \(stateDirectory): \(String(cString: strerror(errno)))")
        }
        let path = stateDirectory + "/tlsrelayd.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Busy(description: "cannot open \(path): \(String(cString: strerror(errno)))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = pread(fd, &buffer, buffer.count, 0)
            let holder = count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self).trimmingCharacters() : "?"
            close(fd)
            throw Busy(description: "another tlsrelayd (pid \(holder)) is using state_directory \(stateDirectory); refusing to start a second one on the same spool")
        }
        ftruncate(fd, 0)
        let pid = Array("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.fd = fd
    }

    deinit { close(fd) }
}

private extension String {
    func trimmingCharacters() -> String {
        String(self.filter { !$0.isWhitespace && $0 != "\0" })
    }
}
