import AgentboxCore
import CAgentboxCurl
import Glibc

/// HTTP over libcurl: streaming bodies, connect/total/idle timeouts, cancellation, proxies from the
/// environment, HTTP/2 when offered. Blocking: call it from a thread of its own, never from Swift's
/// cooperative pool.
public enum HTTPClient {
    public struct Timeouts: Sendable {
        public var connect = 10.0
        public var total: Double? = nil
        public var idle = 60.0
        /// Trusted CAs (PEM) instead of the system's: `AGENTBOX_CA_BUNDLE` (corporate proxies, tests).
        public var caBundle: String? = nil
        public init() {}

        /// Defaults, with `AGENTBOX_MODEL_IDLE_TIMEOUT` / `AGENTBOX_MODEL_CONNECT_TIMEOUT` (seconds) applied.
        public static func fromEnvironment() -> Timeouts {
            var t = Timeouts()
            if let v = getenv("AGENTBOX_MODEL_IDLE_TIMEOUT").flatMap({ Double(String(cString: $0)) }), v > 0 { t.idle = v }
            if let v = getenv("AGENTBOX_MODEL_CONNECT_TIMEOUT").flatMap({ Double(String(cString: $0)) }), v > 0 { t.connect = v }
            if let v = AgentboxPaths.file("AGENTBOX_CA_BUNDLE") { t.caBundle = v }
            return t
        }
    }

    public struct Response: Sendable {
        public var status: Int
        /// Lowercased header names.
        public var headers: [String: String]
        /// nil when the transfer completed; else what went wrong at the transport level.
        public var transportError: ModelError?
    }

    final class Context {
        let onData: (Int, [UInt8]) -> Bool
        let cancel: () -> Bool
        var headers: [String: String] = [:]
        var status = 0
        init(onData: @escaping (Int, [UInt8]) -> Bool, cancel: @escaping () -> Bool) {
            self.onData = onData
            self.cancel = cancel
        }
    }

    /// POSTs `body` to `url`, delivering the response body to `onData(status, bytes)` as it arrives
    /// (return false to stop). `provider` only labels errors.
    public static func post(url: String, headers: [String], body: [UInt8], timeouts: Timeouts, provider: String,
                            cancel: @escaping () -> Bool = { false }, onData: @escaping (Int, [UInt8]) -> Bool) -> Response {
        let context = Context(onData: onData, cancel: cancel)
        let unmanaged = Unmanaged.passRetained(context)
        defer { unmanaged.release() }
        let cHeaders: [UnsafeMutablePointer<CChar>?] = headers.map { strdup($0) } + [nil]
        defer { for p in cHeaders { free(p) } }
        var status = 0
        var errbuf = [CChar](repeating: 0, count: 512)
        let caBundle = timeouts.caBundle.map { strdup($0) }
        defer { free(caBundle ?? nil) }
        let code: Int32 = url.withCString { cURL in
            "POST".withCString { cMethod in
                cHeaders.withUnsafeBufferPointer { hp in
                    body.withUnsafeBytes { bp in
                        hp.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: hp.count) { headerPtr in
                            var req = ab_curl_request(
                                url: cURL, method: cMethod, headers: headerPtr, body: bp.baseAddress, body_len: bp.count,
                                connect_timeout_ms: Int(timeouts.connect * 1000), total_timeout_ms: Int((timeouts.total ?? 0) * 1000),
                                idle_timeout_s: Int(timeouts.idle.rounded(.up)),
                                on_data: { data, len, user in
                                    let ctx = Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue()
                                    let bytes = Array(UnsafeRawBufferPointer(start: data, count: len))
                                    return ctx.onData(ctx.status, bytes) ? 1 : 0
                                },
                                on_header: { line, len, user in
                                    let ctx = Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue()
                                    let text = String(decoding: UnsafeRawBufferPointer(start: line, count: len), as: UTF8.self)
                                    if text.hasPrefix("HTTP/") {  // a new response (also after 100-continue)
                                        ctx.headers = [:]
                                        let parts = text.split(separator: " ")
                                        ctx.status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
                                        return
                                    }
                                    if let colon = text.firstIndex(of: ":") {
                                        let name = text[..<colon].lowercased()
                                        let value = String(text[text.index(after: colon)...]).trimmingSpaces()
                                        ctx.headers[name] = value
                                    }
                                },
                                should_cancel: { user in
                                    Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue().cancel() ? 1 : 0
                                },
                                userdata: unmanaged.toOpaque(), ca_bundle: caBundle ?? nil)
                            return ab_curl_perform(&req, &status, &errbuf)
                        }
                    }
                }
            }
        }
        var response = Response(status: status, headers: context.headers, transportError: nil)
        if code != 0 {
            let message = String(decoding: errbuf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let host = URLParts(url).host
            if ab_curl_is_timeout(code) != 0 {
                response.transportError = ModelError(kind: .timeout, message: "timed out: \(message)", host: host, provider: provider)
            } else if ab_curl_is_tls(code) != 0 {
                response.transportError = ModelError(kind: .tls, message: message, host: host, provider: provider)
            } else if ab_curl_is_aborted(code) != 0 {
                response.transportError = cancel()
                    ? ModelError(kind: .cancelled, message: "cancelled", host: host, provider: provider)
                    : ModelError(kind: .network, message: "transfer stopped", host: host, provider: provider)
            } else {
                response.transportError = ModelError(kind: .network, message: message, host: host, provider: provider)
            }
        }
        return response
    }
}

/// Just enough URL handling for labels and joining paths.
public struct URLParts: Sendable {
    public let host: String
    public init(_ url: String) {
        var rest = Substring(url)
        if let scheme = url.split(separator: "/", maxSplits: 1).first, scheme.hasSuffix(":"), url.dropFirst(scheme.count).hasPrefix("//") {
            rest = url.dropFirst(scheme.count + 2)
        }
        host = String(rest.prefix { $0 != "/" && $0 != "?" })
    }

    /// `base` + `/` + `path`, with exactly one slash between them.
    public static func join(_ base: String, _ path: String) -> String {
        var b = base
        while b.hasSuffix("/") { b.removeLast() }
        return b + (path.hasPrefix("/") ? path : "/" + path)
    }
}
