import Foundation
import Logging
import RelayConfig
import RelayDelivery
import RelayObservability
import RelayPolicy
import RelayPostgres
import RelayTLSRPT

/// The policy state of the configured `[state]` backend: the files in `state_directory`, or the
/// PostgreSQL database several relays share.
public struct PolicyStateStores: Sendable {
    public var sts: any STSPolicyStore
    public var memory: any DowngradeMemoryBackend
    /// The database client; nil for the files backend.
    public var client: PostgresClient?

    /// The schema in the database is newer than this binary: start-up stops (exit 78).
    public struct SchemaTooNew: Error, CustomStringConvertible {
        public var description: String
    }

    /// The connection settings of `[state]`, with the password read from `password_file`.
    /// - Throws: when the password file cannot be read.
    public static func postgresSettings(_ state: RelayConfiguration.State, applicationName: String) throws -> PostgresSettings {
        var password: String?
        if !state.passwordFile.isEmpty {
            guard let data = FileManager.default.contents(atPath: state.passwordFile) else {
                throw PostgresError("state.password_file \(state.passwordFile) cannot be read")
            }
            password = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        }
        return PostgresSettings(host: state.host, port: state.port, dbname: state.dbname, user: state.user, password: password,
                                sslMode: state.sslMode, sslRootCert: state.sslRootCert, connectTimeout: state.connectTimeout,
                                statementTimeout: state.statementTimeout, applicationName: applicationName)
    }

    /// Opens the stores. For PostgreSQL: connects and creates or migrates the schema; the
    /// database must be reachable at start-up (a relay that cannot read the shared state must not
    /// start delivering), afterwards an outage defers deliveries instead.
    /// - Parameters:
    ///   - readOnly: `tlsrelayctl` reading the state: nothing created, no migration.
    ///   - onAvailability: the database became unavailable (a reason) or is back (nil).
    /// - Throws: `SchemaTooNew`, `PostgresError`, or the files' errors.
    public static func open(_ configuration: RelayConfiguration, logger: Logger, readOnly: Bool = false, applicationName: String = "tlsrelayd",
                            onAvailability: @escaping @Sendable (String?) -> Void = { _ in }) async throws -> PolicyStateStores {
        switch configuration.state.backend {
        case .files:
            return PolicyStateStores(sts: try STSPolicyCache(stateDirectory: configuration.stateDirectory, readOnly: readOnly),
                                     memory: try DowngradeMemoryStore(stateDirectory: configuration.stateDirectory, readOnly: readOnly),
                                     client: nil)
        case .postgresql:
            let client = PostgresClient(settings: try postgresSettings(configuration.state, applicationName: applicationName),
                                        onAvailability: onAvailability)
            do {
                if readOnly {
                    if let found = try await PostgresSchema.currentVersion(client), found > PostgresSchema.version {
                        throw SchemaTooNew(description: PostgresSchema.TooNew(found: found, display: client.settings.display).description)
                    }
                } else {
                    let found = try await PostgresSchema.migrate(client)
                    if found < PostgresSchema.version {
                        logger.notice("policy state: schema of \(client.settings.display) \(found == 0 ? "created" : "migrated from version \(found)") at version \(PostgresSchema.version)")
                    }
                }
            } catch let error as PostgresSchema.TooNew {
                await client.shutdown()
                throw SchemaTooNew(description: error.description)
            } catch {
                await client.shutdown()
                throw error
            }
            let cacheSeconds = configuration.state.cacheSeconds
            logger.info("policy state (MTA-STS policies, downgrade memory, TLS-RPT counts) in \(client.settings.display), sslmode \(configuration.state.sslMode), reads cached \(cacheSeconds) s")
            return PolicyStateStores(sts: PostgresSTSPolicyStore(client: client, cacheSeconds: cacheSeconds),
                                     memory: PostgresDowngradeMemory(client: client, cacheSeconds: cacheSeconds), client: client)
        }
    }

    /// One crit alert when the store becomes unavailable, one info line when it is back.
    public static func availabilityReporter(alerts: AlertJournal, logger: Logger, display: String) -> @Sendable (String?) -> Void {
        { reason in
            if let reason {
                alerts.report(SecurityAlert(
                    kind: .configuration, queueID: nil, domain: display, mxHost: nil, address: nil, policySource: "state",
                    resultType: "state-store-unavailable",
                    reason: "the policy state store \(display) is unavailable (\(reason)); deliveries that need policy state are deferred (4.4.3) until it is back; mail is still accepted"))
            } else {
                logger.info("policy state store \(display) is reachable again: deliveries resume")
            }
        }
    }
}
