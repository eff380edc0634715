import FuzzTargets
#if canImport(Glibc)
import Glibc
#endif
#if LIBFUZZER
import CLibFuzzer
#endif

// Built two ways:
// - `make fuzz` builds it with `-sanitize=fuzzer -DLIBFUZZER`: main() hands over to libFuzzer's
//   driver, which feeds coverage-guided inputs to the target named by the environment variable
//   TLSRELAY_FUZZ_TARGET (one of FuzzTarget's raw values); the arguments are libFuzzer's.
// - A plain `swift build` gives a replayer: `tlsrelay-fuzz TARGET FILE...` runs each file
//   through the target once (to reproduce a libFuzzer finding under a debugger).

@main
struct FuzzEntry {
#if LIBFUZZER
    static func main() {
        guard let name = getenv("TLSRELAY_FUZZ_TARGET").map({ String(cString: $0) }), FuzzTarget(rawValue: name) != nil else {
            print("set TLSRELAY_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))")
            exit(64)
        }
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            // One input; a broken invariant traps, so libFuzzer saves the input.
            let target = FuzzTarget(rawValue: String(cString: getenv("TLSRELAY_FUZZ_TARGET")))!
            let input = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
            if let problem = target.check(input) {
                fatalError("\(target.rawValue): \(problem)")
            }
            return 0
        })
    }
#else
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name), arguments.count > 1 else {
            print("usage: tlsrelay-fuzz TARGET FILE...   (TARGET: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))")
            exit(64)
        }
        var failed = false
        for path in arguments.dropFirst() {
            guard let file = fopen(path, "rb") else {
                print("\(path): cannot open")
                exit(66)
            }
            var input: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = fread(&buffer, 1, buffer.count, file)
                if count <= 0 { break }
                input.append(contentsOf: buffer[0..<count])
            }
            fclose(file)
            if let problem = target.check(input) {
                print("\(path): \(problem)")
                failed = true
            } else {
                print("\(path): ok")
            }
        }
        exit(failed ? 1 : 0)
    }
#endif
}
