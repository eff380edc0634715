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
