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
        send(method: "POST", url: url, headers: headers, body: body, timeouts: timeouts, provider: provider, cancel: cancel, onData: onData)
    }

    /// Like `post`, with another method (`GET`: no body is sent).
    public static func send(method: String, url: String, headers: [String], body: [UInt8], timeouts: Timeouts, provider: String,
                            cancel: @escaping () -> Bool = { false }, onData: @escaping (Int, [UInt8]) -> Bool) -> Response {
        let context = Context(onData: onData, cancel: cancel)
        let unmanaged = Unmanaged.passRetained(context)
        defer { unmanaged.release() }
        let cHeaders: [UnsafeMutablePointer<CChar>?] = headers.map { strdup($0) } + [nil]
        defer { for p in cHeaders { free(p) } }
        var status = 0
        var osErrno = 0
        var errbuf = [CChar](repeating: 0, count: 512)
        let caBundle = timeouts.caBundle.map { strdup($0) }
        defer { free(caBundle ?? nil) }
        let code: Int32 = url.withCString { cURL in
            method.withCString { cMethod in
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
                            return ab_curl_perform(&req, &status, &osErrno, &errbuf)
                        }
                    }
                }
            }
        }
        var response = Response(status: status, headers: context.headers, transportError: nil)
        if code != 0 {
            let message = String(decoding: errbuf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            response.transportError = transportError(code: code, osErrno: Int32(osErrno), message: message, url: url, provider: provider,
                                                     cancelled: cancel)
        }
        return response
    }
}

extension HTTPClient {
    /// A failed transfer as a ModelError, classified for the retry policy: timeouts and connection
    /// problems may heal, a bad URL, a TLS failure or an unusable libcurl never do.
    static func transportError(code: Int32, osErrno: Int32, message: String, url: String, provider: String,
                               cancelled: () -> Bool) -> ModelError {
        let host = URLParts(url).host
        func error(_ kind: ModelError.Kind, _ text: String, cause: String? = nil) -> ModelError {
            ModelError(kind: kind, message: text, host: host, provider: provider, cause: cause)
        }
        switch UInt32(bitPattern: ab_curl_classify(code)) {
        case AB_CURL_TIMEOUT.rawValue: return error(.timeout, "timed out: \(message)")
        case AB_CURL_TLS.rawValue: return error(.tls, message)
        case AB_CURL_BAD_URL.rawValue: return error(.badURL, "\(message) (\(url))")
        case AB_CURL_UNUSABLE.rawValue: return error(.unsupported, message)
        case AB_CURL_ABORTED.rawValue:
            return cancelled() ? error(.cancelled, "cancelled") : error(.network, "transfer stopped")
        default:
            // The system's words for a failed connect ("connection refused") say more than curl's
            // ("couldn't connect to server"); curl's own short text otherwise.
            let cause = osErrno != 0 ? String(cString: strerror(osErrno)) : String(cString: ab_curl_strerror(code))
            return error(.network, message, cause: cause.lowercased())
        }
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

    /// Why `url` cannot be a model endpoint's base, or nil when it can: `http` or `https`, `://`, a host
    /// (a name, an IPv4 address or a bracketed IPv6 one), an optional port and path. Nothing may follow
    /// the path (`?`, `#`): the endpoint's own path is appended to it.
    public static func problem(_ url: String) -> String? {
        if url.isEmpty { return "it is empty" }
        if url.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F }) {
            return "it contains a space or a control character"
        }
        guard let colon = url.firstIndex(of: ":"), url[url.index(after: colon)...].hasPrefix("//") else {
            return "it has no scheme (http:// or https://)"
        }
        let scheme = url[..<colon].lowercased()
        guard scheme == "http" || scheme == "https" else { return "the scheme \(scheme) is not supported (only http and https)" }
        let rest = url[url.index(colon, offsetBy: 3)...]
        if rest.contains("?") || rest.contains("#") { return "it has a query or a fragment, which cannot come before the endpoint's path" }
        let authority = rest.prefix { $0 != "/" }
        let hostPort = authority.split(separator: "@", omittingEmptySubsequences: false).last ?? ""
        var host = hostPort
        var port: Substring? = nil
        if hostPort.hasPrefix("[") {  // [IPv6]:port
            guard let close = hostPort.firstIndex(of: "]") else { return "its IPv6 address has no closing ]" }
            host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return "something follows the IPv6 address other than :PORT" }
                port = after.dropFirst()
            }
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return "its IPv6 address is not valid" }
        } else {
            if let c = hostPort.firstIndex(of: ":") {
                host = hostPort[..<c]
                port = hostPort[hostPort.index(after: c)...]
            }
            if host.isEmpty { return "it has no host" }
            if let bad = host.first(where: { $0.isASCII && !($0.isLetter || $0.isNumber || "-._~%".contains($0)) }) {
                return "its host contains '\(bad)'"
            }
        }
        if let port, !(port.allSatisfy(\.isASCII) && Int(port).map({ (1...65535).contains($0) }) == true) {
            return "its port \(port) is not a number from 1 to 65535"
        }
        return nil
    }

    /// `base` + `/` + `path`, with exactly one slash between them.
    public static func join(_ base: String, _ path: String) -> String {
        var b = base
        while b.hasSuffix("/") { b.removeLast() }
        return b + (path.hasPrefix("/") ? path : "/" + path)
    }
}
