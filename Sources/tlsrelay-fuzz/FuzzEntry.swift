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

/// Writes `text` to standard error.
func complain(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(2, &bytes, bytes.count)
}

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
        let usage = "usage: tlsrelay-fuzz TARGET FILE...   (TARGET: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))\n"
        guard let name = arguments.first, arguments.count > 1 else {
            complain(usage)
            exit(64)
        }
        guard let target = FuzzTarget(rawValue: name) else {
            complain("tlsrelay-fuzz: unknown target \"\(name)\"\n" + usage)
            exit(64)
        }
        // The fuzzers never try inputs over 8 KiB; a larger file is cut there.
        let maxLength = 8192
        var failed = false
        for path in arguments.dropFirst() {
            guard let file = fopen(path, "rb") else {
                complain("\(path): cannot open: \(String(cString: strerror(errno)))\n")
                exit(66)
            }
            var input = [UInt8](repeating: 0, count: maxLength)
            let count = fread(&input, 1, maxLength, file)
            let readError = ferror(file) != 0
            fclose(file)
            if readError {
                complain("\(path): cannot read\n")
                exit(66)
            }
            input.removeSubrange(count...)
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
