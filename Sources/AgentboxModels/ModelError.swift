import AgentboxCore

/// What went wrong talking to a model, classified for the retry policy and said so a user knows what
/// to do ("401 from api.openai.com: ... check OPENAI_API_KEY").
public struct ModelError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case auth, permission, notFound, badRequest, contextLength, rateLimited, quotaExceeded
        case server, overloaded, timeout, conflict, incompleteStream, network, streamError, protocolViolation
        case badConversation, tls, cancelled
        /// The answer passed one of ResponseCaps (bytes, text, tool calls, argument size).
        case responseTooLarge
    }

    public var kind: Kind
    public var status: Int?
    public var message: String
    /// Seconds the server asked us to wait (retry-after / retry-after-ms), if it said.
    public var retryAfter: Double?
    public var host: String
    public var provider: String

    public init(kind: Kind, status: Int? = nil, message: String, retryAfter: Double? = nil, host: String = "", provider: String = "") {
        self.kind = kind
        self.status = status
        self.message = message
        self.retryAfter = retryAfter
        self.host = host
        self.provider = provider
    }

    /// Whether another attempt may succeed (protocols.md, "Errors and retries").
    public var retryable: Bool {
        switch kind {
        case .rateLimited, .server, .overloaded, .timeout, .conflict, .incompleteStream, .network, .streamError: return true
        default: return false
        }
    }

    var keyVariable: String { provider == "anthropic" ? "ANTHROPIC_API_KEY" : "OPENAI_API_KEY" }

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
        case .tls: return "the server's certificate is not trusted; for a private CA set AGENTBOX_CA_BUNDLE to its PEM file"
        case .rateLimited, .overloaded, .server, .timeout, .conflict, .incompleteStream, .network, .streamError:
            return "retried; the server kept failing"
        }
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
