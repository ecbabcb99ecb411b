import AgentboxCore
import AgentboxJournal
import AgentboxModels
import AgentboxSandbox
import CAgentboxShim
import Glibc
import Synchronization

/// The model gateway of a bring-your-own-agent run (`agentbox run -- CMD`, docs/agents.md): the
/// agent's SDK talks to the agentbox API inside the sandbox (`OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`)
/// with a placeholder key; the gateway forwards each call to the upstream its path names, with the real
/// key, streams the answer back as it comes, retries what the built-in loop retries (before any byte
/// reached the client), counts usage on the wire and holds the budgets. Every call is reported to the
/// supervision thread (`events`) for the journal. The key never goes into the sandbox: not in a
/// header, and an error body that echoes it is redacted.
public final class ModelGateway: HTTPRequestHandler {
    public enum Provider: String, Sendable { case openai, anthropic }
    /// What the agent gets instead of a key.
    public static let placeholderKey = "agentbox-gateway-placeholder"

    public struct Upstream: Sendable {
        public var base: String
        public var key: String?
        public init(base: String, key: String?) {
            self.base = base
            self.key = key
        }
    }

    /// What a call did, for the journal (on the supervision thread).
    public enum Event: Sendable {
        case request(id: Int, provider: Provider, path: String, model: String, stream: Bool, body: JSON)
        case retry(id: Int, notice: String)
        /// `cut`: why an answer that had started did not finish (the client left, the transfer broke).
        case response(id: Int, status: Int, usage: Usage, estimated: Bool, cost: Double?, ms: Int, attempts: Int, text: String, body: JSON?, cut: String?)
        case failed(id: Int, status: Int, message: String, attempts: Int)
        case refused(id: Int, reason: String)
        /// A budget ran out (once): further calls are refused.
        case exhausted(String)
    }

    struct Totals {
        var calls = 0
        var inputTokens = 0
        var outputTokens = 0
        var cost: Double? = 0
        var exhausted: String? = nil
    }

    let upstreams: [Provider: Upstream]
    let budget: Budget
    let prices: PriceTable
    let timeouts: HTTPClient.Timeouts
    let retry: RetryPolicy
    let totals = Mutex(Totals())
    let events = EventQueue<Event>()
    let ids = Atomic<Int>(0)
    /// Readable when events are queued (the supervision loop polls it).
    public var wakeFD: Int32 { events.fd }
    /// Readable once the run ends: calls in flight are cancelled.
    let stopFD: Int32
    let redactors: [SecretRedactor]
    /// Provider-side tools that reach the network (`--allow-provider-tools`): refused unless allowed.
    let allowProviderTools: Bool
    /// Bytes of a request or response body kept in the journal.
    static let journalBody = 256 << 10

    public init(openai: Upstream, anthropic: Upstream, budget: Budget, prices: PriceTable, allowProviderTools: Bool = false,
                timeouts: HTTPClient.Timeouts = .fromEnvironment(), retry: RetryPolicy = RetryPolicy()) {
        self.allowProviderTools = allowProviderTools
        upstreams = [.openai: openai, .anthropic: anthropic]
        self.budget = budget
        self.prices = prices
        self.timeouts = timeouts
        self.retry = retry
        stopFD = ab_eventfd()
        redactors = [openai.key, anthropic.key].compactMap { $0.flatMap { SecretRedactor(secret: $0) } }
    }

    deinit { close(stopFD) }

    /// Cancels calls in flight (the sandbox is gone).
    public func stop() {
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
    }

    public func take() -> [Event] { events.take() }

    func post(_ e: Event) { events.post(e) }

    /// What the run used so far: model calls, tokens, cost (nil when a model had no price).
    public var used: (calls: Int, input: Int, output: Int, cost: Double?) {
        totals.withLock { ($0.calls, $0.inputTokens, $0.outputTokens, $0.cost) }
    }

    public var exhausted: String? { totals.withLock { $0.exhausted } }

    // MARK: routing

    static func route(_ head: HTTPHead) -> (Provider, String)? {
        let path = String(head.target.split(separator: "?", maxSplits: 1).first ?? "")
        switch (head.method, path) {
        case ("POST", "/v1/chat/completions"), ("POST", "/v1/responses"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
             ("GET", "/v1/models"):
            return (.openai, path)
        case ("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"):
            return (.anthropic, path)
        default:
            return nil
        }
    }

    public func accepts(_ head: HTTPHead) -> Bool { ModelGateway.route(head) != nil }

    /// A provider-side tool that makes the provider fetch from the network for the agent (Anthropic's
    /// MCP connector, web search and fetch; OpenAI's remote MCP, web search), or nil.
    static func networkTool(in request: JSON) -> String? {
        if let servers = request["mcp_servers"]?.arrayValue, !servers.isEmpty { return "mcp_servers (the MCP connector)" }
        for tool in request["tools"]?.arrayValue ?? [] {
            let type = tool["type"]?.stringValue ?? ""
            if type == "mcp" || type.hasPrefix("web_search") || type.hasPrefix("web_fetch") || type == "url_context" {
                return "the provider tool \"\(type)\""
            }
        }
        if request["web_search_options"] != nil { return "web_search_options" }
        return nil
    }

    /// An error in the provider's own shape, which its SDK shows with the message.
    static func error(_ provider: Provider, _ status: Int, _ message: String, type: String) -> [UInt8] {
        let body: JSON = provider == .anthropic
            ? .object([("type", "error"), ("error", .object([("type", .string(type)), ("message", .string(message))]))])
            : .object([("error", .object([("message", .string(message)), ("type", .string(type)), ("code", .string(type))]))])
        return AgentboxAPI.json(status, body, extra: [HTTPHead.Field("x-should-retry", "false")])
    }

    // MARK: one call

    public func handle(_ head: HTTPHead, body: [UInt8], client: SocketIO) {
        guard let (provider, path) = ModelGateway.route(head) else { return }
        let id = ids.wrappingAdd(1, ordering: .relaxed).newValue
        let deadline = Clock.monotonic() + 30
        func refuse(_ status: Int, _ message: String, type: String) {
            post(.refused(id: id, reason: message))
            client.write(ModelGateway.error(provider, status, message, type: type), until: deadline)
        }
        guard let upstream = upstreams[provider], let key = upstream.key, !key.isEmpty else {
            let variable = provider == .openai ? "OPENAI_API_KEY" : "ANTHROPIC_API_KEY"
            return refuse(502, "agentbox gateway: no \(provider.rawValue) key: set \(variable) where agentbox runs (it never enters the sandbox)",
                          type: "agentbox_no_upstream_key")
        }
        var request: JSON = .object([])
        if head.method == "POST" {
            guard let parsed = try? JSON.parse(bytes: body), parsed.objectValue != nil else {
                return refuse(400, "agentbox gateway: the request body is not a JSON object", type: "invalid_request_error")
            }
            request = parsed
        }
        let model = request["model"]?.stringValue ?? ""
        let stream = request["stream"]?.boolValue ?? false
        let counted = path != "/v1/models" && path != "/v1/messages/count_tokens"
        if !allowProviderTools, let tool = ModelGateway.networkTool(in: request) {
            return refuse(400, "agentbox gateway: \(tool) makes the provider reach the network for the agent, around the sandbox's network policy; "
                          + "the operator may allow it with --allow-provider-tools", type: "agentbox_provider_tool_refused")
        }
        do {
            // Admission: a call is a step; a budget already used up refuses every call (listing models
            // and counting tokens too) before it costs anything.
            let refusal: String? = totals.withLock { t in
                if let e = t.exhausted { return e }
                guard counted else { return nil }
                if let max = budget.maxSteps, t.calls >= max { return "the step budget (\(max) model calls) is used up" }
                if budget.maxCost != nil && prices.price(provider: provider.rawValue, model: model) == nil {
                    return "--max-cost cannot be enforced: no price for \(provider.rawValue):\(model)"
                }
                t.calls += 1
                return nil
            }
            if let refusal {
                return refuse(403, "agentbox: \(refusal); the run is ending", type: "agentbox_budget_exhausted")
            }
        }
        // A streamed Chat Completions call that does not ask for usage gets it anyway, upstream: the
        // usage chunk is taken out of what the client sees.
        var sent = request
        var stripUsage = false
        if provider == .openai && path == "/v1/chat/completions" && stream && request["stream_options"]?["include_usage"]?.boolValue != true {
            var options = request["stream_options"]?.objectValue ?? []
            options.removeAll { $0.0 == "include_usage" }
            options.append(("include_usage", true))
            var fields = sent.objectValue ?? []
            fields.removeAll { $0.0 == "stream_options" }
            fields.append(("stream_options", .object(options)))
            sent = .object(fields)
            stripUsage = true
        }
        post(.request(id: id, provider: provider, path: path, model: model, stream: stream,
                      body: body.count <= ModelGateway.journalBody ? request : .object([("truncated", true), ("bytes", .number(Double(body.count)))])))
        // The client's own organization/project headers are not passed: the key's are the operator's.
        var headers = ["Content-Type: application/json", "Accept: " + (head.field("accept") ?? "application/json")]
        for name in ["anthropic-version", "anthropic-beta", "openai-beta"] {
            if let v = head.field(name) { headers.append("\(name): \(v)") }
        }
        if provider == .anthropic {
            headers.append("x-api-key: \(key)")
            if head.field("anthropic-version") == nil { headers.append("anthropic-version: 2023-06-01") }
        } else {
            headers.append("Authorization: Bearer \(key)")
        }
        var base = upstream.base
        while base.hasSuffix("/") { base.removeLast() }
        // OpenAI-style bases include /v1 (docs/models.md); Anthropic's do not.
        let url = provider == .openai ? base + path.dropFirst(3) : base + path
        forward(id: id, provider: provider, url: url, headers: headers, body: head.method == "POST" ? sent.serializedBytes : [],
                method: head.method, model: model, stream: stream, stripUsage: stripUsage, counted: counted, requestBytes: body.count, client: client)
    }

    /// Sends the call upstream (retrying what may be retried while nothing reached the client) and
    /// streams the answer to the client.
    func forward(id: Int, provider: Provider, url: String, headers: [String], body: [UInt8], method: String, model: String,
                 stream: Bool, stripUsage: Bool, counted: Bool, requestBytes: Int, client: SocketIO) {
        let started = Clock.monotonic()
        let stopFD = self.stopFD
        let cancelled = { () -> Bool in
            var p = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
            return poll(&p, 1, 0) == 1
        }
        var attempt = 0
        while true {
            attempt += 1
            let relay = StreamRelay(client: client, stream: stream, stripUsage: stripUsage, redactors: redactors)
            let response = HTTPClient.send(method: method, url: url, headers: headers, body: body, timeouts: timeouts, provider: provider.rawValue,
                                           cancel: cancelled) { status, bytes in relay.take(status: status, bytes) }
            relay.headers = response.headers
            // What went wrong, if anything, as the built-in loop's retry policy sees it.
            var failure: ModelError? = response.transportError
            if failure == nil && response.status >= 400 {
                failure = ModelError.classify(status: response.status, body: relay.held, headers: response.headers, provider: provider.rawValue,
                                              host: URLParts(url).host)
            }
            if let failure, !relay.forwarding, !cancelled(), let delay = retry.delay(afterAttempt: attempt, error: failure) {
                post(.retry(id: id, notice: RetryNotice(attempt: attempt, maxAttempts: retry.maxAttempts, error: failure, delay: delay).description))
                var p = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, Int32(delay * 1000))
                continue
            }
            relay.finish()
            let ms = Int((Clock.monotonic() - started) * 1000)
            // An answer that started (status < 400, bytes came) counts even when cut short (the client
            // went away, the transfer broke): the provider charges for what it produced.
            let answered = response.status > 0 && response.status < 400 && relay.bytes > 0
            if !answered {
                // A call that failed used nothing: its step is given back (the gateway's own retries are
                // done, and its answer tells the SDKs not to retry it).
                if counted { totals.withLock { $0.calls -= 1 } }
                if let failure, response.status < 400 || relay.held.isEmpty {
                    // A transport failure: the client gets a 502 if it got nothing yet.
                    if !relay.forwarding {
                        client.write(ModelGateway.error(provider, 502, "agentbox gateway: \(failure.summary)", type: "agentbox_upstream_error"),
                                     until: Clock.monotonic() + 10)
                    }
                    post(.failed(id: id, status: response.status, message: failure.summary, attempts: attempt))
                } else {
                    post(.failed(id: id, status: response.status, message: relay.errorText, attempts: attempt))
                }
                return
            }
            var usage = relay.usage
            let estimated = usage == nil
            if usage == nil {
                // No usage from the provider: about 4 bytes a token, marked as an estimate.
                usage = counted ? Usage(inputTokens: (requestBytes + 3) / 4, outputTokens: (relay.bytes + 3) / 4) : Usage()
            }
            let u = usage!
            let callCost = counted ? prices.cost(u, provider: provider.rawValue, model: model) : 0
            let exhausted: String? = !counted ? nil : totals.withLock { t in
                t.inputTokens += u.inputTokens
                t.outputTokens += u.outputTokens
                if let c = t.cost, let add = callCost { t.cost = c + add } else { t.cost = nil }
                guard t.exhausted == nil else { return nil }
                var why: String? = nil
                if let max = budget.maxTokens, t.inputTokens + t.outputTokens >= max { why = "the token budget (\(max)) is used up" }
                if let max = budget.maxCost, let c = t.cost, c >= max { why = "the cost budget ($\(max)) is used up" }
                if let max = budget.maxSteps, t.calls >= max { why = "the step budget (\(max) model calls) is used up" }
                t.exhausted = why
                return why
            }
            post(.response(id: id, status: response.status, usage: u, estimated: estimated && counted, cost: callCost, ms: ms, attempts: attempt,
                           text: relay.journalText, body: relay.json, cut: failure?.summary))
            if let exhausted { post(.exhausted(exhausted)) }
            return
        }
    }
}

/// One upstream answer on its way to the client: the head once the status is known (an error that
/// may be retried is held back instead), the body as it comes (SSE events whole when the usage chunk
/// must be taken out), and what the journal keeps: usage, the text, a bounded copy of a JSON body.
final class StreamRelay: @unchecked Sendable {
    let client: SocketIO
    let stripUsage: Bool
    let redactors: [SecretRedactor]
    var headers: [String: String] = [:]
    /// The head went to the client: no retry any more.
    private(set) var forwarding = false
    /// An error body (status >= 400), held for classification, then redacted and sent.
    private(set) var held: [UInt8] = []
    private(set) var status = 0
    private(set) var bytes = 0
    private(set) var usage: Usage? = nil
    private(set) var text = ""
    var clientGone = false
    var pending: [UInt8] = []
    var sse = false
    var copy: [UInt8] = []
    /// The response head, not sent yet.
    var headBytes: [UInt8] = []

    init(client: SocketIO, stream: Bool, stripUsage: Bool, redactors: [SecretRedactor]) {
        self.client = client
        sse = stream
        self.stripUsage = stripUsage
        self.redactors = redactors
    }

    /// libcurl's data callback: false stops the transfer (the client went away).
    func take(status: Int, _ chunk: [UInt8]) -> Bool {
        self.status = status
        bytes += chunk.count
        if status >= 400 {
            if held.count < 1 << 20 { held += chunk.prefix((1 << 20) - held.count) }
            return true
        }
        if !forwarding {
            forwarding = true
            let type = sse ? "text/event-stream" : "application/json"
            let head = HTTPHead(start: ("HTTP/1.1", "\(status)", AgentboxAPI.reason(status)),
                                fields: [HTTPHead.Field("Content-Type", type), HTTPHead.Field("Cache-Control", "no-cache"), HTTPHead.Field("Connection", "close")])
            headBytes = head.bytes  // sent with the first bytes of the body: one segment
        }
        if sse {
            pending += chunk
            return events()
        }
        if copy.count < ModelGateway.journalBody { copy += chunk.prefix(ModelGateway.journalBody - copy.count) }
        return send(chunk)
    }

    /// Complete SSE events in `pending`: observed for usage and text, and passed on (but the usage
    /// chunk the client did not ask for).
    func events() -> Bool {
        while let end = StreamRelay.eventEnd(pending) {
            let block = Array(pending[..<end])
            pending.removeFirst(end)
            var keep = true
            for line in block.split(separator: 0x0A) where line.starts(with: Array("data:".utf8)) {
                let data = line.dropFirst(5).drop { $0 == 0x20 }
                guard let json = try? JSON.parse(bytes: Array(data.last == 0x0D ? data.dropLast() : data)) else { continue }
                observe(json)
                if stripUsage, json["usage"]?.objectValue != nil, json["choices"]?.arrayValue?.isEmpty == true { keep = false }
            }
            if keep && !send(block) { return false }
        }
        // An answer that is not the event stream asked for (no blank line in 1 MiB) is passed on as it
        // comes instead of being held whole.
        if pending.count > 1 << 20 {
            defer { pending = [] }
            return send(pending)
        }
        return true
    }

    /// The offset past the blank line ending the first event in `b` (LF or CRLF line ends).
    static func eventEnd(_ b: [UInt8]) -> Int? {
        var i = 0
        while i + 1 < b.count {
            if b[i] == 0x0A && b[i + 1] == 0x0A { return i + 2 }
            if i + 3 < b.count && b[i] == 0x0D && b[i + 1] == 0x0A && b[i + 2] == 0x0D && b[i + 3] == 0x0A { return i + 4 }
            i += 1
        }
        return nil
    }

    /// Usage and text from one streamed event (OpenAI Chat Completions and Responses, Anthropic Messages).
    func observe(_ json: JSON) {
        if let u = StreamRelay.usage(in: json) {
            // Anthropic sends input tokens at the start and the output count, cumulative, at the end.
            var merged = usage ?? Usage()
            merged.inputTokens = max(merged.inputTokens, u.inputTokens)
            merged.outputTokens = max(merged.outputTokens, u.outputTokens)
            usage = merged
        }
        guard text.utf8.count < ModelGateway.journalBody else { return }
        if let t = json["choices"]?.arrayValue?.first?["delta"]?["content"]?.stringValue { text += t }
        if let t = json["delta"]?["text"]?.stringValue { text += t }
        if json["type"]?.stringValue == "response.output_text.delta", let t = json["delta"]?.stringValue { text += t }
    }

    /// The usage object of a body or event, wherever the provider puts it.
    static func usage(in json: JSON) -> Usage? {
        for u in [json["usage"], json["response"]?["usage"], json["message"]?["usage"]] {
            guard let u, u.objectValue != nil else { continue }
            let input = (u["prompt_tokens"]?.intValue ?? u["input_tokens"]?.intValue ?? 0)
                + (u["cache_creation_input_tokens"]?.intValue ?? 0) + (u["cache_read_input_tokens"]?.intValue ?? 0)
            let output = u["completion_tokens"]?.intValue ?? u["output_tokens"]?.intValue ?? 0
            if input > 0 || output > 0 || u["output_tokens"] != nil || u["completion_tokens"] != nil {
                return Usage(inputTokens: input, outputTokens: output)
            }
        }
        return nil
    }

    /// The transfer ended: what is left of a stream, or the held error (redacted), goes out; a JSON
    /// body is read for usage.
    func finish() {
        if (sse && !pending.isEmpty) || !headBytes.isEmpty || !carry.isEmpty {
            _ = send(pending, final: true)
            pending = []
        }
        if !sse && status < 400, let json = try? JSON.parse(bytes: redacted(copy)) {
            usage = StreamRelay.usage(in: json)
            if let t = json["choices"]?.arrayValue?.first?["message"]?["content"]?.stringValue { text = t }
            if let blocks = json["content"]?.arrayValue { text = blocks.compactMap { $0["text"]?.stringValue }.joined() }
        }
        if status >= 400 && !forwarding {
            forwarding = true
            let bytes = redacted(held)
            // The gateway retried what may be retried: the SDKs must not multiply that (x-should-retry).
            let head = HTTPHead(start: ("HTTP/1.1", "\(status)", AgentboxAPI.reason(status)),
                                fields: [HTTPHead.Field("Content-Type", headers["content-type"] ?? "application/json"),
                                         HTTPHead.Field("Content-Length", "\(bytes.count)"), HTTPHead.Field("Connection", "close"),
                                         HTTPHead.Field("x-should-retry", "false")])
            if !client.write(head.bytes + bytes, until: Clock.monotonic() + 30) { clientGone = true }
        }
    }

    /// The JSON body for the journal, redacted.
    var json: JSON? { sse ? nil : (try? JSON.parse(bytes: redacted(copy))) }

    /// The answer's text for the journal, redacted.
    var journalText: String { String(decoding: redacted(Array(text.utf8)), as: UTF8.self) }

    var errorText: String {
        let clean = redacted(held)
        let json = try? JSON.parse(bytes: clean)
        let message = json?["error"]?["message"]?.stringValue ?? String(decoding: clean.prefix(300), as: UTF8.self)
        return "HTTP \(status): \(message)"
    }

    /// The longest form of the key, less one: the bytes of a plain body held back between chunks, so
    /// that a key cut by a chunk boundary is still found whole.
    lazy var overlap: Int = max(0, (redactors.flatMap(\.forms).map(\.count).max() ?? 1) - 1)
    /// Body bytes held back (not redacted or sent yet).
    var carry: [UInt8] = []

    /// `bytes` with every form of the key replaced, on the raw bytes (any encoding).
    func redacted(_ bytes: [UInt8]) -> [UInt8] {
        guard !redactors.isEmpty else { return bytes }
        var ranges: [Range<Int>] = []
        bytes.withUnsafeBufferPointer { p in for r in redactors { ranges += r.find(in: p) } }
        guard !ranges.isEmpty else { return bytes }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        var out: [UInt8] = []
        var at = 0
        for r in ranges where r.upperBound > at {
            out += bytes[at..<max(at, r.lowerBound)]
            out += Array("[REDACTED]".utf8)
            at = r.upperBound
        }
        return out + bytes[at...]
    }

    /// Sends `bytes` (after the head, if not sent yet), redacted. A plain body keeps its last `overlap`
    /// bytes back until the next chunk or the end (`final`); an SSE event is redacted whole.
    func send(_ bytes: [UInt8], final: Bool = false) -> Bool {
        guard !clientGone else { return false }
        var out: [UInt8]
        if sse || redactors.isEmpty {
            out = redacted(bytes)
        } else {
            let combined = carry + bytes
            var cut = final ? combined.count : max(0, combined.count - overlap)
            var ranges: [Range<Int>] = []
            combined.withUnsafeBufferPointer { p in for r in redactors { ranges += r.find(in: p) } }
            for r in ranges where r.lowerBound < cut && r.upperBound > cut { cut = r.upperBound }
            carry = Array(combined[cut...])
            out = redacted(Array(combined[..<cut]))
        }
        if !headBytes.isEmpty {
            out = headBytes + out
            headBytes = []
        }
        if out.isEmpty { return true }
        if !client.write(out, until: Clock.monotonic() + 300) { clientGone = true }
        return !clientGone
    }
}

/// Journals what the gateway reports, on the supervision thread: `model.request`, `model.attempt`
/// (a retry), `model.response` (usage, estimated or not, cost), `model.error`, and when a budget runs
/// out a `budget` record and a confession; the command then has `grace` seconds to end by itself.
final class GatewayRecorder {
    let gateway: ModelGateway
    let writer: JournalWriter
    let recorder: ServiceRecorder
    let grace: Double
    weak var box: Sandbox?
    let warn: (String) -> Void
    var exhaustedAt: Double? = nil
    /// The agent decides how many calls it makes, and how big: bodies and texts journaled in all are
    /// bounded by the run's `--journal-output` cap (then only their sizes), and refused or failed calls
    /// (which cost nothing upstream and can come back to back) by `maxErrorRecords` (then only counted).
    let bodyCap: UInt64
    var bodyBytes: UInt64 = 0
    static let maxErrorRecords = 1000
    var errorRecords = 0
    var warnedBodies = false

    init(gateway: ModelGateway, writer: JournalWriter, recorder: ServiceRecorder, grace: Double, bodyCap: UInt64, box: Sandbox,
         warn: @escaping (String) -> Void) {
        self.bodyCap = bodyCap
        self.gateway = gateway
        self.writer = writer
        self.recorder = recorder
        self.grace = grace
        self.box = box
        self.warn = warn
    }

    /// `value` when the run's body budget still has room for it, else a note of its size.
    func bounded(_ value: JSON) throws(AgentboxError) -> JSON {
        let size = UInt64(value.serializedBytes.count)
        if bodyBytes + size <= bodyCap {
            bodyBytes += size
            return value
        }
        if !warnedBodies {
            warnedBodies = true
            let message = "model call bodies past the journal's cap of \(Units.formatSize(bodyCap)) are not stored (their sizes are)"
            warn(message)
            _ = try writer.append(.warning, .object([("message", .string(message))]), critical: false)
        }
        return .object([("omitted", "journal cap"), ("bytes", .number(Double(size)))])
    }

    /// Whether one more refused or failed call is written (false, counted, past the cap).
    func admitError() throws(AgentboxError) -> Bool {
        errorRecords += 1
        if errorRecords == GatewayRecorder.maxErrorRecords + 1 {
            let message = "\(GatewayRecorder.maxErrorRecords) refused or failed model calls recorded: later ones are not"
            warn(message)
            _ = try writer.append(.warning, .object([("message", .string(message))]), critical: false)
        }
        return errorRecords <= GatewayRecorder.maxErrorRecords
    }

    func record() throws(AgentboxError) {
        for event in gateway.take() {
            switch event {
            case let .request(id, provider, path, model, stream, body):
                _ = try writer.append(.modelRequest, .object([
                    ("call", .number(Double(id))), ("provider", .string(provider.rawValue)), ("path", .string(path)),
                    ("model", .string(model)), ("stream", .bool(stream)), ("body", try bounded(body)),
                ]), critical: false)
            case let .retry(id, notice):
                _ = try writer.append(.modelAttempt, .object([("call", .number(Double(id))), ("retry", .string(notice))]), critical: false)
            case let .response(id, status, usage, estimated, cost, ms, attempts, text, body, cut):
                var data: [(String, JSON)] = [
                    ("call", .number(Double(id))), ("status", .number(Double(status))), ("usage", usage.json),
                    ("usage_estimated", .bool(estimated)), ("cost", cost.map { .number($0) } ?? .null), ("ms", .number(Double(ms))),
                    ("attempts", .number(Double(attempts))), ("text", try bounded(.string(text))),
                ]
                if let body { data.append(("body", try bounded(body))) }
                if let cut { data.append(("cut", .string(cut))) }
                _ = try writer.append(.modelResponse, .object(data), critical: false)
            case let .failed(id, status, message, attempts):
                guard try admitError() else { continue }
                _ = try writer.append(.modelError, .object([
                    ("call", .number(Double(id))), ("status", .number(Double(status))), ("message", .string(message)),
                    ("attempts", .number(Double(attempts))),
                ]), critical: false)
            case let .refused(id, reason):
                guard try admitError() else { continue }
                _ = try writer.append(.modelError, .object([("call", .number(Double(id))), ("refused", .string(reason))]), critical: false)
            case let .exhausted(why):
                let used = gateway.used
                _ = try writer.append(.budget, .object([
                    ("exceeded", .string(why)), ("steps", .number(Double(used.calls))),
                    ("tokens", Usage(inputTokens: used.input, outputTokens: used.output).json), ("cost", used.cost.map { .number($0) } ?? .null),
                ]), critical: true)
                _ = try recorder.confess(severity: "warning", category: "budget",
                                         summary: "\(why): further model calls are refused; the agent has \(Int(grace)) s to end", details: nil,
                                         by: "supervisor")
                warn("\(why): further model calls are refused; the command has \(Int(grace)) s to end")
                exhaustedAt = Clock.monotonic()
            }
        }
    }

    /// Past the grace period after a budget ran out, the sandbox is killed.
    func tick() {
        if let at = exhaustedAt, Clock.monotonic() - at >= grace {
            exhaustedAt = nil
            box?.kill()
        }
    }
}
