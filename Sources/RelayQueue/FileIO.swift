#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin wrappers over the system calls the spool needs, retrying on EINTR and throwing
/// `SpoolError` with the failing operation and path.
enum FileIO {
    static func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, path: String) throws {
        var offset = 0
        while offset < buffer.count {
            let written = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                throw SpoolError.fromErrno("write", path)
            }
            offset += written
        }
    }

    static func readExactly(_ fd: Int32, count: Int, at offset: Int, path: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if got < 0 {
                if errno == EINTR { continue }
                throw SpoolError.fromErrno("read", path)
            }
            if got == 0 { throw SpoolError.corrupt(path: path, reason: "short read") }
            done += got
        }
        return out
    }

    static func fsyncFile(_ fd: Int32, path: String) throws {
        while fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw SpoolError.fromErrno("fsync", path)
        }
    }

    /// fsync a directory so that a create, rename or unlink in it is durable.
    static func fsyncDirectory(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError.fromErrno("open directory", path) }
        defer { close(fd) }
        try fsyncFile(fd, path: path)
    }

    static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws {
        if mkdir(path, mode) != 0 && errno != EEXIST { throw SpoolError.fromErrno("mkdir", path) }
    }

    /// Names in a directory, without "." and "..".
    static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw SpoolError.fromErrno("opendir", path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func fileSize(_ fd: Int32, path: String) throws -> Int {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SpoolError.fromErrno("fstat", path) }
        return Int(info.st_size)
    }

    /// Renames `from` to `to`, failing with EEXIST instead of replacing an existing file.
    static func renameNoReplace(_ from: String, _ to: String) throws {
        // link() is atomic and refuses an existing target; the source name is then dropped.
        // (A crash between the two leaves a second name in tmp/, removed at recovery.)
        while link(from, to) != 0 {
            if errno == EINTR { continue }
            throw SpoolError.fromErrno("link", to)
        }
        if unlink(from) != 0 { throw SpoolError.fromErrno("unlink", from) }
    }
}
