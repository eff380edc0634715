import Foundation
import Testing
import FuzzTargets

/// A deterministic mutation fuzzer over every parser that reads untrusted input: seed inputs
/// from `fuzz/corpus/<target>/` are mutated (bit flips, byte insertions and deletions,
/// splices, protocol tokens) and fed to the parser. Any crash or trap fails the run; each
/// target also checks its invariant (`FuzzTarget.check`, shared with the libFuzzer binary). The seed is fixed, so a failure reproduces exactly; set
/// `TLSRELAY_FUZZ_ITERATIONS` for longer runs (default 3000 per target).
@Suite("Parser fuzzing")
struct ParserFuzzTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let iterations = Int(ProcessInfo.processInfo.environment["TLSRELAY_FUZZ_ITERATIONS"] ?? "") ?? 3000

    /// xorshift64*: fast and reproducible.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return state &* 2685821657736338717
        }
        mutating func below(_ bound: Int) -> Int { bound <= 1 ? 0 : Int(next() % UInt64(bound)) }
    }

    static let tokens: [[UInt8]] = ["\r\n", "\n", "\r", ".", "\r\n.\r\n", ":", "=", ";", "<", ">", "@", "*.", "\"", "\\", " ",
                                    "mx: ", "version: STSv1", "v=STSv1", "id=", "[", "]", "[[", "]]", "=\"", "\u{00FC}", "\u{0000}",
                                    "+", "9999999999999999999999", "-1", "SIZE=", "NOTIFY=", "ORCPT=", "250-", "250 "].map { Array($0.utf8) }

    static func seeds(_ target: String) throws -> [[UInt8]] {
        let directory = root.appendingPathComponent("fuzz/corpus/\(target)")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        #expect(!names.isEmpty, "no seeds for \(target)")
        return try names.map { Array(try Data(contentsOf: directory.appendingPathComponent($0))) }
    }

    static func mutate(_ input: [UInt8], _ random: inout Random, corpus: [[UInt8]]) -> [UInt8] {
        var bytes = input
        for _ in 0...random.below(4) {
            switch random.below(6) {
            case 0 where !bytes.isEmpty:
                bytes[random.below(bytes.count)] ^= UInt8(1 << random.below(8))
            case 1:
                bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: random.below(bytes.count + 1))
            case 2 where !bytes.isEmpty:
                let start = random.below(bytes.count)
                bytes.removeSubrange(start..<min(bytes.count, start + 1 + random.below(16)))
            case 3:
                bytes.insert(contentsOf: tokens[random.below(tokens.count)], at: random.below(bytes.count + 1))
            case 4:
                let other = corpus[random.below(corpus.count)]
                if !other.isEmpty {
                    let start = random.below(other.count)
                    bytes.insert(contentsOf: other[start..<min(other.count, start + 1 + random.below(64))], at: random.below(bytes.count + 1))
                }
            default:
                if !bytes.isEmpty {
                    let start = random.below(bytes.count)
                    let chunk = Array(bytes[start..<min(bytes.count, start + 1 + random.below(32))])
                    bytes.insert(contentsOf: chunk, at: random.below(bytes.count + 1))
                }
            }
        }
        return bytes
    }

    /// Runs `body` on every seed and `iterations` mutants.
    static func fuzz(_ target: String, seed: UInt64, _ body: ([UInt8]) throws -> Void) throws {
        let corpus = try seeds(target)
        var random = Random(state: seed)
        for input in corpus { try body(input) }
        var current = corpus[0]
        for iteration in 0..<iterations {
            let base = iteration % 7 == 0 ? corpus[random.below(corpus.count)] : current
            current = mutate(base, &random, corpus: corpus)
            if current.count > 8192 { current = Array(current.prefix(8192)) }
            if let path = ProcessInfo.processInfo.environment["TLSRELAY_FUZZ_LAST_INPUT"] {
                // Debugging aid: the input being tried, to reproduce a crash.
                FileManager.default.createFile(atPath: path + "." + target, contents: Data(current))
            }
            try body(current)
        }
    }

    /// Runs the target on every seed and `iterations` mutants; a broken invariant fails. The
    /// loop runs on a thread of its own, so that it does not hold the cooperative pool the
    /// timing tests of other suites need.
    static func run(_ target: FuzzTarget, seed: UInt64) async throws {
        let problems: [String] = try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                var found: [String] = []
                do {
                    try fuzz(target.rawValue, seed: seed) { input in
                        if let problem = target.check(input), found.count < 5 {
                            found.append("\(target.rawValue): \(problem) for input \(input)")
                        }
                    }
                    continuation.resume(returning: found)
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.stackSize = 16 << 20
            thread.start()
        }
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    @Test("SMTP command lines through the server session")
    func commands() async throws { try await Self.run(.smtpCommands, seed: 1) }

    @Test("DATA framing: consumed bytes never exceed the input; content never holds a bare CR/LF")
    func data() async throws { try await Self.run(.smtpData, seed: 2) }

    @Test("server replies (the client side's parser)")
    func replies() async throws { try await Self.run(.replies, seed: 3) }

    @Test("MTA-STS policy bodies")
    func stsPolicy() async throws { try await Self.run(.stsPolicy, seed: 4) }

    @Test("MTA-STS TXT records")
    func stsRecord() async throws { try await Self.run(.stsRecord, seed: 5) }

    @Test("configuration files: accepted ones render and read back the same")
    func configuration() async throws { try await Self.run(.config, seed: 6) }

    @Test("TLSA RRsets through the rdata parser and the planner's host decision")
    func tlsaRdata() async throws { try await Self.run(.tlsaRdata, seed: 7) }

    @Test("_smtp._tls records (RFC 8460 §3)")
    func tlsrptRecord() async throws { try await Self.run(.tlsrptRecord, seed: 8) }

    @Test("message header sections: TLS-Required whatever the chunking")
    func messageHeader() async throws { try await Self.run(.messageHeader, seed: 9) }

    @Test("every fuzz target has seeds")
    func everyTargetHasSeeds() throws {
        for target in FuzzTarget.allCases { #expect(try !Self.seeds(target.rawValue).isEmpty) }
    }
}
