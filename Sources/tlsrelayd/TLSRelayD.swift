import ArgumentParser
import Foundation
import Logging
import RelayConfig
import RelayDaemon
import RelayObservability
#if canImport(Glibc)
import Glibc
#endif

/// `tlsrelayd`: accepts mail from the local MTA and relays it over authenticated TLS.
@main
struct TLSRelayD: AsyncParsableCommand {
    /// The entry point: the arguments are read so that a preloaded library cannot make them
    /// vanish (see `ProcessArguments`).
    static func main() async {
        await main(ProcessArguments.afterProgramName())
    }

    static let configuration = CommandConfiguration(
        commandName: "tlsrelayd",
        abstract: "A relayhost that delivers mail only over the TLS that DANE and MTA-STS require.",
        version: TLSRelayVersion.string)

    @Option(name: .long, help: "Configuration file (TOML).")
    var config = "/etc/tlsrelay/tlsrelay.toml"

    @Flag(name: .long, help: "Validate the configuration, print the effective settings and exit (0 valid, 78 invalid).")
    var checkConfig = false

    @Flag(name: .long, help: "With --check-config: print nothing when the configuration is valid (warnings and errors still go to standard error).")
    var quiet = false

    func run() async throws {
        let settings: RelayConfiguration
        do {
            guard FileManager.default.fileExists(atPath: config) else {
                writeStandardError("tlsrelayd: configuration file \(config) does not exist; name another with --config FILE\n")
                throw ExitCode(DaemonExitCode.config)
            }
            settings = try ConfigurationLoader.load(path: config)
        } catch let error as ConfigurationError {
            writeStandardError("tlsrelayd: configuration error: \(error)\n")
            throw ExitCode(DaemonExitCode.config)
        }
        var problems = ConfigurationCheck.problems(settings)
        if problems.isEmpty {
            do { try Daemon.checkResolver(settings.dns) } catch { problems.append("[dns]: \(error)") }
            do { _ = try Daemon.loadInboundCertificate(settings.server) } catch { problems.append("[server]: \(error)") }
        }
        if !problems.isEmpty {
            for problem in problems { writeStandardError("tlsrelayd: configuration error: \(config): \(problem)\n") }
            throw ExitCode(DaemonExitCode.config)
        }
        for warning in ConfigurationCheck.warnings(settings, now: Date().timeIntervalSince1970) { writeStandardError("tlsrelayd: warning: \(config): \(warning)\n") }
        if checkConfig {
            if quiet { return }
            print("# \(config): configuration is valid; effective settings:")
            print(settings.renderTOML(), terminator: "")
            return
        }
        let level = Logger.Level(rawValue: settings.logLevel) ?? .info
        LogLevelControl.shared.level = level
        if JournalStream.isStandardError {
            // Under systemd: native journald entries with structured fields (QUEUE_ID, ...).
            LoggingSystem.bootstrap { _ in JournalLogHandler(identifier: "tlsrelayd") }
        } else {
            LoggingSystem.bootstrap { label in StandardErrorLogHandler(label: label, level: level) }
        }
        let logger = Logger(label: "tlsrelayd")
        do {
            try await Daemon(configuration: settings, logger: logger, configurationPath: config).run()
        } catch let error as PolicyStateStores.SchemaTooNew {
            // Like a configuration error: restarting does not help (RestartPreventExitStatus=78).
            logger.critical("fatal: \(error)")
            writeStandardError("tlsrelayd: configuration error: [state]: \(error)\n")
            throw ExitCode(DaemonExitCode.config)
        } catch {
            logger.critical("fatal: \(error)")
            throw ExitCode(DaemonExitCode.osError)
        }
    }
}

func writeStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

