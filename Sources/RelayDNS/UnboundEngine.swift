import CUnbound
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What libunbound said about one query, copied out of its `ub_result` (which is freed in the
/// callback).
struct UnboundResult: Sendable {
    var rcode: Int
    var secure: Bool
    var bogus: Bool
    var whyBogus: String?
    var nxdomain: Bool
    var haveData: Bool
    var canonicalName: String?
    var rdata: [[UInt8]]
    var ttl: Int
}

/// `/dev/null` as a `FILE*` for libunbound's log output. libunbound keeps the log stream in a
/// process-wide global, so this stream is opened once and never closed.
nonisolated(unsafe) private let unboundLogSink: UnsafeMutablePointer<FILE>? = fopen("/dev/null", "w")

/// Monotonic clock in nanoseconds.
@inline(__always)
private func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// One in-flight lookup. Every mutable field is guarded by the owning engine's lock.
///
/// Ownership rule for the `Unmanaged` retain passed to libunbound as `mydata`: it is released
/// exactly once, by the C callback if libunbound calls it, otherwise by whoever gets 0 from
/// `ub_cancel` (libunbound then never calls back) or by the submitter when `ub_resolve_async`
/// fails.
final class PendingQuery: @unchecked Sendable {
    let serial: UInt64
    let name: String
    let type: DNSRecordType
    let deadline: UInt64
    let engine: UnboundEngine
    /// Installed when the task suspends; taken (set to nil) by whoever finishes the query.
    var continuation: CheckedContinuation<UnboundResult, any Error>?
    /// Set when the query finished before its continuation was installed.
    var earlyOutcome: Result<UnboundResult, any Error>?
    var finished = false
    /// libunbound's id once `ub_resolve_async` has returned.
    var asyncID: Int32?
    /// Finished (timeout / task cancellation / shutdown) before the id was known: the submitter
    /// must `ub_cancel` as soon as it has the id.
    var cancelWhenSubmitted = false

    init(serial: UInt64, name: String, type: DNSRecordType, deadline: UInt64, engine: UnboundEngine) {
        self.serial = serial
        self.name = name
        self.type = type
        self.deadline = deadline
        self.engine = engine
    }
}

/// The capture-free C callback given to `ub_resolve_async`; runs on the event thread inside
/// `ub_process`.
private let unboundCallback: ub_callback_type = { mydata, err, result in
    guard let mydata else {
        if let result { ub_resolve_free(result) }
        return
    }
    let query = Unmanaged<PendingQuery>.fromOpaque(mydata).takeRetainedValue()
    let outcome: Result<UnboundResult, any Error>
    if err != 0 || result == nil {
        outcome = .failure(DNSLookupError.resolverError(
            "libunbound: \(String(cString: ub_strerror(err)))"))
    } else {
        outcome = .success(UnboundEngine.copy(result!.pointee))
    }
    if let result { ub_resolve_free(result) }
    query.engine.finish(query, outcome, fromCallback: true)
}

/// One shared libunbound context in threaded asynchronous mode, plus the event thread that
/// `poll()`s `ub_fd` and a wake-up pipe and calls `ub_process`, which runs the callbacks. The
/// same thread enforces per-query deadlines.
final class UnboundEngine: @unchecked Sendable {
    private enum State { case running, stopping, stopped }

    private let ctx: OpaquePointer
    private let timeoutNanoseconds: UInt64
    private let wakeRead: Int32
    private let wakeWrite: Int32

    // Guarded by `lock`.
    private let lock = NSCondition()
    private var state = State.running
    private var pending: [UInt64: PendingQuery] = [:]
    /// (deadline, serial) in submission order; deadlines are monotonic because every query gets
    /// the same timeout and serials are assigned under the lock.
    private var deadlines: [(UInt64, UInt64)] = []
    private var deadlinesHead = 0
    private var nextSerial: UInt64 = 0
    /// Submitters currently inside `ub_resolve_async` / `ub_cancel`: the context must outlive them.
    private var busySubmitters = 0
    /// When the event thread will wake up on its own (`.max` = not before an event).
    private var threadWakeAt = UInt64.max
    private var stopThread = false
    private var thread: pthread_t?

    /// Builds and fully configures the context; starts the event thread.
    /// - Throws: `DNSLookupError.resolverError` with libunbound's `ub_strerror` text (or the
    ///   system error) when any setting is rejected.
    init(configuration c: ResolverConfiguration) throws {
        guard c.timeoutSeconds > 0, c.timeoutSeconds.isFinite else {
            throw DNSLookupError.resolverError("timeoutSeconds must be a positive number, not \(c.timeoutSeconds)")
        }
        timeoutNanoseconds = UInt64(min(c.timeoutSeconds, 86_400) * 1e9)
        guard let ctx = ub_ctx_create() else {
            throw DNSLookupError.resolverError("ub_ctx_create failed")
        }
        self.ctx = ctx
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            let e = errno
            ub_ctx_delete(ctx)
            throw DNSLookupError.resolverError("pipe: \(String(cString: strerror(e)))")
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        do {
            try configure(c)
            try startThread()
        } catch {
            ub_ctx_delete(ctx)
            close(wakeRead)
            close(wakeWrite)
            state = .stopped
            throw error
        }
    }

    deinit {
        shutdown()
    }

    private func check(_ rc: Int32, _ what: @autoclosure () -> String) throws {
        if rc != 0 {
            throw DNSLookupError.resolverError("\(what()): \(String(cString: ub_strerror(rc)))")
        }
    }

    private func configure(_ c: ResolverConfiguration) throws {
        // Threads, never fork (notes: without this the first async lookup forks a process).
        try check(ub_ctx_async(ctx, 1), "ub_ctx_async")
        if let unboundLogSink {
            try check(ub_ctx_debugout(ctx, UnsafeMutableRawPointer(unboundLogSink)), "ub_ctx_debugout")
        }
        try check(ub_ctx_set_option(ctx, "do-not-query-localhost:", "no"), "do-not-query-localhost")
        // val-log-level 2 makes the validator record the reason that libunbound returns as
        // why_bogus; the log lines themselves go to /dev/null.
        try check(ub_ctx_set_option(ctx, "val-log-level:", "2"), "val-log-level")
        for zone in c.stubZones {
            let apex = try DNSWire.normalize(zone.name) + "."
            guard !zone.servers.isEmpty else {
                throw DNSLookupError.resolverError("stub zone \(apex) has no servers")
            }
            // RFC 6761 names (test., invalid., ...) are built-in local zones; make this one
            // transparent so the stub is asked (notes: "nodefault" via set_option does nothing).
            try check(ub_ctx_set_option(ctx, "local-zone:", "\(apex) transparent"),
                      "local-zone \(apex) transparent")
            for server in zone.servers {
                try Self.checkServer(server)
                try check(ub_ctx_set_stub(ctx, apex, server.unboundNotation, 0),
                          "stub zone \(apex) server \(server.unboundNotation)")
            }
        }
        for server in c.forwarders {
            try Self.checkServer(server)
            try check(ub_ctx_set_fwd(ctx, server.unboundNotation), "forwarder \(server.unboundNotation)")
        }
        if let file = c.autoTrustAnchorFile {
            // RFC 5011: libunbound reads the file, probes the zone's DNSKEY set and rewrites the
            // file as keys are added and revoked.
            guard access(file, R_OK | W_OK) == 0 else {
                let e = errno
                throw DNSLookupError.resolverError(
                    "cannot use the automated trust anchor file \(file) (it must be readable and writable): \(String(cString: strerror(e)))")
            }
            try check(ub_ctx_add_ta_autr(ctx, file), "automated trust anchor file \(file)")
        } else if let file = c.trustAnchorFile {
            // libunbound only records the file name here and reads it when the context is
            // finalized; read it now to report a precise error.
            guard let handle = fopen(file, "r") else {
                let e = errno
                throw DNSLookupError.resolverError(
                    "cannot read trust anchor file \(file): \(String(cString: strerror(e)))")
            }
            fclose(handle)
            try check(ub_ctx_add_ta_file(ctx, file), "trust anchor file \(file)")
        }
        // Finalize now (this applies all settings and loads the trust anchors), so that a bad
        // configuration fails here and not on the first lookup. Removing a local zone that
        // does not exist is a no-op apart from finalizing.
        try check(ub_ctx_zone_remove(ctx, "tlsrelay-finalize.invalid."),
                  "applying the resolver configuration (trust anchor \(c.autoTrustAnchorFile ?? c.trustAnchorFile ?? "none"))")
    }

    private static func checkServer(_ server: DNSServerAddress) throws {
        guard (1...65535).contains(server.port) else {
            throw DNSLookupError.resolverError("DNS server \(server.address): port \(server.port) out of range")
        }
        var v4 = in_addr()
        var v6 = in6_addr()
        guard inet_pton(AF_INET, server.address, &v4) == 1 || inet_pton(AF_INET6, server.address, &v6) == 1 else {
            throw DNSLookupError.resolverError("DNS server \"\(server.address)\" is not an IP address")
        }
    }

    private func startThread() throws {
        let context = Unmanaged.passRetained(self).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let engine = Unmanaged<UnboundEngine>.fromOpaque(arg!).takeRetainedValue()
            engine.runLoop()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<UnboundEngine>.fromOpaque(context).release()
            throw DNSLookupError.resolverError("pthread_create: \(String(cString: strerror(rc)))")
        }
        thread = tid
    }

    // MARK: - Lookups

    /// Resolves `name` (already validated) for `type`; throws `.timeout` at the deadline,
    /// `CancellationError` when the task is cancelled, `.resolverError` after shutdown.
    func resolve(_ name: String, _ type: DNSRecordType) async throws -> UnboundResult {
        let query = try makeQuery(name, type)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<UnboundResult, any Error>) in
                submit(query, continuation)
            }
        } onCancel: {
            abandon(query, with: CancellationError())
        }
    }

    private func makeQuery(_ name: String, _ type: DNSRecordType) throws -> PendingQuery {
        lock.lock()
        defer { lock.unlock() }
        guard state == .running else {
            throw DNSLookupError.resolverError("resolver has been shut down")
        }
        nextSerial += 1
        return PendingQuery(serial: nextSerial, name: name, type: type,
                            deadline: monotonicNanoseconds() &+ timeoutNanoseconds, engine: self)
    }

    private func submit(_ query: PendingQuery, _ continuation: CheckedContinuation<UnboundResult, any Error>) {
        lock.lock()
        if query.finished {              // cancelled before we got here
            let outcome = query.earlyOutcome!
            lock.unlock()
            continuation.resume(with: outcome)
            return
        }
        guard state == .running else {
            query.finished = true
            lock.unlock()
            continuation.resume(throwing: DNSLookupError.resolverError("resolver has been shut down"))
            return
        }
        query.continuation = continuation
        pending[query.serial] = query
        deadlines.append((query.deadline, query.serial))
        busySubmitters += 1
        let wake = query.deadline < threadWakeAt
        if wake { threadWakeAt = query.deadline }
        lock.unlock()
        if wake { wakeThread() }

        let mydata = Unmanaged.passRetained(query).toOpaque()
        var id: Int32 = 0
        let rc = query.name.withCString { ub_resolve_async(ctx, $0, Int32(query.type.rawValue), 1, mydata, unboundCallback, &id) }
        if rc != 0 {
            Unmanaged<PendingQuery>.fromOpaque(mydata).release()   // no callback will come
            finish(query, .failure(DNSLookupError.resolverError(
                "ub_resolve_async: \(String(cString: ub_strerror(rc)))")), fromCallback: false)
        } else {
            lock.lock()
            query.asyncID = id
            let cancelNow = query.cancelWhenSubmitted
            lock.unlock()
            if cancelNow { cancelInUnbound(query, id: id) }
        }
        lock.lock()
        busySubmitters -= 1
        if busySubmitters == 0 { lock.broadcast() }
        lock.unlock()
    }

    /// Finishes a query with `outcome` if nobody else has; resumes its continuation.
    func finish(_ query: PendingQuery, _ outcome: Result<UnboundResult, any Error>, fromCallback: Bool) {
        lock.lock()
        guard case .claimed(let continuation) = claimLocked(query, outcome) else {
            lock.unlock()
            return
        }
        lock.unlock()
        continuation?.resume(with: outcome)
    }

    /// What `claimLocked` found.
    private enum Claim {
        /// Someone else finished the query first.
        case alreadyFinished
        /// The caller finishes it; resume this continuation (nil: not installed yet, the outcome
        /// was recorded for `submit`).
        case claimed(CheckedContinuation<UnboundResult, any Error>?)
    }

    /// With `lock` held: marks `query` finished and takes its continuation (or records the
    /// outcome for a continuation not yet installed).
    private func claimLocked(_ query: PendingQuery, _ outcome: Result<UnboundResult, any Error>) -> Claim {
        guard !query.finished else { return .alreadyFinished }
        query.finished = true
        pending[query.serial] = nil
        let continuation = query.continuation
        query.continuation = nil
        if continuation == nil { query.earlyOutcome = outcome }
        return .claimed(continuation)
    }

    /// Ends a query without waiting for libunbound (deadline, task cancellation): resumes it
    /// with `error` and cancels it in libunbound.
    private func abandon(_ query: PendingQuery, with error: any Error) {
        lock.lock()
        guard case .claimed(let continuation) = claimLocked(query, .failure(error)) else {
            lock.unlock()
            return
        }
        let id = query.asyncID
        if id == nil { query.cancelWhenSubmitted = true }
        let contextAlive = state != .stopped
        if id != nil && contextAlive { busySubmitters += 1 }
        lock.unlock()
        continuation?.resume(throwing: error)
        if let id, contextAlive {
            cancelInUnbound(query, id: id)
            lock.lock()
            busySubmitters -= 1
            if busySubmitters == 0 { lock.broadcast() }
            lock.unlock()
        }
    }

    /// `ub_cancel` semantics (threaded mode): 0 → the callback will never run, so the retain
    /// given as `mydata` is released here; `UB_NOID` → the callback has run or is about to run
    /// and releases it itself.
    private func cancelInUnbound(_ query: PendingQuery, id: Int32) {
        if ub_cancel(ctx, id) == 0 {
            Unmanaged.passUnretained(query).release()
        }
    }

    // MARK: - Event thread

    private func wakeThread() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private func runLoop() {
        let ubfd = ub_fd(ctx)
        var fds = [pollfd(fd: ubfd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        while true {
            lock.lock()
            if stopThread {
                lock.unlock()
                return
            }
            let next = earliestDeadlineLocked()
            threadWakeAt = next ?? .max
            lock.unlock()
            var timeout: Int32 = -1
            if let next {
                let now = monotonicNanoseconds()
                timeout = next <= now ? 0 : Int32(min((next - now + 999_999) / 1_000_000, 3_600_000))
            }
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 && errno != EINTR { usleep(1000) }
            if n > 0 && fds[1].revents != 0 {
                var sink = [UInt8](repeating: 0, count: 256)
                while read(wakeRead, &sink, sink.count) > 0 {}
            }
            if n > 0 && fds[0].revents != 0 {
                if ub_process(ctx) != 0 { usleep(1000) }   // never spin on a broken pipe
            }
            expireDeadlines()
        }
    }

    /// The earliest deadline of a query still pending; drops finished entries from the queue.
    private func earliestDeadlineLocked() -> UInt64? {
        while deadlinesHead < deadlines.count, pending[deadlines[deadlinesHead].1] == nil {
            deadlinesHead += 1
        }
        if deadlinesHead > 1024 && deadlinesHead * 2 > deadlines.count {
            deadlines.removeFirst(deadlinesHead)
            deadlinesHead = 0
        }
        return deadlinesHead < deadlines.count ? deadlines[deadlinesHead].0 : nil
    }

    private func expireDeadlines() {
        let now = monotonicNanoseconds()
        var expired: [PendingQuery] = []
        lock.lock()
        while let next = earliestDeadlineLocked(), next <= now {
            if let q = pending[deadlines[deadlinesHead].1] { expired.append(q) }
            deadlinesHead += 1
        }
        lock.unlock()
        for q in expired {
            abandon(q, with: DNSLookupError.timeout(name: q.name, type: q.type))
        }
    }

    // MARK: - Shutdown

    /// Stops accepting lookups, resumes every in-flight lookup with
    /// `.resolverError("resolver has been shut down")`, stops the event thread and deletes the
    /// context. Idempotent; blocks briefly (joins the event thread).
    func shutdown() {
        lock.lock()
        guard state == .running else {
            while state != .stopped { lock.wait() }
            lock.unlock()
            return
        }
        state = .stopping
        while busySubmitters > 0 { lock.wait() }
        stopThread = true
        lock.unlock()

        wakeThread()
        // Our callbacks only resume continuations (which never run the task inline), so this
        // is never called on the event thread itself.
        if let thread { _ = pthread_join(thread, nil) }
        // No ub_process runs any more, so every query still pending is still inside libunbound
        // and ub_cancel returns 0 for it.
        lock.lock()
        let left = Array(pending.values)
        lock.unlock()
        for q in left {
            abandon(q, with: DNSLookupError.resolverError("resolver has been shut down"))
        }
        lock.lock()
        state = .stopped
        lock.broadcast()
        // A task cancellation that raced with us may still be inside ub_cancel.
        while busySubmitters > 0 { lock.wait() }
        lock.unlock()
        ub_ctx_delete(ctx)
        close(wakeRead)
        close(wakeWrite)
    }

    // MARK: - Result copy

    static func copy(_ r: ub_result) -> UnboundResult {
        var rdata: [[UInt8]] = []
        if let data = r.data, let lens = r.len {
            var i = 0
            while let item = data[i] {
                let n = Int(lens[i])
                rdata.append(Array(UnsafeRawBufferPointer(start: item, count: max(n, 0))))
                i += 1
            }
        }
        return UnboundResult(rcode: Int(r.rcode), secure: r.secure != 0, bogus: r.bogus != 0,
                             whyBogus: r.why_bogus.map { String(cString: $0) },
                             nxdomain: r.nxdomain != 0, haveData: r.havedata != 0,
                             canonicalName: r.canonname.map { String(cString: $0) },
                             rdata: rdata, ttl: Int(r.ttl))
    }
}
