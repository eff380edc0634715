import Foundation
import Testing
@testable import RelayDNS

/// The loopback test world (testworld/world.py), brought up once per suite by the
/// `.testWorld` trait and described by its `world.json`.
final class TestWorld: Sendable {
    /// The world of the running suite (set by `TestWorldTrait`).
    @TaskLocal static var current: TestWorld?

    let parent: URL
    let dir: URL
    let data: WorldJSON
    let upSeconds: Double

    private init(parent: URL, dir: URL, data: WorldJSON, upSeconds: Double) {
        self.parent = parent
        self.dir = dir
        self.data = data
        self.upSeconds = upSeconds
    }

    /// The package root: the nearest directory above this file holding Package.swift and
    /// testworld/world.py.
    static func packageRoot(file: String = #filePath) throws -> URL {
        for start in [URL(fileURLWithPath: file), URL(fileURLWithPath: file).resolvingSymlinksInPath()] {
            var d = start.deletingLastPathComponent()
            while d.path != "/" {
                let fm = FileManager.default
                if fm.fileExists(atPath: d.appendingPathComponent("Package.swift").path),
                   fm.fileExists(atPath: d.appendingPathComponent("testworld/world.py").path) {
                    return d
                }
                d = d.deletingLastPathComponent()
            }
        }
        throw WorldError("no package root with testworld/world.py above \(file)")
    }

    /// Runs `python3 testworld/world.py ARGS` from the package root; returns (status, output).
    static func worldPy(_ args: [String], outputDir: URL) async throws -> (Int32, String) {
        let root = try packageRoot()
        let out = outputDir.appendingPathComponent("world-py-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        let handle = try FileHandle(forWritingTo: out)
        defer { try? handle.close() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // Foundation's Process starts children with almost every signal blocked (seen on
        // Linux, Swift 6.3: SigBlk fffffffe3bfaea27), and Python keeps that mask for the
        // world's daemons, so SIGTERM would not stop them and `down` would wait 5 s per
        // daemon before SIGKILL. Clear the mask, then exec world.py.
        p.arguments = ["python3", "-c",
                       "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execvp(sys.argv[1], sys.argv[1:])",
                       "python3", "testworld/world.py"] + args
        p.currentDirectoryURL = root
        // Files, not pipes: the world's daemons must not hold our pipe open.
        p.standardOutput = handle
        p.standardError = handle
        p.standardInput = FileHandle.nullDevice
        let status: Int32 = try await withCheckedThrowingContinuation { cont in
            p.terminationHandler = { cont.resume(returning: $0.terminationStatus) }
            do { try p.run() } catch {
                p.terminationHandler = nil
                cont.resume(throwing: error)
            }
        }
        let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(at: out)
        return (status, text)
    }

    /// Brings a world up in a fresh temporary directory. Waits (up to `busyWait` seconds) while
    /// the fixed loopback addresses are taken by somebody else's world.
    static func up(busyWait: Double = 240) async throws -> TestWorld {
        let parent = URL(fileURLWithPath: NSTemporaryDirectory())
            .appendingPathComponent("relaydns-world-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: parent, withIntermediateDirectories: true)
        // Postfix (user postfix) must reach DIR/postfix.
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: parent.path)
        let dir = parent.appendingPathComponent("world")
        let started = Date()
        while true {
            let t0 = Date()
            // A free address slot: another world (started by hand or by a parallel suite) may
            // hold slot 0.
            let (status, output) = try await worldPy(["up", "--dir", dir.path, "--slot", "auto"], outputDir: parent)
            if status == 0 {
                let waited = t0.timeIntervalSince(started)
                if waited > 1 { print("[RelayDNSTests] waited \(Int(waited)) s for another world to release its addresses") }
                let json = try Data(contentsOf: dir.appendingPathComponent("world.json"))
                let data = try JSONDecoder().decode(WorldJSON.self, from: json)
                return TestWorld(parent: parent, dir: dir, data: data, upSeconds: Date().timeIntervalSince(t0))
            }
            // Clean up whatever a failed start left behind before retrying or failing.
            if FileManager.default.fileExists(atPath: dir.path) {
                _ = try? await worldPy(["down", "--dir", dir.path], outputDir: parent)
                try? FileManager.default.removeItem(at: dir)
            }
            if output.contains("is not free"), Date().timeIntervalSince(started) < busyWait {
                try await Task.sleep(nanoseconds: 3_000_000_000)
                continue
            }
            try? FileManager.default.removeItem(at: parent)
            throw WorldError("world.py up failed (exit \(status)) after \(Int(Date().timeIntervalSince(started))) s:\n\(output)")
        }
    }

    /// Stops the world and removes its directory.
    func down() async throws {
        let (status, output) = try await Self.worldPy(["down", "--dir", dir.path], outputDir: parent)
        try? FileManager.default.removeItem(at: parent)
        if status != 0 { throw WorldError("world.py down failed (exit \(status)):\n\(output)") }
    }

    /// A resolver configured like the relay for this world: stub zone `test.` at the world's
    /// NSD, trust anchor from the world.
    func resolver(timeoutSeconds: Double = 5) throws -> Resolver {
        try Resolver(configuration: ResolverConfiguration(
            trustAnchorFile: data.dns.trust_anchor_file,
            stubZones: [DNSStubZone(name: data.dns.zone,
                                    servers: [DNSServerAddress(address: data.dns.address, port: data.dns.port)])],
            timeoutSeconds: timeoutSeconds))
    }
}

struct WorldError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Brings one world up around a whole suite and takes it down afterwards. A world that fails
/// to start fails the suite (the error is recorded as an issue), it never skips it.
struct TestWorldTrait: SuiteTrait, TestScoping {
    var isRecursive: Bool { false }

    func provideScope(for test: Test, testCase: Test.Case?,
                      performing function: @Sendable () async throws -> Void) async throws {
        let world = try await TestWorld.up()
        print("[RelayDNSTests] test world up in \(String(format: "%.2f", world.upSeconds)) s at \(world.dir.path)")
        do {
            try await TestWorld.$current.withValue(world) { try await function() }
        } catch {
            try await world.down()
            throw error
        }
        let t0 = Date()
        try await world.down()
        print("[RelayDNSTests] test world down in \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")
    }
}

extension Trait where Self == TestWorldTrait {
    /// One loopback test world for the suite.
    static var testWorld: Self { TestWorldTrait() }
}

// MARK: - world.json (the parts these tests read)

struct WorldJSON: Decodable, Sendable {
    struct DNS: Decodable, Sendable {
        let address: String
        let port: Int
        let zone: String
        let trust_anchor_file: String
    }
    struct Lookup: Decodable, Sendable {
        let name: String
        let type: String
        let status: String     // secure | insecure | bogus | servfail
        let result: String     // data | nodata | nxdomain | none
    }
    struct HostDNS: Decodable, Sendable {
        /// AAAA for the host fails (SERVFAIL) while A and TLSA answer.
        let aaaa_servfail: Bool?
    }
    struct Host: Decodable, Sendable {
        struct Lookups: Decodable, Sendable {
            let a: Lookup
            let tlsa: Lookup
        }
        let name: String
        let preference: Int
        let address: String
        let cname_target: String?
        let tlsa_name: String
        let tlsa: [String]
        /// TLSA rdata shorter than 3 octets, in generic form (`\\# 2 0301`).
        let tlsa_malformed: [String]?
        let dns: HostDNS?
        let lookups: Lookups
    }
    struct MTASTS: Decodable, Sendable {
        let txt: String
        let policy_host: String
        let address: String
    }
    struct Scenario: Decodable, Sendable {
        struct Lookups: Decodable, Sendable {
            let mx: Lookup
        }
        let name: String
        let domain: String
        let mx_mode: String
        let mx: [Host]
        let lookups: Lookups
        let mta_sts: MTASTS?
    }
    let dns: DNS
    let scenarios: [String: Scenario]
}
