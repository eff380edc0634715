import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Talks to the daemon's control socket (blocking; for `tlsrelayctl`).
public enum ControlClient {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        /// True when no daemon answers (socket missing or refusing).
        public let daemonNotRunning: Bool
    }

    /// Sends one request and returns the `result` of an `ok` response.
    /// - Throws: `Failure` when the daemon is not running, access is denied, or it answered an error.
    public static func call(socketPath: String, request: [String: String], timeoutSeconds: Int = 60) throws -> Any {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))", daemonNotRunning: false) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw Failure(description: "control socket path too long: \(socketPath)", daemonNotRunning: false)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if connected != 0 {
            let code = errno
            switch code {
            case ENOENT, ECONNREFUSED:
                throw Failure(description: "tlsrelayd is not running (no control socket at \(socketPath))", daemonNotRunning: true)
            case EACCES, EPERM:
                throw Failure(description: "permission denied on \(socketPath): run tlsrelayctl as root or as the tlsrelay user", daemonNotRunning: false)
            default:
                throw Failure(description: "cannot connect to \(socketPath): \(String(cString: strerror(code)))", daemonNotRunning: false)
            }
        }
        var payload = try JSONSerialization.data(withJSONObject: request)
        payload.append(10)
        _ = payload.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var response = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            response.append(contentsOf: chunk[0..<count])
        }
        guard let object = try? JSONSerialization.jsonObject(with: response) as? [String: Any] else {
            throw Failure(description: "tlsrelayd gave no valid answer", daemonNotRunning: false)
        }
        if object["ok"] as? Bool == true { return object["result"] ?? NSNull() }
        throw Failure(description: object["error"] as? String ?? "request failed", daemonNotRunning: false)
    }
}
