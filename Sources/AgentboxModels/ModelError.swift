import AgentboxCore

/// What went wrong talking to a model, classified for the retry policy and said so a user knows what
/// to do ("401 from api.openai.com: ... check OPENAI_API_KEY").
public struct ModelError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case auth, permission, notFound, badRequest, contextLength, rateLimited, quotaExceeded
        case server, overloaded, timeout, conflict, incompleteStream, network, streamError, protocolViolation
        case badConversation, tls, cancelled
        /// A URL libcurl refuses: malformed, or a scheme other than http/https. Never heals.
        case badURL
        /// libcurl is missing or lacks a feature it needs. Never heals.
        case unsupported
        /// The answer passed one of ResponseCaps (bytes, text, tool calls, argument size).
        case responseTooLarge
        /// A replay session has no more turns for the run.
        case replayEnded
    }

    public var kind: Kind
    public var status: Int?
    public var message: String
    /// Seconds the server asked us to wait (retry-after / retry-after-ms), if it said.
    public var retryAfter: Double?
    public var host: String
    public var provider: String
    /// The transport's reason in a few words (`connection refused`), when it gave one.
    public var cause: String?
    /// Set by the provider on the error it gives up with after retrying (or with no attempt left):
    /// how many attempts the call made. nil on the error of one attempt (journaled, maybe retried).
    public var attemptsMade: Int?

    public init(kind: Kind, status: Int? = nil, message: String, retryAfter: Double? = nil, host: String = "", provider: String = "",
                cause: String? = nil) {
        self.kind = kind
        self.status = status
        self.message = message
        self.retryAfter = retryAfter
        self.host = host
        self.provider = provider
        self.cause = cause
    }

    /// Whether another attempt may succeed (protocols.md, "Errors and retries").
    public var retryable: Bool {
        switch kind {
        case .rateLimited, .server, .overloaded, .timeout, .conflict, .incompleteStream, .network, .streamError: return true
        default: return false
        }
    }

    var keyVariable: String { provider == "anthropic" ? "ANTHROPIC_API_KEY" : "OPENAI_API_KEY" }

    /// What to do about it. True wherever the error is shown: for one failed attempt (which may be
    /// retried, and the call then succeed) it says what the failure is; only on the error a call gave up
    /// with does it say how many attempts were made.
    public var advice: String {
        switch kind {
        case .auth: return "check \(keyVariable)"
        case .permission: return "the key lacks access to this model or endpoint"
        case .notFound: return "check the model name and the base URL"
        case .quotaExceeded: return "the account is out of quota or credit"
        case .contextLength: return "the conversation is too long for this model"
        case .badRequest, .badConversation, .protocolViolation: return "this is a bug in agentbox or an incompatible server; please report it"
        case .cancelled: return "the call was cancelled"
        case .responseTooLarge: return "not retried: a model that answers this much once tends to again; lower max tokens or fix the prompt"
        case .tls: return "not retried: the server's certificate is not trusted; for a private CA set AGENTBOX_CA_BUNDLE to its PEM file"
        case .badURL: return "not retried: check the base URL; it looks like https://api.openai.com/v1 or http://localhost:8000/v1"
        case .unsupported: return "not retried: agentbox needs a working libcurl with TLS (Debian: libcurl4)"
        case .replayEnded: return "the session ended before the run did: add turns to it, or end it with a finish call"
        case .rateLimited, .overloaded, .server, .timeout, .conflict, .incompleteStream, .network, .streamError:
            guard let n = attemptsMade else { return "a failure that may pass; agentbox retries it" }
            let what: String
            switch kind {
            case .rateLimited: what = "still rate limited; slow down or raise the account's limits"
            case .timeout: what = "no answer in time; check the server (AGENTBOX_MODEL_CONNECT_TIMEOUT, AGENTBOX_MODEL_IDLE_TIMEOUT)"
            case .network: what = "check the base URL and that the server is up"
            default: what = "the server is failing; try again later"
            }
            return "gave up after \(n) attempt\(n == 1 ? "" : "s"): \(what)"
        }
    }

    /// The error in a few words, for a live retry line: `connection refused`, `429 rate limited`.
    public var summary: String {
        let words: String
        switch kind {
        case .auth: words = "unauthorized"
        case .permission: words = "forbidden"
        case .notFound: words = "not found"
        case .badRequest: words = "bad request"
        case .contextLength: words = "context too long"
        case .rateLimited: words = "rate limited"
        case .quotaExceeded: words = "out of quota"
        case .server: words = "server error"
        case .overloaded: words = "overloaded"
        case .timeout: words = "timed out"
        case .conflict: words = "conflict"
        case .incompleteStream: words = "stream cut short"
        case .network: words = cause ?? "network error"
        case .streamError: words = "stream error"
        case .protocolViolation: words = "protocol violation"
        case .badConversation: words = "bad conversation"
        case .tls: words = "TLS failure"
        case .cancelled: words = "cancelled"
        case .responseTooLarge: words = "answer too large"
        case .badURL: words = "bad URL"
        case .unsupported: words = "libcurl unusable"
        case .replayEnded: words = "replay session ended"
        }
        return status.map { "\($0) \(words)" } ?? words
    }

    public var description: String {
        let origin = status.map { "\($0) from \(host)" } ?? (host.isEmpty ? provider : host)
        return "\(origin): \(message) (\(advice))"
    }

    /// Classifies an HTTP error answer. `body` is the response body (JSON or not), `headers` lowercased.
    public static func classify(status: Int, body: [UInt8], headers: [String: String], provider: String, host: String) -> ModelError {
        let json = try? JSON.parse(bytes: body)
        let errorObject = json?["error"]
        let type = errorObject?["type"]?.stringValue ?? ""
        let code = errorObject?["code"]?.stringValue ?? ""
        var message = errorObject?["message"]?.stringValue ?? json?["message"]?.stringValue
            ?? String(decoding: body.prefix(300), as: UTF8.self).trimmingSpaces()
        if message.isEmpty { message = "HTTP \(status)" }
        var kind: Kind
        switch status {
        case 401: kind = .auth
        case 403: kind = .permission
        case 404: kind = .notFound
        case 408: kind = .timeout
        case 409: kind = .conflict
        case 429: kind = code == "insufficient_quota" || type == "insufficient_quota" ? .quotaExceeded : .rateLimited
        case 529: kind = .overloaded
        case 500...599: kind = type == "overloaded_error" ? .overloaded : .server
        case 400, 413, 422:
            let lower = message.lowercased()
            kind = code == "context_length_exceeded" || lower.contains("prompt is too long") || lower.contains("context length")
                ? .contextLength : .badRequest
        default: kind = .badRequest
        }
        return ModelError(kind: kind, status: status, message: message, retryAfter: retryAfter(headers), host: host, provider: provider)
    }

    /// `retry-after-ms` (milliseconds) wins over `retry-after` (seconds; an HTTP date is not honoured).
    static func retryAfter(_ headers: [String: String]) -> Double? {
        if let ms = headers["retry-after-ms"].flatMap(Double.init), ms >= 0 { return ms / 1000 }
        if let s = headers["retry-after"].flatMap(Double.init), s >= 0 { return s }
        return nil
    }

    /// An `error` event inside a 200 stream (Anthropic `event: error`, or an OpenAI chunk with `error`).
    public static func fromStreamError(_ json: JSON, provider: String, host: String) -> ModelError {
        let e = json["error"] ?? json
        let type = e["type"]?.stringValue ?? ""
        let message = e["message"]?.stringValue ?? json.serialized
        let kind: Kind = type == "overloaded_error" ? .overloaded : type == "rate_limit_error" ? .rateLimited
            : type == "invalid_request_error" ? .badRequest : type == "authentication_error" ? .auth : .streamError
        return ModelError(kind: kind, message: "stream error: \(type.isEmpty ? "" : type + ": ")\(message)", host: host, provider: provider)
    }
}

/// Exponential backoff with jitter, honouring the server's retry-after (protocols.md).
public struct RetryPolicy: Sendable {
    public var maxAttempts = 6
    public var base = 0.5
    public var cap = 60.0
    public var jitter = 0.1
    public init() {}

    /// The wait before attempt `attempt + 1` (attempt counts from 1), or nil to give up.
    public func delay(afterAttempt attempt: Int, error: ModelError, random: Double = Double.random(in: -1...1)) -> Double? {
        guard error.retryable, attempt < maxAttempts else { return nil }
        let exponential = min(cap, base * Double(1 << min(attempt - 1, 20)))
        let jittered = exponential * (1 + jitter * random)
        return max(jittered, min(error.retryAfter ?? 0, 10 * cap))
    }
}

/// A retry about to happen, for a live display: given to the provider's `onRetry` before each backoff
/// sleep, on the thread making the call. Its text is `attempt 2/6: connection refused; retrying in 1.0 s`.
public struct RetryNotice: Sendable, CustomStringConvertible {
    /// The attempt that failed (from 1), and how many the policy allows.
    public var attempt: Int
    public var maxAttempts: Int
    /// Why it failed (`error.summary` in short words).
    public var error: ModelError
    /// Seconds until the next attempt.
    public var delay: Double

    public init(attempt: Int, maxAttempts: Int, error: ModelError, delay: Double) {
        self.attempt = attempt
        self.maxAttempts = maxAttempts
        self.error = error
        self.delay = delay
    }

    public var description: String {
        let tenths = Int((delay * 10).rounded())
        return "attempt \(attempt)/\(maxAttempts): \(error.summary); retrying in \(tenths / 10).\(tenths % 10) s"
    }
}
