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
        let removed = try removePartials()
        var report = try scanQueue()
        report.removedPartials = removed
        return report
    }

    /// The first part of recovery, before the listener starts: removes the partial files in
    /// `tmp/` (never acknowledged with 250). Fast: `tmp/` holds only messages being received.
    /// - Returns: how many were removed.
    /// - Throws: `SpoolError.io` when `tmp/` cannot be read.
    public func removePartials() throws -> Int {
        var removed = 0
        for name in try FileIO.listDirectory(temporaryDirectory) {
            if unlink(temporaryDirectory + "/" + name) == 0 { removed += 1 }
        }
        try FileIO.fsyncDirectory(temporaryDirectory)
        return removed
    }

    /// The second part of recovery, safe while the daemon accepts and delivers mail: validates
    /// every queue file (moving invalid ones to `corrupt/`) and drops delivery records whose queue
    /// file is gone (checked file by file, so a message queued meanwhile keeps its record) and
    /// half-written record replacements older than the scan.
    /// - Throws: `SpoolError.io` when a spool directory cannot be read.
    public func scanQueue() throws -> RecoveryReport {
        var report = RecoveryReport()
        let scanStarted = time(nil)
        // Buckets are validated in parallel (100,000 files: a few seconds on 2 cores).
        var buckets: [String] = []
        for entry in try FileIO.listDirectory(queueDirectory) {
            // Anything but the 32 bucket directories is moved aside, never fatal.
            if entry.utf8.count == 1, QueueID.alphabet.contains(entry.utf8.first!), isDirectory(queueDirectory + "/" + entry) {
                buckets.append(entry)
            } else {
                moveAside(queueDirectory + "/" + entry, name: "queue-" + entry, reason: "not a spool bucket directory", into: &report)
            }
        }
        let results = BucketResults(count: buckets.count)
        let bucketNames = buckets
        DispatchQueue.concurrentPerform(iterations: bucketNames.count) { index in
            let bucket = bucketNames[index]
            let bucketPath = queueDirectory + "/" + bucket
            var queued: [QueueID] = []
            var bad: [(path: String, name: String, reason: String)] = []
            let names: [String]
            do { names = try FileIO.listDirectory(bucketPath) } catch {
                results.set(index, ([], [], error))
                return
            }
            for name in names {
                let path = bucketPath + "/" + name
                guard let id = QueueID(name), id.bucket == bucket else {
                    bad.append((path, "\(bucket)-\(name)", "file name is not a queue id of this bucket"))
                    continue
                }
                do {
                    try validate(path: path, expected: id)
                    queued.append(id)
                } catch let SpoolError.corrupt(_, reason) {
                    bad.append((path, name, reason))
                } catch {
                    bad.append((path, name, "unreadable: \(error)"))
                }
            }
            results.set(index, (queued, bad, nil))
        }
        for (queued, bad, error) in results.all() {
            if let error { throw error }
            report.queued += queued
            for entry in bad { moveAside(entry.path, name: entry.name, reason: entry.reason, into: &report) }
        }
        report.queued.sort()
        // Delivery records without a queue file (finished just before a crash) and
        // half-written replacements are dropped.
        let queued = Set(report.queued.map(\.rawValue))
        for bucket in try FileIO.listDirectory(stateDirectory) {
            for name in try FileIO.listDirectory(stateDirectory + "/" + bucket) where !queued.contains(name) {
                let path = stateDirectory + "/" + bucket + "/" + name
                if name.hasSuffix(".new") {
                    // A replacement being written right now is not half-written.
                    var info = stat()
                    if lstat(path, &info) == 0 && info.st_mtim.tv_sec >= scanStarted { continue }
                } else if let id = QueueID(name), access(self.path(of: id), F_OK) == 0 {
                    continue    // queued since the listing
                }
                unlink(path)
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

    func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// Ids of all queued messages, oldest first. Entries that are not buckets are skipped.
    public func list() throws -> [QueueID] {
        var ids: [QueueID] = []
        for bucket in try FileIO.listDirectory(queueDirectory) where isDirectory(queueDirectory + "/" + bucket) {
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

    /// Recovery's check of one queue file: footer lengths add up and the envelope is a JSON
    /// object naming this queue id with the right size (cheaper than decoding it whole).
    func validate(path: String, expected id: QueueID) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError.corrupt(path: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let (contentLength, envelopeLength) = try layout(fd: fd, path: path)
        let bytes = try FileIO.readExactly(fd, count: envelopeLength, at: contentLength, path: path)
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
              object["queueID"] as? String == id.rawValue,
              object["size"] as? Int == contentLength,
              let transaction = object["transaction"] as? [String: Any],
              let recipients = transaction["recipients"] as? [Any], !recipients.isEmpty
        else { throw SpoolError.corrupt(path: path, reason: "envelope does not decode or names another queue id or size") }
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

/// Results of the parallel bucket scan at recovery.
final class BucketResults: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [([QueueID], [(path: String, name: String, reason: String)], Error?)]

    init(count: Int) { values = Array(repeating: ([], [], nil), count: count) }
    func set(_ index: Int, _ value: ([QueueID], [(path: String, name: String, reason: String)], Error?)) {
        lock.lock(); values[index] = value; lock.unlock()
    }
    func all() -> [([QueueID], [(path: String, name: String, reason: String)], Error?)] {
        lock.lock(); defer { lock.unlock() }; return values
    }
}
