import Foundation
import Testing
import DeliveryPolicy
@testable import RelayDelivery
import RelayPolicy

@Suite("State files: durable replacement and one locked read-modify-write")
struct StateFileTests {
    func directory() throws -> String {
        let path = NSTemporaryDirectory() + "tlsrelay-state-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test("replace writes the new contents and leaves no temporary file; a failure names the path")
    func replace() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try StateFile.replace(dir + "/a.json", with: Data("one".utf8))
        try StateFile.replace(dir + "/a.json", with: Data("two".utf8))
        #expect(FileManager.default.contents(atPath: dir + "/a.json") == Data("two".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["a.json"])
        #expect {
            try StateFile.replace(dir + "/missing/b.json", with: Data())
        } throws: { error in
            "\(error)".contains("/missing/") && (error as? StateFile.WriteError)?.operation == "open"
        }
    }

    @Test("concurrent deliveries never lower the remembered level")
    func concurrentRecords() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try DowngradeMemoryStore(stateDirectory: dir)
        DispatchQueue.concurrentPerform(iterations: 400) { i in
            // Each write is a new hour, so every call reads, compares and writes.
            let security: AchievedSecurity = i % 2 == 0 ? .dane : .tls
            try? store.record(domain: "example.net", security: security, now: Double(i) * 7200, acceptDowngrade: false)
        }
        #expect(store.memory(of: "example.net")?.strongest == .dane)
        let first = try store.noteRefusedDowngrade(domain: "example.net", now: 5)
        let again = try store.noteRefusedDowngrade(domain: "example.net", now: 9)
        #expect(first == 5 && again == 5)
        try store.record(domain: "example.net", security: .tls, now: 10_000_000, acceptDowngrade: true)
        #expect(store.memory(of: "example.net")?.strongest == .tls && store.memory(of: "example.net")?.downgradeFirstSeen == nil)
    }

    @Test("a read-only store (tlsrelayctl check) reads and never writes")
    func readOnly() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let writer = try DowngradeMemoryStore(stateDirectory: dir)
        try writer.record(domain: "example.net", security: .mtaSTS, now: 1, acceptDowngrade: false)
        let reader = try DowngradeMemoryStore(stateDirectory: dir, readOnly: true)
        #expect(reader.memory(of: "example.net")?.strongest == .mtaSTS)
        try reader.record(domain: "example.net", security: .dane, now: 99999, acceptDowngrade: false)
        _ = try reader.noteRefusedDowngrade(domain: "example.net", now: 5)
        #expect(writer.memory(of: "example.net") == reader.memory(of: "example.net"))
        #expect(writer.memory(of: "example.net")?.strongest == .mtaSTS && writer.memory(of: "example.net")?.downgradeFirstSeen == nil)
        let missing = try DowngradeMemoryStore(stateDirectory: dir + "/nothing-here", readOnly: true)
        #expect(missing.memory(of: "example.net") == nil && !FileManager.default.fileExists(atPath: dir + "/nothing-here"))
    }
}

@Suite("Unreadable state files")
struct UnreadableStateTests {
    @Test("a memory file that does not decode, names another domain or holds absurd times is unreadable, treated as dane, never overwritten by less")
    func unreadableMemory() throws {
        let dir = NSTemporaryDirectory() + "tlsrelay-unreadable-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try DowngradeMemoryStore(stateDirectory: dir)
        let cases = ["{\"domain\": \"example.net\", \"strongest\": \"dane\", \"achievedAt\": ",
                     "{\"domain\": \"other.example\", \"strongest\": \"tls\", \"achievedAt\": 1}",
                     "{\"domain\": \"example.net\", \"strongest\": \"tls\", \"achievedAt\": 1, \"downgradeFirstSeen\": 1e300}",
                     "{\"domain\": \"example.net\", \"strongest\": \"TLS\", \"achievedAt\": 1}"]
        for text in cases {
            try Data(text.utf8).write(to: URL(fileURLWithPath: dir + "/memory/example.net.json"))
            guard case .unreadable = store.lookup("example.net") else { Issue.record("read: \(text)"); continue }
            #expect(store.lookup("example.net").fact == MemoryFact(strongest: .dane, unreadable: store.lookup("example.net").fact?.unreadable))
            try store.record(domain: "example.net", security: .tls, now: 10, acceptDowngrade: true)
            #expect(String(decoding: FileManager.default.contents(atPath: dir + "/memory/example.net.json")!, as: UTF8.self) == text)
        }
        try store.record(domain: "example.net", security: .dane, now: 10, acceptDowngrade: false)
        #expect(store.memory(of: "example.net")?.strongest == .dane)
    }

    @Test("the planner holds an unreadable memory at dane and names it; huge times do not crash it")
    func plannerWithUnreadableMemory() {
        var planner = DeliveryPlanner(domain: "example.net", recipients: [0],
                                      settings: PlannerSettings(mtaSTS: false, memoryMode: .enforce),
                                      local: nil, memory: MemoryFact(strongest: .dane, firstRefused: 1e300, unreadable: "broken"), now: 0)
        let start = planner.start()
        #expect(start.effects.contains { if case .log(.warning, let text) = $0 { return text.contains("unreadable") } else { return false } })
        _ = planner.mxResolved(.hosts(["mx.example.net"], secure: false, implicit: false))
        let step = planner.addressesResolved(AddressFact(ipv4: .answer(records: ["192.0.2.1"], status: .insecure, canonicalName: "mx.example.net"),
                                                         ipv6: .answer(records: [], status: .insecure, canonicalName: "mx.example.net")))
        guard case .finish(let outcomes, _, _) = step.action else { Issue.record("\(step.action)"); return }
        #expect(outcomes[0]?.status == .cryptographicFailure && outcomes[0]?.reason.hasPrefix("downgrade memory:") == true)
    }
}

/// The merge rule of downgrade memory (`DomainMemory.merged`), which the files store applies and
/// the PostgreSQL store reproduces in one upsert.
@Suite("Downgrade memory merge rule")
struct MemoryMergeTests {
    func memory(_ level: AchievedSecurity, at: Double, refused: Double? = nil) -> DomainMemory {
        var m = DomainMemory(domain: "example.net", strongest: level, achievedAt: at)
        m.downgradeFirstSeen = refused
        return m
    }

    @Test("a first delivery is remembered; a higher level always wins and clears the grace window")
    func raise() {
        #expect(DomainMemory.merged(nil, domain: "Example.NET", security: .tls, now: 10, acceptDowngrade: false) == memory(.tls, at: 10))
        #expect(DomainMemory.merged(memory(.tls, at: 10, refused: 50), domain: "example.net", security: .dane, now: 60, acceptDowngrade: false)
                == memory(.dane, at: 60))
    }

    @Test("a lower level never wins without acceptDowngrade, whatever the order of two relays")
    func neverLower() {
        for level in [AchievedSecurity.none, .tls, .mtaSTS] {
            #expect(DomainMemory.merged(memory(.dane, at: 10), domain: "example.net", security: level, now: 100_000, acceptDowngrade: false) == nil)
            #expect(DomainMemory.merged(memory(.dane, at: 10, refused: 20), domain: "example.net", security: level, now: 100_000, acceptDowngrade: false) == nil)
        }
        // Relay A records dane, relay B (racing) records tls: both orders end at dane.
        let afterA = DomainMemory.merged(memory(.tls, at: 0), domain: "example.net", security: .dane, now: 5000, acceptDowngrade: false)!
        #expect(DomainMemory.merged(afterA, domain: "example.net", security: .tls, now: 5001, acceptDowngrade: false) == nil)
        let afterB = DomainMemory.merged(memory(.tls, at: 0), domain: "example.net", security: .tls, now: 5001, acceptDowngrade: false)!
        #expect(DomainMemory.merged(afterB, domain: "example.net", security: .dane, now: 5000, acceptDowngrade: false)?.strongest == .dane)
    }

    @Test("an accepted downgrade (grace over) lowers only while a refusal is recorded")
    func acceptedDowngrade() {
        #expect(DomainMemory.merged(memory(.dane, at: 10, refused: 20), domain: "example.net", security: .tls, now: 100_000, acceptDowngrade: true)
                == memory(.tls, at: 100_000))
        // Another relay reached dane meanwhile and cleared the refusal: the level stays.
        #expect(DomainMemory.merged(memory(.dane, at: 90_000), domain: "example.net", security: .tls, now: 100_000, acceptDowngrade: true) == nil)
    }

    @Test("the same level: nothing written within the hour, refreshed after it, a started grace window cleared")
    func sameLevel() {
        #expect(DomainMemory.merged(memory(.tls, at: 10), domain: "example.net", security: .tls, now: 3000, acceptDowngrade: false) == nil)
        #expect(DomainMemory.merged(memory(.tls, at: 10), domain: "example.net", security: .tls, now: 3610, acceptDowngrade: false) == memory(.tls, at: 3610))
        #expect(DomainMemory.merged(memory(.tls, at: 10, refused: 20), domain: "example.net", security: .tls, now: 30, acceptDowngrade: false) == memory(.tls, at: 30))
    }
}
