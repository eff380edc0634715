#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

extension Spool {
    var stateDirectory: String { root + "/state" }

    func stateBucket(_ id: QueueID) -> String { stateDirectory + "/" + id.bucket }

    /// Creates `spool/state/<C>` directories (called by `init`).
    func makeStateDirectories() throws {
        try FileIO.makeDirectory(stateDirectory)
        for character in QueueID.alphabet {
            try FileIO.makeDirectory(stateDirectory + "/" + String(UnicodeScalar(character)))
        }
    }

    /// The delivery record of a queued message, or nil when none was written yet (a new
    /// message: every recipient pending).
    /// - Throws: `.corrupt` when the record does not decode; `.io` on read errors.
    public func deliveryRecord(of id: QueueID) throws -> DeliveryRecord? {
        let path = stateBucket(id) + "/" + id.rawValue
        guard let data = FileManager.default.contents(atPath: path) else {
            if access(path, F_OK) != 0 { return nil }
            throw SpoolError.fromErrno("read", path)
        }
        do {
            let record = try JSONDecoder().decode(DeliveryRecord.self, from: data)
            guard record.queueID == id else { throw SpoolError.corrupt(path: path, reason: "record names another queue id") }
            return record
        } catch let error as SpoolError {
            throw error
        } catch {
            throw SpoolError.corrupt(path: path, reason: "delivery record does not decode: \(error)")
        }
    }

    /// The messages that have a delivery record (one directory listing per bucket), so
    /// start-up reads records only where they exist.
    /// - Returns: queue ids in ascending order (12 bytes each: a sorted array rather than a set,
    ///   which at 1,000,000 ids would take twice the memory at the load's high-water mark); look
    ///   one up with `containsSorted(_:)`.
    public func messagesWithDeliveryRecords() -> [QueueID] {
        var ids: [QueueID] = []
        for bucket in (try? FileIO.listDirectory(stateDirectory)) ?? [] {
            for name in (try? FileIO.listDirectory(stateDirectory + "/" + bucket)) ?? [] {
                if let id = QueueID(name) { ids.append(id) }
            }
        }
        ids.sort()
        return ids
    }

    /// Replaces the delivery record atomically and durably. Blocking.
    /// - Throws: `SpoolError` (ENOSPC → `.insufficientStorage`).
    public func saveDeliveryRecord(_ record: DeliveryRecord) throws {
        let bucket = stateBucket(record.queueID)
        let final = bucket + "/" + record.queueID.rawValue
        let temporary = final + ".new"
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let bytes = Array(try encoder.encode(record))
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SpoolError.fromErrno("create", temporary) }
        do {
            try bytes.withUnsafeBytes { try FileIO.writeAll(fd, $0, path: temporary) }
            try FileIO.fsyncFile(fd, path: temporary)
            close(fd)
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        guard rename(temporary, final) == 0 else {
            let error = SpoolError.fromErrno("rename", final)
            unlink(temporary)
            throw error
        }
        try FileIO.fsyncDirectory(bucket)
    }

    /// Removes a finished message: its queue file (durably), then its delivery record. A crash
    /// in between leaves a record without a queue file, which recovery drops; the other order
    /// would leave a queue file without its record — every recipient pending, delivered again.
    /// - Throws: `.notFound` when the queue file is gone; `.io` when a file cannot be removed.
    public func finish(_ id: QueueID) throws {
        try remove(id)
        CrashPoint.queueFileRemoved.reached()
        let record = stateBucket(id) + "/" + id.rawValue
        if unlink(record) != 0 && errno != ENOENT { throw SpoolError.fromErrno("unlink", record) }
    }
}
