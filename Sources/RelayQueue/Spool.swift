#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// The durable message spool under `<state_directory>/spool`:
///
///     tmp/            messages being received (removed at start-up: never acknowledged)
///     queue/<C>/<ID>  committed messages, C = the id's last character (32 buckets)
///     corrupt/        queue files that failed validation, moved aside at recovery
///     state/<C>/<ID>  delivery progress per message (`DeliveryRecord`)
///
/// A message exists in the queue only once its file was fsync'ed and linked into `queue/`
/// and that directory fsync'ed, so a crash at any instant leaves either a complete message or
/// nothing that counts as one (RFC 5321 §6.1).
public final class Spool: Sendable {
    public let root: String
    let temporaryDirectory: String
    let queueDirectory: String
    let corruptDirectory: String
    public let idGenerator = QueueIDGenerator()

    /// Opens (creating when missing) the spool below `stateDirectory`.
    /// - Throws: `SpoolError.io` when a directory cannot be created.
    public init(stateDirectory: String) throws {
        root = stateDirectory + "/spool"
        temporaryDirectory = root + "/tmp"
        queueDirectory = root + "/queue"
        corruptDirectory = root + "/corrupt"
        try FileIO.makeDirectory(stateDirectory)
        for directory in [root, temporaryDirectory, queueDirectory, corruptDirectory] {
            try FileIO.makeDirectory(directory)
        }
        for character in QueueID.alphabet {
            try FileIO.makeDirectory(queueDirectory + "/" + String(UnicodeScalar(character)))
        }
        try makeStateDirectories()
    }

    /// What start-up recovery found.
    public struct RecoveryReport: Sendable {
        /// Messages in the queue, oldest first.
        public var queued: [QueueID] = []
        /// Partial messages from `tmp/` that were removed (never acknowledged with 250).
        public var removedPartials: Int = 0
        /// Files moved to `corrupt/`, with the reason for each.
        public var corrupt: [(name: String, reason: String)] = []
    }

    /// Start-up recovery: removes partial files from `tmp/`, validates every queue file and moves
    /// invalid ones (bad name, bad footer, undecodable envelope) to `corrupt/`.
    /// - Throws: `SpoolError.io` when a spool directory cannot be read.
    public func recover() throws -> RecoveryReport {
        var report = RecoveryReport()
        for name in try FileIO.listDirectory(temporaryDirectory) {
            if unlink(temporaryDirectory + "/" + name) == 0 { report.removedPartials += 1 }
        }
        try FileIO.fsyncDirectory(temporaryDirectory)
        for bucket in try FileIO.listDirectory(queueDirectory) {
            let bucketPath = queueDirectory + "/" + bucket
            for name in try FileIO.listDirectory(bucketPath) {
                let path = bucketPath + "/" + name
                guard let id = QueueID(name), id.bucket == bucket else {
                    moveAside(path, name: "\(bucket)-\(name)", reason: "file name is not a queue id of this bucket", into: &report)
                    continue
                }
                do {
                    _ = try readEnvelope(path: path, expected: id)
                    report.queued.append(id)
                } catch let SpoolError.corrupt(_, reason) {
                    moveAside(path, name: name, reason: reason, into: &report)
                }
            }
        }
        report.queued.sort()
        // Delivery records without a queue file (finished just before a crash) and
        // half-written replacements are dropped.
        let queued = Set(report.queued.map(\.rawValue))
        for bucket in try FileIO.listDirectory(stateDirectory) {
            for name in try FileIO.listDirectory(stateDirectory + "/" + bucket) where !queued.contains(name) {
                unlink(stateDirectory + "/" + bucket + "/" + name)
            }
        }
        return report
    }

    private func moveAside(_ path: String, name: String, reason: String, into report: inout RecoveryReport) {
        let target = corruptDirectory + "/" + name
        if rename(path, target) == 0 {
            report.corrupt.append((name, reason))
        }
    }

    /// Starts receiving a new message with a fresh queue id.
    /// - Throws: `SpoolError` when the temporary file cannot be created (ENOSPC → insufficientStorage).
    public func beginMessage() throws -> SpoolWriter {
        let id = idGenerator.next()
        return try SpoolWriter(queueID: id, temporaryPath: temporaryDirectory + "/" + id.rawValue,
                               finalDirectory: queueDirectory + "/" + id.bucket)
    }

    /// Path of a queued message's file.
    public func path(of id: QueueID) -> String { queueDirectory + "/" + id.bucket + "/" + id.rawValue }

    /// Ids of all queued messages, oldest first.
    public func list() throws -> [QueueID] {
        var ids: [QueueID] = []
        for bucket in try FileIO.listDirectory(queueDirectory) {
            for name in try FileIO.listDirectory(queueDirectory + "/" + bucket) {
                if let id = QueueID(name), id.bucket == bucket { ids.append(id) }
            }
        }
        return ids.sorted()
    }

    /// The envelope of a queued message.
    /// - Throws: `.notFound` when no such message is queued, `.corrupt` when the file is invalid.
    public func envelope(of id: QueueID) throws -> QueuedEnvelope {
        try readEnvelope(path: path(of: id), expected: id)
    }

    /// The content of a queued message (Received header first, CRLF line endings).
    /// - Throws: as `envelope(of:)`.
    public func content(of id: QueueID) throws -> [UInt8] {
        let path = path(of: id)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw errno == ENOENT ? SpoolError.notFound(id) : SpoolError.fromErrno("open", path) }
        defer { close(fd) }
        let (contentLength, _) = try layout(fd: fd, path: path)
        return try FileIO.readExactly(fd, count: contentLength, at: 0, path: path)
    }

    /// Removes a queued message (after delivery or bounce) durably.
    /// - Throws: `.notFound` or `.io`.
    public func remove(_ id: QueueID) throws {
        let path = path(of: id)
        guard unlink(path) == 0 else { throw errno == ENOENT ? SpoolError.notFound(id) : SpoolError.fromErrno("unlink", path) }
        try FileIO.fsyncDirectory(queueDirectory + "/" + id.bucket)
    }

    func readEnvelope(path: String, expected id: QueueID) throws -> QueuedEnvelope {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw errno == ENOENT ? SpoolError.notFound(id) : SpoolError.fromErrno("open", path) }
        defer { close(fd) }
        let (contentLength, envelopeLength) = try layout(fd: fd, path: path)
        let bytes = try FileIO.readExactly(fd, count: envelopeLength, at: contentLength, path: path)
        let envelope: QueuedEnvelope
        do {
            envelope = try JSONDecoder().decode(QueuedEnvelope.self, from: Data(bytes))
        } catch {
            throw SpoolError.corrupt(path: path, reason: "envelope does not decode: \(error)")
        }
        guard envelope.queueID == id else { throw SpoolError.corrupt(path: path, reason: "envelope names another queue id") }
        guard envelope.size == contentLength else { throw SpoolError.corrupt(path: path, reason: "content length differs from the envelope's size") }
        return envelope
    }

    /// Reads and checks the footer: returns (content length, envelope length).
    func layout(fd: Int32, path: String) throws -> (Int, Int) {
        let size = try FileIO.fileSize(fd, path: path)
        guard size >= QueueFileFormat.footerLength else { throw SpoolError.corrupt(path: path, reason: "shorter than a footer") }
        let footer = try FileIO.readExactly(fd, count: QueueFileFormat.footerLength, at: size - QueueFileFormat.footerLength, path: path)
        guard let (contentLength, envelopeLength) = QueueFileFormat.parseFooter(footer) else {
            throw SpoolError.corrupt(path: path, reason: "bad footer")
        }
        guard contentLength + envelopeLength + QueueFileFormat.footerLength == size else {
            throw SpoolError.corrupt(path: path, reason: "lengths in the footer do not match the file size")
        }
        return (contentLength, envelopeLength)
    }
}
