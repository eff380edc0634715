import Foundation
import Testing
@testable import RelayTLS

/// A throwaway PKI made with the `openssl` command line in a temporary directory, one per suite
/// (see `PKIScope`). Every leaf has its own P-256 key.
final class ThrowawayPKI: Sendable {
    enum Leaf: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// mx.example.test, signed by the CA.
        case good
        /// mx.example.test, signed by another CA.
        case otherCA = "otherca"
        /// mx.example.test, self-signed.
        case selfSigned = "selfsigned"
        /// mx.example.test, signed by the CA, valid only in January 2020.
        case expired
        /// wrong.example.test, signed by the CA.
        case wrongName = "wrongname"

        var testDescription: String { rawValue }
    }

    @TaskLocal static var current: ThrowawayPKI?

    let directory: String
    /// TLSA 3 1 1 data (SHA-256 of the leaf's SubjectPublicKeyInfo) per leaf, from the CLI.
    let leafSPKISHA256: [Leaf: [UInt8]]
    /// TLSA 2 1 1 data of the CA (and of the other CA), from the CLI.
    let caSPKISHA256: [UInt8]
    let otherCASPKISHA256: [UInt8]

    var caFile: String { directory + "/ca.pem" }
    var otherCAFile: String { directory + "/ca2.pem" }
    func certificateFile(_ leaf: Leaf) -> String { directory + "/\(leaf.rawValue).pem" }
    func keyFile(_ leaf: Leaf) -> String { directory + "/\(leaf.rawValue).key" }
    /// The CA certificate a leaf's server sends after the leaf (nil for the self-signed one).
    func chainFile(_ leaf: Leaf) -> String? {
        switch leaf {
        case .good, .expired, .wrongName: return caFile
        case .otherCA: return otherCAFile
        case .selfSigned: return nil
        }
    }

    func tlsa311(_ leaf: Leaf) -> TLSARecordData {
        TLSARecordData(usage: 3, selector: 1, matchingType: 1, data: leafSPKISHA256[leaf]!)
    }
    var tlsa211: TLSARecordData { TLSARecordData(usage: 2, selector: 1, matchingType: 1, data: caSPKISHA256) }

    private init(directory: String, leafSPKISHA256: [Leaf: [UInt8]], caSPKISHA256: [UInt8], otherCASPKISHA256: [UInt8]) {
        self.directory = directory
        self.leafSPKISHA256 = leafSPKISHA256
        self.caSPKISHA256 = caSPKISHA256
        self.otherCASPKISHA256 = otherCASPKISHA256
    }

    static func generate() throws -> ThrowawayPKI {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("relaytls-pki-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        do {
            try Shell.run(generationScript, in: directory)
            func spki(_ file: String) throws -> [UInt8] {
                let out = try Shell.run(
                    "openssl x509 -in \(file) -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r",
                    in: directory)
                let hex = String(out.prefix { !$0.isWhitespace })
                guard hex.count == 64, let bytes = TLSARecordData(usage: 3, selector: 1, matchingType: 1, hex: hex)?.data else {
                    throw Shell.Failure(command: "dgst \(file)", status: 0, output: out)
                }
                return bytes
            }
            var leaves: [Leaf: [UInt8]] = [:]
            for leaf in Leaf.allCases { leaves[leaf] = try spki("\(leaf.rawValue).pem") }
            return ThrowawayPKI(directory: directory, leafSPKISHA256: leaves,
                                caSPKISHA256: try spki("ca.pem"), otherCASPKISHA256: try spki("ca2.pem"))
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static let generationScript = #"""
        set -e
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"; }
        for ca in ca ca2; do
          key $ca
          openssl req -x509 -new -key $ca.key -out $ca.pem -days 30 -subj "/O=tlsrelay tests/CN=Test CA $ca" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        done
        request() {  # name cn
          key $1
          openssl req -new -key $1.key -out $1.csr -subj "/CN=$2"
          printf 'basicConstraints=CA:FALSE\nsubjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$2" > $1.ext
        }
        leaf() {  # name cn signer
          request $1 $2
          openssl x509 -req -in $1.csr -CA $3.pem -CAkey $3.key -days 30 -extfile $1.ext -out $1.pem
        }
        leaf good mx.example.test ca
        leaf otherca mx.example.test ca2
        leaf wrongname wrong.example.test ca
        key selfsigned
        openssl req -x509 -new -key selfsigned.key -out selfsigned.pem -days 30 -subj /CN=mx.example.test \
          -addext subjectAltName=DNS:mx.example.test
        # Validity in the past needs `openssl ca` (x509 -req has no start date in OpenSSL 3.0).
        request expired mx.example.test
        mkdir -p cadb && : > cadb/index.txt && echo 01 > cadb/serial
        cat > ca.cnf <<'EOF'
        [ ca ]
        default_ca = testca
        [ testca ]
        database = cadb/index.txt
        new_certs_dir = cadb
        serial = cadb/serial
        default_md = sha256
        policy = anything
        unique_subject = no
        [ anything ]
        commonName = supplied
        EOF
        openssl ca -config ca.cnf -batch -notext -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem \
          -startdate 20200101000000Z -enddate 20200201000000Z -extfile expired.ext
        """#
}

/// Runs each test of a suite inside one throwaway PKI, removed when the suite ends.
struct PKIScope: SuiteTrait, TestScoping {
    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let pki = try ThrowawayPKI.generate()
        defer { pki.remove() }
        try await ThrowawayPKI.$current.withValue(pki) {
            try await function()
        }
    }
}

extension Trait where Self == PKIScope {
    static var throwawayPKI: Self { PKIScope() }
}

enum Shell {
    struct Failure: Error, CustomStringConvertible {
        let command: String
        let status: Int32
        let output: String
        var description: String { "`\(command)` exited with \(status): \(output)" }
    }

    /// Runs `script` with /bin/sh in `directory`; returns stdout. Throws on a non-zero exit.
    @discardableResult
    static func run(_ script: String, in directory: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read both to the end before waiting (a full pipe would block the child).
        let errorData = LockedData()
        let errorReader = Thread {
            errorData.append(stderr.fileHandleForReading.readDataToEndOfFile())
            errorData.markFinished()
        }
        errorReader.start()
        let out = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while !errorData.finished { usleep(1_000) }
        guard process.terminationStatus == 0 else {
            throw Failure(command: String(script.prefix(80)), status: process.terminationStatus,
                          output: String(decoding: out, as: UTF8.self) + errorData.text)
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Bytes collected from another thread.
final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var done = false

    func append(_ more: Data) {
        lock.lock()
        defer { lock.unlock() }
        data.append(more)
    }

    func markFinished() {
        lock.lock()
        defer { lock.unlock() }
        done = true
    }

    var finished: Bool {
        lock.lock()
        defer { lock.unlock() }
        return done
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}
