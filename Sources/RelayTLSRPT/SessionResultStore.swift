import DeliveryPolicy
import Foundation
import Logging
import NIOConcurrencyHelpers
import RelayMetrics
import RelayPolicy
import TLSRPTCore
#if canImport(Glibc)
import Glibc
#endif

/// The TLS session results of every day not yet reported (RFC 8460 §4), durable and bounded.
///
/// One file per UTC day, `<state>/tlsrpt/results/YYYY-MM-DD.jsonl`, one JSON line per result,
/// appended with one `write` (O_APPEND): a result survives kill -9 as soon as `record` returns,
/// and a power loss once `sync` ran (the daemon calls it every second and at shutdown). A torn
/// last line after a crash is skipped when read. The directory is capped at `maxBytes`: past
/// it, results are not recorded, with one error line per day.
public final class SessionResultStore: Sendable {
    /// One stored line: the time (seconds since the epoch) and the result.
    struct Line: Codable {
        var t: Double
        var r: TLSSessionResult
    }

    private struct OpenDay {
        var dayStart: Int
        var fd: Int32
    }

    private struct State {
        var open: OpenDay?
        var bytes = 0
        var dirty = false
        var fullLoggedDay: Int?
    }

    public let directory: String
    public let maxBytes: Int
    private let logger: Logger
    private let state = NIOLockedValueBox(State())

    /// - Parameters:
    ///   - stateDirectory: the daemon's `state_directory`.
    ///   - maxBytes: the cap on all stored days together (`tlsrpt.max_disk`).
    /// - Throws: `StateFile.WriteError`-like errors when the directory cannot be made.
    public init(stateDirectory: String, maxBytes: Int, logger: Logger) throws {
        directory = stateDirectory + "/tlsrpt/results"
        self.maxBytes = maxBytes
        self.logger = logger
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let used = (try? FileManager.default.contentsOfDirectory(atPath: directory))?.reduce(0) { total, name in
            total + ((try? FileManager.default.attributesOfItem(atPath: directory + "/" + name)[.size] as? Int) ?? 0)
        } ?? 0
        state.withLockedValue { $0.bytes = used }
    }

    deinit {
        state.withLockedValue { state in
            if let open = state.open { close(open.fd) }
        }
    }

    func path(dayStart: Int) -> String { directory + "/" + TLSReport.dayName(dayStart) + ".jsonl" }

    /// Appends one result at `time` (seconds since the epoch) to its day's file.
    public func record(_ result: TLSSessionResult, at time: Double) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var bytes = try? encoder.encode(Line(t: time, r: result)) else { return }
        bytes.append(10)
        let day = TLSReport.dayStart(time)
        let (recorded, failure): (Bool, String?) = state.withLockedValue { state in
            if state.bytes + bytes.count > maxBytes {
                if state.fullLoggedDay != day {
                    state.fullLoggedDay = day
                    return (false, "TLS-RPT result store full (\(state.bytes / 1_048_576) MiB of tlsrpt.max_disk_mb = \(maxBytes / 1_048_576) MiB): sessions of \(TLSReport.dayName(day)) are no longer counted until reports are sent")
                }
                return (false, nil)
            }
            if state.open?.dayStart != day {
                if let open = state.open { fsync(open.fd); close(open.fd) }
                let fd = open(path(dayStart: day), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
                guard fd >= 0 else {
                    state.open = nil
                    return (false, "cannot open \(path(dayStart: day)): \(String(cString: strerror(errno)))")
                }
                state.open = OpenDay(dayStart: day, fd: fd)
            }
            let fd = state.open!.fd
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard written == bytes.count else {
                return (false, "cannot append to \(path(dayStart: day)): \(written < 0 ? String(cString: strerror(errno)) : "short write")")
            }
            state.bytes += bytes.count
            state.dirty = true
            return (true, nil)
        }
        if let failure { logger.error("\(failure)") }
        if recorded { RelayMetrics.tlsrptSession(success: result.isSuccess) }
    }

    /// Makes what was recorded durable (fdatasync of the open day's file).
    public func sync() {
        state.withLockedValue { state in
            guard state.dirty, let open = state.open else { return }
            fdatasync(open.fd)
            state.dirty = false
        }
    }

    /// The days (their first second) with stored results, oldest first.
    public func days() -> [Int] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { name -> Int? in
            guard name.hasSuffix(".jsonl") else { return nil }
            return Self.dayStart(named: String(name.dropLast(6)))
        }.sorted()
    }

    /// `YYYY-MM-DD` → the first second of that UTC day; nil for anything else.
    public static func dayStart(named name: String) -> Int? {
        let parts = name.split(separator: "-")
        guard parts.count == 3, let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]),
              parts[0].count == 4, parts[1].count == 2, parts[2].count == 2, (1...12).contains(month), (1...31).contains(day)
        else { return nil }
        // Days from civil (H. Hinnant's algorithm).
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        let start = days * TLSReport.day
        return TLSReport.dayName(start) == name ? start : nil
    }

    /// The results of one day with their times; lines that do not decode (a torn last line
    /// after a crash) are skipped and counted.
    public func results(dayStart: Int) -> (results: [(time: Double, result: TLSSessionResult)], skipped: Int) {
        sync()
        guard let data = FileManager.default.contents(atPath: path(dayStart: dayStart)) else { return ([], 0) }
        let decoder = JSONDecoder()
        var out: [(Double, TLSSessionResult)] = []
        var skipped = 0
        for line in data.split(separator: 10) where !line.isEmpty {
            if let decoded = try? decoder.decode(Line.self, from: line) { out.append((decoded.t, decoded.r)) } else { skipped += 1 }
        }
        return (out, skipped)
    }

    /// Removes a day's file once every report of it is sent.
    public func remove(dayStart: Int) {
        let path = path(dayStart: dayStart)
        state.withLockedValue { state in
            if state.open?.dayStart == dayStart, let open = state.open {
                close(open.fd)
                state.open = nil
            }
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            if unlink(path) == 0 { state.bytes = max(0, state.bytes - size) }
        }
    }
}
