// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = []

let package = Package(
    name: "tlsrelay",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "tlsrelayd", targets: ["tlsrelayd"]),
        .executable(name: "tlsrelayctl", targets: ["tlsrelayctl"]),
        .executable(name: "tlsrelay-fuzz", targets: ["tlsrelay-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
    ],
    targets: [
        // System libraries (module maps + tiny shims for function-like macros).
        .systemLibrary(name: "CUnbound", path: "Sources/CUnbound", providers: [.apt(["libunbound-dev"])]),
        .systemLibrary(name: "CIDN2", path: "Sources/CIDN2", providers: [.apt(["libidn2-dev"])]),
        // IDNA 2008 (RFC 5890/5891, UTS #46) through libidn2.
        .target(name: "RelayIDNA", dependencies: ["CIDN2"], swiftSettings: strict),
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // PostgreSQL's own client (libpq, over the system OpenSSL) for the shared policy state.
        .systemLibrary(name: "CPostgreSQL", path: "Sources/CPostgreSQL", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        // glibc's malloc.h: malloc_trim, to give back the pages of the start-up scan of a large queue.
        .systemLibrary(name: "CMalloc", path: "Sources/CMalloc"),
        .systemLibrary(name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),

        // Protocol core: grammar, replies, enhanced status codes, session state machine. No I/O.
        .target(name: "SMTPCore", swiftSettings: strict),
        // The durable spool.
        .target(name: "RelayQueue", dependencies: [
            "SMTPCore",
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
        // Configuration model and its TOML reader.
        .target(name: "RelayConfig", dependencies: [
            "DeliveryPolicy", "SMTPCore",
            .product(name: "TOMLKit", package: "TOMLKit"),
        ], swiftSettings: strict),
        // journald / sd_notify / logging.
        .target(name: "RelayObservability", dependencies: [
            "CSystemd", "RelayMetrics",
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // The metric catalogue (names, labels, help) and the recording calls, on swift-metrics:
        // without a backend bootstrapped they cost nothing.
        .target(name: "RelayMetrics", dependencies: [
            "DeliveryPolicy",
            .product(name: "Metrics", package: "swift-metrics"),
        ], swiftSettings: strict),
        // The inbound ESMTP listener on SwiftNIO.
        .target(name: "RelayServer", dependencies: [
            "SMTPCore", "RelayQueue", "RelayConfig", "RelayMetrics", "RelayTLS", "RelayIDNA",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // TLS reporting (RFC 8460) formats: the _smtp._tls record, the report, the report mail. No I/O.
        .target(name: "TLSRPTCore", dependencies: ["DeliveryPolicy"], swiftSettings: strict),
        // TLS reporting with I/O: the durable session results, discovery, sending by mail and HTTPS.
        .target(name: "RelayTLSRPT", dependencies: [
            "TLSRPTCore", "DeliveryPolicy", "RelayDNS", "RelayHTTPS", "RelayQueue", "SMTPCore", "RelayMetrics", "RelayPolicy",
            .product(name: "CompressNIO", package: "compress-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // MTA-STS (RFC 8461) text formats: the policy file and the TXT record. No I/O.
        .target(name: "MTASTSCore", swiftSettings: strict),
        // MTA-STS (RFC 8461): TXT discovery, HTTPS fetch, persistent cache.
        .target(name: "RelayPolicy", dependencies: [
            "MTASTSCore", "DeliveryPolicy", "RelayMetrics",
            "RelayDNS", "RelayHTTPS",
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // The policy planner: every TLS decision of a delivery as a pure state machine (facts in,
        // actions out). No I/O, no NIO, no Foundation.
        // Optimized in debug builds too: the exhaustive test runs it 1.7 million times.
        .target(name: "DeliveryPolicy", dependencies: ["SMTPCore", "MTASTSCore"], swiftSettings: strict + [.unsafeFlags(["-O"])]),
        // Outbound delivery: MX plan, SMTP client over NIO with STARTTLS, scheduler, DSNs.
        .target(name: "RelayDelivery", dependencies: [
            "SMTPCore", "RelayQueue", "RelayDNS", "RelayTLS", "RelayPolicy", "RelayConfig", "DeliveryPolicy", "RelayMetrics",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // Policy state shared by several relays in PostgreSQL (libpq on a thread pool): MTA-STS
        // policies, downgrade memory, TLS-RPT counts; the schema and its migrations.
        .target(name: "RelayPostgres", dependencies: [
            "CPostgreSQL", "RelayPolicy", "RelayDelivery", "RelayTLSRPT", "DeliveryPolicy", "TLSRPTCore", "RelayMetrics",
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // The control socket: server side (NIO) and the blocking client of tlsrelayctl.
        .target(name: "RelayControl", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ], swiftSettings: strict),
        // Wiring of all parts into a running daemon.
        .target(name: "RelayDaemon", dependencies: [
            "CMalloc",
            "RelayConfig", "RelayServer", "RelayQueue", "RelayObservability", "RelayDelivery", "RelayDNS", "RelayTLS", "RelayPolicy", "RelayControl",
            "RelayMetrics", "DeliveryPolicy", "RelayTLSRPT", "TLSRPTCore", "RelayIDNA", "RelayHTTPS", "RelayPostgres",
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // HTTPS over the system OpenSSL (our TLS handler + SwiftNIO's HTTP/1.1 codec): the MTA-STS
        // policy fetch and the TLS-RPT report POST.
        .target(name: "RelayHTTPS", dependencies: [
            "RelayTLS",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ], swiftSettings: strict),
        // STARTTLS client side: a SwiftNIO handler driving system OpenSSL (DANE, RFC 7672) through memory BIOs.
        .target(name: "RelayTLS", dependencies: ["COpenSSL", .product(name: "NIOCore", package: "swift-nio")], swiftSettings: strict),
        // DNSSEC-validating resolver over libunbound (MX, A/AAAA, TLSA, TXT).
        .target(name: "RelayDNS", dependencies: ["CUnbound"]),
        .executableTarget(name: "tlsrelayd", dependencies: [
            "RelayDaemon",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: strict),
        .executableTarget(name: "tlsrelayctl", dependencies: [
            "RelayQueue", "RelayConfig", "RelayControl", "RelayDaemon", "RelayDelivery", "RelayPolicy", "RelayIDNA", "RelayHTTPS", "RelayPostgres",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: strict),

        // The parsers' fuzz targets (input -> broken invariant), shared by the deterministic
        // fuzzer of `swift test` and the libFuzzer binary `tlsrelay-fuzz` (make fuzz).
        .target(name: "FuzzTargets", dependencies: ["SMTPCore", "MTASTSCore", "RelayConfig", "RelayDNS", "DeliveryPolicy", "TLSRPTCore"], swiftSettings: strict),
        .systemLibrary(name: "CLibFuzzer", path: "Sources/CLibFuzzer"),
        .executableTarget(name: "tlsrelay-fuzz", dependencies: ["FuzzTargets", "CLibFuzzer"], swiftSettings: strict),

        .testTarget(name: "SMTPCoreTests", dependencies: ["SMTPCore"]),
        .testTarget(name: "RelayIDNATests", dependencies: ["RelayIDNA", "SMTPCore"]),
        .testTarget(name: "TLSRPTTests", dependencies: [
            "TLSRPTCore", "RelayTLSRPT", "DeliveryPolicy", .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "RelayQueueTests", dependencies: ["RelayQueue", "SMTPCore"], exclude: ["Fixtures"]),
        .testTarget(name: "RelayConfigTests", dependencies: ["RelayConfig"]),
        .testTarget(name: "RelayPolicyTests", dependencies: ["RelayPolicy"]),
        .testTarget(name: "FuzzTests", dependencies: ["FuzzTargets"]),
        .testTarget(name: "DeliveryPolicyTests", dependencies: ["DeliveryPolicy", "SMTPCore", "MTASTSCore"], swiftSettings: [.unsafeFlags(["-O"])]),
        .testTarget(name: "RelayDeliveryTests", dependencies: [
            "RelayDelivery", "RelayPolicy", "DeliveryPolicy", "RelayDNS", "RelayQueue", "SMTPCore", "RelayTLS",
            .product(name: "Logging", package: "swift-log"), .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        .testTarget(name: "RelayTLSTests", dependencies: ["RelayTLS", "RelayHTTPS", .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")]),
        .testTarget(name: "RelayDNSTests", dependencies: ["RelayDNS"]),
    ],
    swiftLanguageModes: [.v6]
)
