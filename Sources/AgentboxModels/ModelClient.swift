import AgentboxCore
import Glibc

/// `--model PROVIDER:MODEL` with its endpoint and key (contracts.md, "Model options").
public struct ModelSpec: Sendable {
    public enum Provider: String, Sendable { case openai, anthropic, replay }
    public var provider: Provider
    public var model: String
    public var baseURL: String
    /// The key, read from the environment of the process that makes the call (the supervisor).
    public var apiKey: String?
    /// Header for the key on OpenAI-compatible servers: `Authorization` (Bearer) or e.g. `api-key` (Azure).
    public var keyHeader: String

    public static func env(_ name: String) -> String? {
        guard let v = getenv(name), v.pointee != 0 else { return nil }
        return String(cString: v)
    }

    /// The variable to set when no key is given for an official endpoint (which always needs one); nil
    /// when a key is there or the endpoint may not need one (a local server).
    public var missingKeyVariable: String? {
        guard apiKey == nil, provider != .replay else { return nil }
        let host = URLParts(baseURL).host
        guard host == "api.openai.com" || host == "api.anthropic.com" else { return nil }
        return provider == .anthropic ? "ANTHROPIC_API_KEY" : "OPENAI_API_KEY"
    }

    /// `--model` and `--base-url` as `run` and `model check` take them, checked before anything starts
    /// (an AgentboxError: exit 125): the model (default `$AGENTBOX_MODEL`), a base URL that can work, and
    /// the key an official endpoint needs.
    public static func resolve(model: String?, baseURL: String?) throws(AgentboxError) -> ModelSpec {
        guard let name = model ?? env("AGENTBOX_MODEL") else {
            throw .usage("no model given", hint: "pass --model openai:gpt-4o-mini, anthropic:claude-sonnet-4-5 or replay:FILE (or set AGENTBOX_MODEL)")
        }
        let spec = try parse(name, baseURL: baseURL)
        if let variable = spec.missingKeyVariable {
            throw AgentboxError(stage: "model", "\(variable) is not set (\(spec.baseURL) needs a key)",
                                hint: "export \(variable)=... (agentbox reads it outside the sandbox; the agent never sees it)")
        }
        return spec
    }

    /// Parses `openai:gpt-4o`, `anthropic:claude-sonnet-4-5`, `replay:path/to/session.json`, with the
    /// base URL from `baseURL` (`--base-url`), else the provider's variable, else the official endpoint.
    /// A base URL that cannot work (`not-a-url`, `ftp://...`) is a usage error naming where it came from.
    public static func parse(_ text: String, baseURL: String? = nil) throws(AgentboxError) -> ModelSpec {
        guard let colon = text.firstIndex(of: ":"), let provider = Provider(rawValue: String(text[..<colon])) else {
            throw AgentboxError.usage("--model \(text): expected PROVIDER:MODEL with PROVIDER openai, anthropic or replay",
                                      hint: "e.g. --model openai:gpt-4o-mini, --model anthropic:claude-sonnet-4-5, --model replay:session.json")
        }
        let model = String(text[text.index(after: colon)...])
        guard !model.isEmpty else { throw AgentboxError.usage("--model \(text): the model name is missing") }
        switch provider {
        case .openai:
            let url = try base(baseURL, variable: "OPENAI_BASE_URL", official: "https://api.openai.com/v1",
                               example: "https://api.openai.com/v1 or http://localhost:8000/v1 (OpenAI-style bases include /v1)")
            return ModelSpec(provider: provider, model: model, baseURL: url,
                             apiKey: env("OPENAI_API_KEY"), keyHeader: env("AGENTBOX_OPENAI_KEY_HEADER") ?? "Authorization")
        case .anthropic:
            let url = try base(baseURL, variable: "ANTHROPIC_BASE_URL", official: "https://api.anthropic.com",
                               example: "https://api.anthropic.com (Anthropic bases have no /v1)")
            return ModelSpec(provider: provider, model: model, baseURL: url, apiKey: env("ANTHROPIC_API_KEY"), keyHeader: "x-api-key")
        case .replay:
            return ModelSpec(provider: provider, model: model, baseURL: "", apiKey: nil, keyHeader: "")
        }
    }

    /// The base URL from the flag, the variable or the official one, checked (`URLParts.problem`).
    static func base(_ flag: String?, variable: String, official: String, example: String) throws(AgentboxError) -> String {
        let (url, source) = flag.map { ($0, "--base-url \($0)") } ?? env(variable).map { ($0, "\(variable)=\($0)") } ?? (official, official)
        if let problem = URLParts.problem(url) {
            throw AgentboxError.usage("\(source): not a usable base URL: \(problem)", hint: "a base URL looks like \(example)")
        }
        return url
    }
}

/// One attempt of a model call, for the journal and for `model check`.
public struct Attempt: Sendable {
    public var number: Int
    public var status: Int?
    public var error: ModelError?
    public var waitBefore: Double
    public var seconds: Double
}

/// A model: one `complete` per assistant turn, with retries. Blocking.
public protocol ModelProvider: AnyObject {
    func complete(_ conversation: Conversation, tools: [ToolDefinition]) throws(ModelError) -> (AssistantTurn, [Attempt])
    /// The attempts of the last `complete`, failed ones included (also when it threw).
    var lastAttempts: [Attempt] { get }
    /// The size and CRC-32C of the last request body sent (nil: no HTTP request, e.g. replay). The journal
    /// records them so a conversation rebuilt from it can be checked against what was really sent.
    var lastRequest: (bytes: Int, crc32c: UInt32)? { get }
    /// Makes a call in progress (and its retries) give up soon with `.cancelled`; may be called from
    /// another thread.
    func cancel()
    /// Told of each retry before its backoff sleep, on the thread making the call, so that a display can
    /// say so live (`RetryNotice.description`: `attempt 2/6: connection refused; retrying in 1.0 s`). Set
    /// it before calling `complete`. The same failures are in `lastAttempts` once the call returns.
    var onRetry: (@Sendable (RetryNotice) -> Void)? { get set }
}

public func makeProvider(_ spec: ModelSpec, retry: RetryPolicy = RetryPolicy(), timeouts: HTTPClient.Timeouts = .fromEnvironment(),
                         maxTokens: Int = 8192, onRetry: (@Sendable (RetryNotice) -> Void)? = nil) throws(AgentboxError) -> ModelProvider {
    let provider: ModelProvider
    switch spec.provider {
    case .replay: provider = try ReplayProvider(path: spec.model)
    case .openai, .anthropic: provider = HTTPModelProvider(spec: spec, retry: retry, timeouts: timeouts, maxTokens: maxTokens)
    }
    provider.onRetry = onRetry
    return provider
}

/// OpenAI- and Anthropic-protocol models over HTTP with streaming.
public final class HTTPModelProvider: ModelProvider {
    let spec: ModelSpec
    let retry: RetryPolicy
    let timeouts: HTTPClient.Timeouts
    let maxTokens: Int
    /// What one answer may hold (docs/models.md, "Limits on an answer").
    public var caps = ResponseCaps()
    /// Set to stop a call in progress (checked by the transfer).
    public var cancelled: @Sendable () -> Bool = { false }
    public private(set) var lastAttempts: [Attempt] = []
    public private(set) var lastRequest: (bytes: Int, crc32c: UInt32)? = nil
    public var onRetry: (@Sendable (RetryNotice) -> Void)? = nil
    let cancelFlag = CancelFlag()

    public func cancel() { cancelFlag.set() }

    init(spec: ModelSpec, retry: RetryPolicy, timeouts: HTTPClient.Timeouts, maxTokens: Int) {
        self.spec = spec
        self.retry = retry
        self.timeouts = timeouts
        self.maxTokens = maxTokens
    }

    /// The exact request body of a call (also what a run rebuilt from its journal is checked against).
    public static func body(spec: ModelSpec, conversation: Conversation, tools: [ToolDefinition], maxTokens: Int = 8192) throws(ModelError) -> [UInt8] {
        let body: JSON = spec.provider == .anthropic
            ? try AnthropicProtocol.request(model: spec.model, conversation: conversation, tools: tools, stream: true, maxTokens: maxTokens)
            : OpenAIProtocol.request(model: spec.model, conversation: conversation, tools: tools, stream: true)
        return body.serializedBytes
    }

    var url: String {
        spec.provider == .anthropic ? URLParts.join(spec.baseURL, "/v1/messages") : URLParts.join(spec.baseURL, "/chat/completions")
    }

    var headers: [String] {
        var h = ["Content-Type: application/json", "Accept: text/event-stream"]
        if spec.provider == .anthropic {
            h.append("anthropic-version: \(AnthropicProtocol.version)")
            if let key = spec.apiKey { h.append("x-api-key: \(key)") }
        } else if let key = spec.apiKey {
            h.append(spec.keyHeader.lowercased() == "authorization" ? "Authorization: Bearer \(key)" : "\(spec.keyHeader): \(key)")
        }
        return h
    }

    public func complete(_ conversation: Conversation, tools: [ToolDefinition]) throws(ModelError) -> (AssistantTurn, [Attempt]) {
        let host = URLParts(url).host
        let provider = spec.provider.rawValue
        if let variable = spec.missingKeyVariable {
            throw ModelError(kind: .auth, message: "\(variable) is not set", host: host, provider: provider)
        }
        let bytes = try HTTPModelProvider.body(spec: spec, conversation: conversation, tools: tools, maxTokens: maxTokens)
        lastRequest = (bytes.count, CRC32C.checksum(bytes))
        var attempts: [Attempt] = []
        defer { lastAttempts = attempts }
        var wait = 0.0
        var number = 0
        let flag = cancelFlag
        let outer = cancelled
        let isCancelled: @Sendable () -> Bool = { flag.isSet || outer() }
        while true {
            number += 1
            // The backoff sleeps in slices so that a stop is not held up by a long retry-after.
            let until = Clock.monotonic() + wait
            while Clock.monotonic() < until && !isCancelled() { usleep(UInt32(min(0.1, until - Clock.monotonic()) * 1_000_000)) }
            if isCancelled() {
                throw ModelError(kind: .cancelled, message: "the call was cancelled", host: host, provider: provider)
            }
            let started = Clock.monotonic()
            let result = attempt(bytes, host: host)
            let elapsed = Clock.monotonic() - started
            switch result {
            case let .success((turn, status)):
                attempts.append(Attempt(number: number, status: status, error: nil, waitBefore: wait, seconds: elapsed))
                return (turn, attempts)
            case var .failure(error):
                let next = retry.delay(afterAttempt: number, error: error)
                // Only the error given up with says how many attempts were made (ModelError.advice).
                if next == nil && error.retryable { error.attemptsMade = number }
                attempts.append(Attempt(number: number, status: error.status, error: error, waitBefore: wait, seconds: elapsed))
                guard let next else { throw error }
                onRetry?(RetryNotice(attempt: number, maxAttempts: retry.maxAttempts, error: error, delay: next))
                wait = next
            }
        }
    }

    /// One HTTP exchange: the streamed turn, or why not.
    func attempt(_ body: [UInt8], host: String) -> Result<(AssistantTurn, Int), ModelError> {
        var parser = SSEParser()
        var openai = OpenAIStreamAccumulator(host: host)
        var anthropic = AnthropicStreamAccumulator(host: host)
        var streamError: ModelError? = nil
        var wholeBody: [UInt8] = []
        var streaming = false
        var received = 0
        let caps = self.caps
        let provider = spec.provider.rawValue
        let isAnthropic = spec.provider == .anthropic
        let flag = cancelFlag
        let outer = cancelled
        let response = HTTPClient.post(url: url, headers: headers, body: body, timeouts: timeouts, provider: spec.provider.rawValue,
                                       cancel: { flag.isSet || outer() }) { status, chunk in
            // An error status, or a server that answers 200 with one JSON document: keep the body whole.
            // Nothing the server sends is held past the cap, streamed or not (the supervisor is outside
            // every cgroup: a server streaming without end must not grow its memory).
            received += chunk.count
            if received > caps.bytes {
                streamError = ResponseCaps.exceeded("the answer passed \(caps.bytes >> 20) MiB", host: host, provider: provider)
                return false
            }
            if status != 200 || (!streaming && wholeBody.isEmpty == false) || (!streaming && chunk.first == UInt8(ascii: "{")) {
                wholeBody += chunk
                return true
            }
            streaming = true
            for event in parser.feed(chunk) {
                do throws(ModelError) {
                    if isAnthropic { try anthropic.handle(event) } else { try openai.handle(event) }
                } catch {
                    streamError = error
                    return false
                }
            }
            return true
        }
        if let e = streamError { return .failure(e) }
        if response.status >= 300 || (response.status == 0 && response.transportError == nil) {
            return .failure(ModelError.classify(status: response.status, body: wholeBody, headers: response.headers,
                                                provider: spec.provider.rawValue, host: host))
        }
        if let e = response.transportError { return .failure(e) }
        if !streaming && !wholeBody.isEmpty {
            // 200 with one JSON document: a server that does not stream.
            guard let json = try? JSON.parse(bytes: wholeBody) else {
                return .failure(ModelError(kind: .protocolViolation, message: "a 200 answer that is neither a stream nor JSON", host: host,
                                           provider: spec.provider.rawValue))
            }
            do {
                let turn = isAnthropic ? try AnthropicProtocol.decode(response: json, host: host) : try OpenAIProtocol.decode(response: json, host: host)
                try caps.check(turn, host: host, provider: provider)
                return .success((turn, response.status))
            } catch { return .failure(error) }
        }
        do throws(ModelError) {
            // The last event may lack its blank line (the body just ends): it is dispatched, as the
            // official SDKs do. One that is not JSON was cut mid-way: the stream ended early.
            for event in parser.finish() {
                do throws(ModelError) {
                    if isAnthropic { try anthropic.handle(event) } else { try openai.handle(event) }
                } catch {
                    guard error.kind == .protocolViolation else { throw error }
                    throw ModelError(kind: .incompleteStream, message: "the stream ended inside an event", host: host, provider: provider)
                }
            }
            let turn = isAnthropic ? try anthropic.finish() : try openai.finish()
            try caps.check(turn, host: host, provider: provider)
            return .success((turn, response.status))
        } catch {
            return .failure(error)
        }
    }

}

/// `replay:FILE`: plays a scripted session, offline (docs/models.md, "Replay files").
public final class ReplayProvider: ModelProvider {
    public let path: String
    let turns: [AssistantTurn]
    /// The turn the next call plays (a resumed run continues after the turns its journal holds).
    public var next = 0
    public private(set) var lastAttempts: [Attempt] = []
    public var lastRequest: (bytes: Int, crc32c: UInt32)? { nil }
    /// Never called: a replay does not fail.
    public var onRetry: (@Sendable (RetryNotice) -> Void)? = nil
    public func cancel() {}

    public init(path: String) throws(AgentboxError) {
        self.path = path
        let text = try FileIO.readString(path)
        do { turns = try ReplayProvider.parse(text) } catch {
            throw AgentboxError(stage: "replay", "\(path): \(error.message)", hint: "see docs/models.md for the replay format")
        }
    }

    public struct FormatError: Error { public let message: String }

    public static func parse(_ text: String) throws(FormatError) -> [AssistantTurn] {
        let json: JSON
        do { json = try JSON.parse(text) } catch { throw FormatError(message: "not valid JSON: \(error)") }
        guard let list = json["turns"]?.arrayValue else { throw FormatError(message: "expected {\"turns\": [...]}") }
        var out: [AssistantTurn] = []
        for (i, t) in list.enumerated() {
            for (k, _) in t.objectValue ?? [] where !["text", "tool_calls", "stop_reason", "usage"].contains(k) {
                throw FormatError(message: "turns[\(i)].\(k): unknown key (known: text, tool_calls, stop_reason, usage)")
            }
            var turn = AssistantTurn(text: t["text"]?.stringValue ?? "")
            for (j, c) in (t["tool_calls"]?.arrayValue ?? []).enumerated() {
                guard let name = c["name"]?.stringValue else { throw FormatError(message: "turns[\(i)].tool_calls[\(j)].name is required") }
                let args: String
                if let s = c["arguments"]?.stringValue { args = s } else { args = (c["arguments"] ?? .object([])).serialized }
                turn.toolCalls.append(ToolCall(id: c["id"]?.stringValue ?? "replay_\(i)_\(j)", name: name, arguments: args))
            }
            if let s = t["stop_reason"]?.stringValue {
                guard let r = StopReason(rawValue: s) else { throw FormatError(message: "turns[\(i)].stop_reason: unknown value \(s)") }
                turn.stopReason = r
            } else {
                turn.stopReason = turn.toolCalls.isEmpty ? .endTurn : .toolUse
            }
            turn.usage = Usage(inputTokens: t["usage"]?["input_tokens"]?.intValue ?? 0, outputTokens: t["usage"]?["output_tokens"]?.intValue ?? 0)
            out.append(turn)
        }
        if out.isEmpty { throw FormatError(message: "the session has no turns") }
        return out
    }

    public func complete(_ conversation: Conversation, tools: [ToolDefinition]) throws(ModelError) -> (AssistantTurn, [Attempt]) {
        guard next < turns.count else {
            throw ModelError(kind: .replayEnded, message: "the run asked for turn \(next + 1) of the replay session \(path), which has \(turns.count)",
                             provider: "replay")
        }
        defer { next += 1 }
        lastAttempts = [Attempt(number: 1, status: nil, error: nil, waitBefore: 0, seconds: 0)]
        return (turns[next], lastAttempts)
    }
}

/// A flag set by one thread and read by another (cancellation of a model call).
public final class CancelFlag: @unchecked Sendable {
    var mutex = pthread_mutex_t()
    var value = false
    public init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    public func set() {
        pthread_mutex_lock(&mutex)
        value = true
        pthread_mutex_unlock(&mutex)
    }
    public var isSet: Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return value
    }
}
