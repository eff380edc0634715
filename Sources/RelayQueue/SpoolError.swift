#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a spool operation failed.
public enum SpoolError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file system is full or over quota (ENOSPC, EDQUOT): the client gets 452 4.3.1.
    case insufficientStorage(operation: String)
    /// Any other system call failure, with its errno.
    case io(operation: String, path: String, errno: Int32)
    /// A queue file failed validation; `reason` says how.
    case corrupt(path: String, reason: String)
    /// No message with that id is queued.
    case notFound(QueueID)

    public var description: String {
        switch self {
        case .insufficientStorage(let operation): return "insufficient storage during \(operation)"
        case .io(let operation, let path, let code): return "\(operation) \(path): \(String(cString: strerror(code)))"
        case .corrupt(let path, let reason): return "corrupt queue file \(path): \(reason)"
        case .notFound(let id): return "no queued message \(id)"
        }
    }

    static func fromErrno(_ operation: String, _ path: String, _ code: Int32 = errno) -> SpoolError {
        if code == ENOSPC || code == EDQUOT { return .insufficientStorage(operation: operation) }
        return .io(operation: operation, path: path, errno: code)
    }
}
