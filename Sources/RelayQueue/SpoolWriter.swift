#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes one incoming message into `tmp/`, then commits it into the queue.
///
/// Owned by one connection; used by one thread at a time (content writes on the connection's
/// event loop, the commit on a thread pool), hence `@unchecked Sendable`. A write failure is
/// remembered and reported by `commit`, so the connection keeps reading DATA to its end and
/// then answers 451/452 with nothing left on disk.
public final class SpoolWriter: @unchecked Sendable {
    public let queueID: QueueID
    let temporaryPath: String
    let finalDirectory: String
    let finalPath: String
    private var fd: Int32
    private var failure: SpoolError?
    /// Content bytes written so far.
    public private(set) var contentLength = 0

    init(queueID: QueueID, temporaryPath: String, finalDirectory: String) throws {
        self.queueID = queueID
        self.temporaryPath = temporaryPath
        self.finalDirectory = finalDirectory
        self.finalPath = finalDirectory + "/" + queueID.rawValue
        fd = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SpoolError.fromErrno("create", temporaryPath) }
    }

    deinit {
        if fd >= 0 {
            close(fd)
            unlink(temporaryPath)
        }
    }

    /// Appends content bytes. Errors are kept for `commit`; later writes are skipped.
    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard failure == nil, fd >= 0, bytes.count > 0 else { return }
        do {
            try FileIO.writeAll(fd, bytes, path: temporaryPath)
            contentLength += bytes.count
        } catch let error as SpoolError {
            failure = error
        } catch {
            failure = .io(operation: "write", path: temporaryPath, errno: EIO)
        }
    }

    public func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    /// The first write error, if any.
    public var writeError: SpoolError? { failure }

    /// Appends the envelope, fsyncs the file, moves it into the queue without replacing
    /// anything, and fsyncs the queue directory (RFC 5321 §6.1: only then may 250 be sent).
    /// Blocking: call off the event loop.
    /// - Throws: `SpoolError.insufficientStorage` for ENOSPC/EDQUOT, `.io` otherwise; in both
    ///   cases the temporary file is removed and nothing counts as queued.
    public func commit(envelope: QueuedEnvelope) throws {
        do {
            if let failure { throw failure }
            let trailer = try QueueFileFormat.trailer(envelope: envelope, contentLength: contentLength)
            try trailer.withUnsafeBytes { try FileIO.writeAll(fd, $0, path: temporaryPath) }
            try FileIO.fsyncFile(fd, path: temporaryPath)
            close(fd)
            fd = -1
            try FileIO.renameNoReplace(temporaryPath, finalPath)
            do {
                try FileIO.fsyncDirectory(finalDirectory)
            } catch {
                // Not known to be durable: the client will be told 4xx and retry, so drop it.
                unlink(finalPath)
                throw error
            }
        } catch {
            abandon()
            throw error
        }
    }

    /// Drops the message: closes and removes the temporary file.
    public func abandon() {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
        unlink(temporaryPath)
    }
}
