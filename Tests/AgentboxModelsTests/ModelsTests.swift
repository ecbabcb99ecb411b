import Foundation
import AgentboxCore
import AgentboxModels
import Glibc
import Testing

/// The streams in ../shared/brief/protocols.md, byte for byte.
let openAIStream = """
    data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}

    data: {"choices":[{"index":0,"delta":{"content":"Let me look."}}]}

    data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"shell","arguments":""}}]}}]}

    data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"command\\":"}}]}}]}

    data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"ls\\"}"}}]}}]}

    data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

    data: {"choices":[],"usage":{"prompt_tokens":50,"completion_tokens":12,"total_tokens":62}}

    data: [DONE]


    """

let anthropicStream = """
    event: message_start
    data: {"type":"message_start","message":{"id":"msg_1","content":[],"usage":{"input_tokens":849,"output_tokens":1}}}

    event: content_block_start
    data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

    event: ping
    data: {"type":"ping"}

    event: content_block_delta
    data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Listing."}}

    event: content_block_stop
    data: {"type":"content_block_stop","index":0}

    event: content_block_start
    data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"shell","input":{}}}

    event: content_block_delta
    data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

    event: content_block_delta
    data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"command\\": \\"ls\\"}"}}

    event: content_block_stop
    data: {"type":"content_block_stop","index":1}

    event: message_delta
    data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":47}}

    event: message_stop
    data: {"type":"message_stop"}


    """

func events(_ text: String, splitEvery n: Int, crlf: Bool = false) -> [SSEEvent] {
    let bytes = Array((crlf ? text.replacingNewlines() : text).utf8)
    var parser = SSEParser()
    var out: [SSEEvent] = []
    var i = 0
    while i < bytes.count {
        out += parser.feed(Array(bytes[i..<min(bytes.count, i + n)]))
        i += n
    }
    return out
}

extension String {
    func replacingNewlines() -> String { split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n") }
}

@Suite struct SSETests {
    @Test(arguments: [1, 2, 3, 7, 64, 100_000])
    func eventsSurviveAnySplitAndCRLF(split: Int) {
        let whole = events(anthropicStream, splitEvery: 100_000)
        #expect(whole.count == 11)
        #expect(whole[2] == SSEEvent(event: "ping", data: #"{"type":"ping"}"#))
        #expect(events(anthropicStream, splitEvery: split) == whole)
        #expect(events(anthropicStream, splitEvery: split, crlf: true) == whole)
    }

    @Test func commentsMultilineDataAndUnknownFields() {
        var p = SSEParser()
        let out = p.feed(Array(": keep-alive\n\nid: 7\nretry: 100\nevent: e\ndata: one\ndata:two\nbogus: x\n\ndata: ü\r\r".utf8))
        #expect(out == [SSEEvent(event: "e", data: "one\ntwo"), SSEEvent(data: "ü")])
    }

    @Test func aMultiByteCharacterSplitAcrossReadsIsKept() {
        var p = SSEParser()
        let bytes = Array("data: héllo\n\n".utf8)
        var out: [SSEEvent] = []
        for b in bytes { out += p.feed([b]) }
        #expect(out == [SSEEvent(data: "héllo")])
    }
}

@Suite struct OpenAITests {
    @Test func decodesTheDocumentedStream() throws {
        var acc = OpenAIStreamAccumulator()
        for e in events(openAIStream, splitEvery: 5) { try acc.handle(e) }
        let turn = try acc.finish()
        #expect(turn.text == "Let me look.")
        #expect(turn.toolCalls == [ToolCall(id: "call_1", name: "shell", arguments: #"{"command":"ls"}"#)])
        #expect(try turn.toolCalls[0].parsed.get() == ["command": "ls"])
        #expect(turn.stopReason == .toolUse)
        #expect(turn.usage == Usage(inputTokens: 50, outputTokens: 12))
    }

    @Test func ollamaReusingIndexZeroWithNewIdsGivesSeparateCalls() throws {
        let stream = """
            data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"read_file","arguments":"{\\"path\\":\\"x\\"}"}}]}}]}

            data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"b","function":{"name":"read_file","arguments":"{\\"path\\":\\"y\\"}"}}]}}]}

            data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

            data: [DONE]


            """
        var acc = OpenAIStreamAccumulator()
        for e in events(stream, splitEvery: 1000) { try acc.handle(e) }
        let turn = try acc.finish()
        #expect(turn.toolCalls.map(\.id) == ["a", "b"])
        #expect(turn.toolCalls.map(\.arguments) == [#"{"path":"x"}"#, #"{"path":"y"}"#])
    }

    @Test func aStreamCutShortIsAFailedAttempt() throws {
        var acc = OpenAIStreamAccumulator()
        let cut = events(openAIStream, splitEvery: 1000).prefix(4)
        for e in cut { try acc.handle(e) }
        #expect(throws: ModelError.self) { try acc.finish() }
        do { _ = try acc.finish() } catch { #expect(error.kind == .incompleteStream && error.retryable) }
    }

    @Test func invalidArgumentsBecomeAToolErrorNotACrash() {
        let call = ToolCall(id: "c", name: "shell", arguments: #"{"command": "ls"#)
        guard case let .failure(e) = call.parsed else { Issue.record("accepted invalid JSON"); return }
        #expect(e.message.contains("not valid JSON"))
        #expect(ToolCall(id: "c", name: "shell", arguments: "[1]").parsed.isFailure)
        #expect(ToolCall(id: "c", name: "shell", arguments: "").parsed.isSuccess)
    }

    @Test func requestShapeAndRoundTripOfToolTurns() throws {
        let turn = AssistantTurn(text: "", toolCalls: [ToolCall(id: "call_1", name: "shell", arguments: #"{"command":"ls"}"#)], stopReason: .toolUse)
        let conv = Conversation(system: "sys", messages: [.user("hi"), .assistant(turn), .toolResults([ToolResult(callID: "call_1", content: "a.txt", isError: false)])])
        let tool = ToolDefinition(name: "shell", description: "run", parameters: ["type": "object"])
        let body = OpenAIProtocol.request(model: "gpt-x", conversation: conv, tools: [tool], stream: true)
        #expect(body["stream"] == true)
        #expect(body["stream_options"]?["include_usage"] == true)
        #expect(body["tool_choice"] == "auto")
        let messages = body["messages"]?.arrayValue ?? []
        #expect(messages.map { $0["role"]?.stringValue ?? "" } == ["system", "user", "assistant", "tool"])
        #expect(messages[2]["content"] == .null)
        #expect(messages[2]["tool_calls"]?.arrayValue?.first?["function"]?["arguments"] == #"{"command":"ls"}"#)
        #expect(messages[3]["tool_call_id"] == "call_1")
        #expect(body["tools"]?.arrayValue?.first?["function"]?["name"] == "shell")
    }

    @Test func nonStreamedAnswer() throws {
        let json = try JSON.parse(#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"shell","arguments":"{\"command\":\"ls\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#)
        let turn = try OpenAIProtocol.decode(response: json)
        #expect(turn.toolCalls.first?.name == "shell" && turn.stopReason == .toolUse && turn.usage.total == 8)
    }
}

@Suite struct AnthropicTests {
    @Test func decodesTheDocumentedStream() throws {
        var acc = AnthropicStreamAccumulator()
        for e in events(anthropicStream, splitEvery: 3) { try acc.handle(e) }
        let turn = try acc.finish()
        #expect(turn.text == "Listing.")
        #expect(turn.toolCalls == [ToolCall(id: "toolu_1", name: "shell", arguments: #"{"command": "ls"}"#)])
        #expect(turn.stopReason == .toolUse)
        #expect(turn.usage == Usage(inputTokens: 849, outputTokens: 47))
    }

    @Test func errorEventAfter200AndMissingMessageStop() throws {
        var acc = AnthropicStreamAccumulator()
        let e = SSEEvent(event: "error", data: #"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
        do { try acc.handle(e); Issue.record("error event ignored") } catch { #expect(error.kind == .overloaded && error.retryable) }
        var cut = AnthropicStreamAccumulator()
        for ev in events(anthropicStream, splitEvery: 1000).dropLast() { try cut.handle(ev) }
        #expect(throws: ModelError.self) { try cut.finish() }
        var unknown = AnthropicStreamAccumulator()
        try unknown.handle(SSEEvent(event: "brand_new_event", data: "{}"))
    }

    @Test func nonStreamedAnswerKeepsTextToolsAndThinking() throws {
        let json = try JSON.parse(#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"s"},{"type":"text","text":"Listing."},{"type":"tool_use","id":"toolu_1","name":"shell","input":{"command":"ls"}}],"stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":5}}"#)
        let turn = try AnthropicProtocol.decode(response: json)
        #expect(turn.text == "Listing.")
        #expect(try turn.toolCalls.first?.parsed.get() == ["command": "ls"])
        #expect(turn.thinking.count == 1 && turn.stopReason == .toolUse && turn.usage.total == 15)
        let error = try JSON.parse(#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
        #expect(throws: ModelError.self) { try AnthropicProtocol.decode(response: error) }
    }

    @Test func requestPairsToolUseWithToolResultAndKeepsThinking() throws {
        let thinking: JSON = ["type": "thinking", "thinking": "hmm", "signature": "sig"]
        let turn = AssistantTurn(text: "Listing.", toolCalls: [ToolCall(id: "toolu_1", name: "shell", arguments: #"{"command":"ls"}"#)],
                                 thinking: [thinking], stopReason: .toolUse)
        let good = Conversation(system: "sys", messages: [.user("hi"), .assistant(turn), .toolResults([ToolResult(callID: "toolu_1", content: "x", isError: true)])])
        let body = try AnthropicProtocol.request(model: "claude", conversation: good, tools: [], stream: true, maxTokens: 1024)
        #expect(body["system"] == "sys")
        let messages = body["messages"]?.arrayValue ?? []
        #expect(messages[1]["content"]?.arrayValue?.first == thinking, "thinking blocks go back unchanged")
        #expect(messages[1]["content"]?.arrayValue?.last?["input"] == ["command": "ls"])
        #expect(messages[2]["content"]?.arrayValue?.first?["is_error"] == true)
        let dangling = Conversation(system: "sys", messages: [.user("hi"), .assistant(turn)])
        do {
            _ = try AnthropicProtocol.request(model: "claude", conversation: dangling, tools: [], stream: true, maxTokens: 1024)
            Issue.record("a dangling tool_use was sent")
        } catch {
            #expect(error.kind == .badConversation)
        }
    }
}

@Suite struct ErrorAndRetryTests {
    @Test(arguments: [
        (401, #"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#, ModelError.Kind.auth, false),
        (429, #"{"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}}"#, .rateLimited, true),
        (429, #"{"error":{"message":"You exceeded your quota","type":"insufficient_quota","code":"insufficient_quota"}}"#, .quotaExceeded, false),
        (400, #"{"error":{"message":"maximum context length","type":"invalid_request_error","code":"context_length_exceeded"}}"#, .contextLength, false),
        (400, #"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 250000 tokens"}}"#, .contextLength, false),
        (400, #"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#, .badRequest, false),
        (529, #"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#, .overloaded, true),
        (500, "<html>oops</html>", .server, true),
        (408, "", .timeout, true),
        (409, "", .conflict, true),
        (404, #"{"error":{"message":"model not found"}}"#, .notFound, false),
    ])
    func classification(status: Int, body: String, kind: ModelError.Kind, retryable: Bool) {
        let e = ModelError.classify(status: status, body: Array(body.utf8), headers: [:], provider: "openai", host: "api.openai.com")
        #expect(e.kind == kind)
        #expect(e.retryable == retryable)
        #expect(e.description.hasPrefix("\(status) from api.openai.com"))
    }

    @Test func userFacingMessageSaysWhatToDo() {
        let e = ModelError.classify(status: 401, body: Array(#"{"error":{"message":"Incorrect API key provided"}}"#.utf8), headers: [:],
                                    provider: "openai", host: "api.openai.com")
        #expect(e.description == "401 from api.openai.com: Incorrect API key provided (check OPENAI_API_KEY)")
    }

    @Test func backoffHonoursRetryAfterAndGivesUp() {
        let policy = RetryPolicy()
        let rate = ModelError.classify(status: 429, body: [], headers: ["retry-after-ms": "2500", "retry-after": "9"], provider: "openai", host: "h")
        #expect(rate.retryAfter == 2.5)
        #expect(policy.delay(afterAttempt: 1, error: rate, random: 0) == 2.5)
        let server = ModelError(kind: .server, message: "x")
        #expect(policy.delay(afterAttempt: 1, error: server, random: 0) == 0.5)
        #expect(policy.delay(afterAttempt: 3, error: server, random: 0) == 2.0)
        #expect(policy.delay(afterAttempt: 3, error: server, random: 1) == 2.2)
        #expect(policy.delay(afterAttempt: 20, error: server, random: 0) == nil)
        #expect(policy.delay(afterAttempt: 1, error: ModelError(kind: .auth, message: "x")) == nil)
        var long = RetryPolicy()
        long.maxAttempts = 100
        #expect(long.delay(afterAttempt: 30, error: server, random: 0) == 60)
    }
}

extension Result {
    var isFailure: Bool { if case .failure = self { return true }; return false }
    var isSuccess: Bool { !isFailure }
}

@Suite struct BudgetTests {
    @Test func pricesByLongestPrefixAndFileOverrides() throws {
        let table = PriceTable()
        #expect(table.price(provider: "openai", model: "gpt-4o-mini-2024-07-18") == Price(input: 0.15, output: 0.6))
        #expect(table.price(provider: "openai", model: "gpt-4o-2024-08-06") == Price(input: 2.5, output: 10))
        #expect(table.price(provider: "openai", model: "llama3") == nil)
        #expect(table.price(provider: "replay", model: "/x/session.json") == Price(input: 0, output: 0))
        let file = "/tmp/agentbox-prices-\(Int.random(in: 0...1_000_000)).json"
        try #"{"models": {"llama3": {"input": 0, "output": 0}, "gpt-4o": {"input": 5, "output": 20}}}"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let extended = try PriceTable.load(file: file)
        #expect(extended.price(provider: "openai", model: "llama3:8b") == Price(input: 0, output: 0))
        #expect(extended.price(provider: "openai", model: "gpt-4o") == Price(input: 5, output: 20))
        #expect(extended.cost(Usage(inputTokens: 1_000_000, outputTokens: 500_000), provider: "openai", model: "gpt-4o") == 15)
    }

    @Test(arguments: [
        (#"{"model": {}}"#, "model"),
        (#"{"models": {"x": {"input": -1, "output": 1}}}"#, "models.x"),
        (#"{"models": {"x": {"input": 1, "output": 1, "cache": 2}}}"#, "models.x.cache"),
        ("nope", "not valid JSON"),
    ])
    func malformedPriceFilesNameTheProblem(text: String, fragment: String) throws {
        let file = "/tmp/agentbox-prices-\(Int.random(in: 0...1_000_000)).json"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        do {
            _ = try PriceTable.load(file: file)
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.message.contains(file) && error.message.contains(fragment), "\(error)")
        }
    }

    @Test func budgetsStopEachDimension() throws {
        var budget = Budget()
        var acc = Accounting(provider: "openai", model: "gpt-4o", prices: PriceTable(), started: 100)
        #expect(try acc.check(budget, now: 100) == nil)
        acc.record(Usage(inputTokens: 100_000, outputTokens: 10_000))  // $0.35
        budget.maxSteps = 1
        #expect(try acc.check(budget, now: 100) == .steps(1))
        budget.maxSteps = nil
        budget.maxTokens = 100_000
        #expect(try acc.check(budget, now: 100) == .tokens(100_000))
        budget.maxTokens = nil
        budget.maxCost = 0.30
        #expect(try acc.check(budget, now: 100) == .cost(0.30))
        budget.maxCost = 1
        #expect(try acc.check(budget, now: 100) == nil)
        budget.maxWallSeconds = 60
        #expect(try acc.check(budget, now: 161) == .wallTime(60))
    }

    @Test func aCostBudgetWithoutAPriceIsAnErrorNotIgnored() {
        var budget = Budget()
        budget.maxCost = 1
        let acc = Accounting(provider: "openai", model: "mystery-model", prices: PriceTable())
        #expect(throws: AgentboxError.self) { try acc.validate(budget) }
        #expect(throws: AgentboxError.self) { try acc.check(budget) }
    }
}

@Suite struct HTTPTransportTests {
    /// A listener that accepts connections (the kernel's backlog) and never answers.
    func silentListener() -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        listen(fd, 8)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    @Test func aCallInProgressCanBeCancelledAndIsNotRetried() throws {
        let (fd, port) = silentListener()
        defer { close(fd) }
        let spec = try ModelSpec.parse("openai:m", baseURL: "http://127.0.0.1:\(port)/v1")
        let provider = try #require(try makeProvider(spec) as? HTTPModelProvider)
        let deadline = Clock.monotonic() + 0.3
        provider.cancelled = { Clock.monotonic() > deadline }
        do {
            _ = try provider.complete(Conversation(system: "s", messages: [.user("hi")]), tools: [])
            Issue.record("a silent server answered")
        } catch {
            #expect(error.kind == .cancelled && !error.retryable, "\(error)")
        }
    }

    @Test func anIdleStreamTimesOut() throws {
        let (fd, port) = silentListener()
        defer { close(fd) }
        var timeouts = HTTPClient.Timeouts()
        timeouts.idle = 1
        let r = HTTPClient.post(url: "http://127.0.0.1:\(port)/v1/chat/completions", headers: [], body: Array("{}".utf8),
                                timeouts: timeouts, provider: "openai") { _, _ in true }
        #expect(r.transportError?.kind == .timeout, "\(String(describing: r.transportError))")
    }
}

@Suite struct CompactorTests {
    func conversation(results: Int, size: Int) -> Conversation {
        var c = Conversation(system: "sys", messages: [.user("task")])
        for i in 0..<results {
            c.messages.append(.assistant(AssistantTurn(toolCalls: [ToolCall(id: "c\(i)", name: "shell", arguments: "{}")])))
            c.messages.append(.toolResults([ToolResult(callID: "c\(i)", content: String(repeating: "x", count: size))]))
        }
        return c
    }

    @Test func underTheLimitNothingChanges() {
        var c = conversation(results: 3, size: 1000)
        #expect(Compactor(limit: 10_000).compact(&c).isEmpty)
    }

    @Test func oldestResultsAreShortenedFirstAndTheLatestTurnsAreKept() {
        var c = conversation(results: 6, size: 20_000)
        let rule = Compactor(limit: 100_000, target: 60_000)
        let elided = rule.compact(&c)
        #expect(elided == ["c0", "c1", "c2", "c3"], "oldest first, until under the target")
        #expect(Compactor.size(c) <= 60_000)
        if case let .toolResults(r) = c.messages[2] { #expect(r[0].content.contains("elided by agentbox") && r[0].content.utf8.count < 2_000) }
        if case let .toolResults(r) = c.messages[12] { #expect(r[0].content.utf8.count == 20_000, "the last turn is whole") }
        var again = c
        #expect(rule.compact(&again).isEmpty, "idempotent once under the limit")
        var c2 = conversation(results: 6, size: 20_000)
        #expect(rule.compact(&c2) == elided, "deterministic")
    }

    @Test func protectedTurnsStayWholeEvenWhenForced() {
        var c = conversation(results: 2, size: 50_000)
        #expect(Compactor(limit: 1, target: 1).compact(&c, force: true).isEmpty)
    }
}

/// Section 3 of issue 10: endpoints that cannot work fail at once and say so; retries are said live.
@Suite struct FailFastTests {
    @Test(arguments: ["https://api.openai.com/v1", "http://localhost:8000/v1", "HTTP://127.0.0.1:11434/v1/", "http://[::1]:8080",
                      "https://user:pw@proxy.example/openai", "http://my_host.internal"])
    func usableBaseURLs(url: String) {
        #expect(URLParts.problem(url) == nil, "\(url): \(URLParts.problem(url) ?? "")")
    }

    @Test(arguments: [("not-a-url", "no scheme"), ("localhost:8000/v1", "no scheme"), ("ftp://127.0.0.1/v1", "scheme ftp"),
                      ("file:///tmp/x", "scheme file"), ("http://", "no host"), ("http:///v1", "no host"), ("", "empty"),
                      ("http://h:0/v1", "port 0"), ("http://h:99999/v1", "port 99999"), ("http://h:x/v1", "port x"),
                      ("http://[::1/v1", "closing ]"), ("http://a b/v1", "space"), ("https://h/v1?api-version=1", "query"),
                      ("http://h!/v1", "'!'")])
    func unusableBaseURLsSayWhy(url: String, fragment: String) {
        #expect(URLParts.problem(url)?.contains(fragment) == true, "\(url): \(URLParts.problem(url) ?? "accepted")")
    }

    @Test func parseRefusesABaseURLThatCannotWorkWithAUsageError() {
        do {
            _ = try ModelSpec.parse("openai:m", baseURL: "ftp://127.0.0.1/v1")
            Issue.record("accepted ftp://")
        } catch {
            #expect(error.exitCode == 125 && error.message.contains("--base-url ftp://127.0.0.1/v1"), "\(error)")
            #expect(error.hint.contains("https://api.openai.com/v1"), "says what a valid one looks like: \(error)")
        }
        #expect((try? ModelSpec.parse("anthropic:m", baseURL: "http://127.0.0.1:8080")) != nil)
    }

    /// A port nobody listens on (bound, then closed).
    func closedPort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        close(fd)
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// A provider for `url` (set after parsing, so the transport's own classification is what is tested),
    /// and the retry notices it gives.
    func provider(_ url: String, attempts: Int = 3) throws -> (ModelProvider, Notices) {
        var spec = try ModelSpec.parse("openai:m", baseURL: "http://127.0.0.1:1/v1")
        spec.baseURL = url
        var retry = RetryPolicy()
        retry.maxAttempts = attempts
        retry.base = 0.1
        retry.jitter = 0
        let notices = Notices()
        return (try makeProvider(spec, retry: retry, onRetry: { notices.add($0.description) }), notices)
    }

    /// Notices come on the thread making the call: the test's own.
    final class Notices: @unchecked Sendable {
        var lines: [String] = []
        func add(_ line: String) { lines.append(line) }
    }

    @Test(arguments: [("ftp://127.0.0.1/v1", ModelError.Kind.badURL), ("http://[::1/v1", .badURL), ("gopher://127.0.0.1:1/v1", .badURL)])
    func errorsThatCannotHealAreNotRetried(url: String, kind: ModelError.Kind) throws {
        let (p, notices) = try provider(url)
        do {
            _ = try p.complete(Conversation(system: "s", messages: [.user("hi")]), tools: [])
            Issue.record("\(url) answered")
        } catch {
            #expect(error.kind == kind && !error.retryable, "\(error)")
            #expect(error.description.contains("not retried"), "\(error)")
        }
        #expect(p.lastAttempts.count == 1 && notices.lines.isEmpty, "\(notices.lines)")
    }

    @Test func connectionRefusedIsRetriedAndEachRetryIsSaidBeforeItsWait() throws {
        let (p, notices) = try provider("http://127.0.0.1:\(closedPort())/v1")
        do {
            _ = try p.complete(Conversation(system: "s", messages: [.user("hi")]), tools: [])
            Issue.record("a closed port answered")
        } catch {
            #expect(error.kind == .network && error.attemptsMade == 3, "\(error)")
            #expect(error.description.contains("gave up after 3 attempts"), "\(error)")
        }
        #expect(notices.lines == ["attempt 1/3: connection refused; retrying in 0.1 s", "attempt 2/3: connection refused; retrying in 0.2 s"])
        #expect(p.lastAttempts.count == 3)
        for a in p.lastAttempts.dropLast() {
            #expect(a.error?.description.contains("gave up") == false && a.error?.description.contains("kept failing") == false,
                    "an attempt that was retried does not say the call gave up: \(String(describing: a.error))")
        }
    }

    @Test func theNoticeTextAndTheAdviceAreTrueForEachSituation() {
        var refused = ModelError(kind: .network, message: "Failed to connect", host: "h", provider: "openai", cause: "connection refused")
        #expect(RetryNotice(attempt: 2, maxAttempts: 6, error: refused, delay: 1.04).description
                == "attempt 2/6: connection refused; retrying in 1.0 s")
        let limited = ModelError.classify(status: 429, body: [], headers: [:], provider: "openai", host: "h")
        #expect(RetryNotice(attempt: 1, maxAttempts: 6, error: limited, delay: 12.25).description == "attempt 1/6: 429 rate limited; retrying in 12.3 s")
        // One failed attempt (retried, maybe successfully): no claim that the server kept failing.
        for kind in [ModelError.Kind.rateLimited, .overloaded, .server, .timeout, .conflict, .incompleteStream, .network, .streamError] {
            let e = ModelError(kind: kind, message: "x")
            #expect(!e.description.contains("kept failing") && !e.description.contains("gave up"), "\(kind): \(e)")
        }
        refused.attemptsMade = 6
        #expect(refused.description.hasSuffix("(gave up after 6 attempts: check the base URL and that the server is up)"), "\(refused)")
    }
}

@Suite struct SDKParsingTests {
    @Test func aFinalEventWithoutItsBlankLineIsDispatchedAtTheEnd() {
        var p = SSEParser()
        #expect(p.feed(Array("data: {\"a\":1}\n\ndata: [DONE]".utf8)) == [SSEEvent(data: #"{"a":1}"#)])
        #expect(p.finish() == [SSEEvent(data: "[DONE]")])
        #expect(p.finish() == [], "nothing twice")
        var q = SSEParser()
        #expect(q.feed(Array("event: error\r\ndata: {\"type\":\"error\"}\r\n".utf8)) == [])
        #expect(q.finish() == [SSEEvent(event: "error", data: #"{"type":"error"}"#)])
        var r = SSEParser()
        _ = r.feed(Array("data: x\n\n: keep-alive\n".utf8))
        #expect(r.finish() == [], "a comment is no event")
    }

    @Test func anErrorEventEndingTheBodyIsClassifiedByItsType() throws {
        var p = SSEParser()
        var acc = AnthropicStreamAccumulator()
        let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"
        for e in p.feed(Array(body.utf8)) { try acc.handle(e) }
        do {
            for e in p.finish() { try acc.handle(e) }
            Issue.record("the error event was dropped")
        } catch {
            #expect(error.kind == .overloaded && error.retryable)
        }
    }

    @Test func openAIRefusalStreamedAndNot() throws {
        let stream = """
            data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"finish_reason":null}]}

            data: {"choices":[{"index":0,"delta":{"refusal":"I'm sorry, "}}]}

            data: {"choices":[{"index":0,"delta":{"refusal":"I can't help with that."}}]}

            data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

            data: [DONE]


            """
        var acc = OpenAIStreamAccumulator()
        for e in events(stream, splitEvery: 7) { try acc.handle(e) }
        let turn = try acc.finish()
        #expect(turn.refusal == "I'm sorry, I can't help with that." && turn.text.isEmpty)
        #expect(turn.stopReason == .refusal && turn.isRefusal)
        let json = try JSON.parse(#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"No."},"finish_reason":"stop"}]}"#)
        let plain = try OpenAIProtocol.decode(response: json)
        #expect(plain.refusal == "No." && plain.stopReason == .refusal)
        // A normal answer is no refusal, even with "refusal": null in it.
        let normal = try OpenAIProtocol.decode(response: try JSON.parse(#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null},"finish_reason":"stop"}]}"#))
        #expect(normal.refusal == nil && normal.stopReason == .endTurn && !normal.isRefusal)
        // It goes back as the SDKs send it.
        let body = OpenAIProtocol.request(model: "m", conversation: Conversation(system: "s", messages: [.user("x"), .assistant(turn), .user("y")]),
                                          tools: [], stream: true)
        let assistant = body["messages"]?.arrayValue?[2]
        #expect(assistant?["refusal"] == "I'm sorry, I can't help with that." && assistant?["content"] == .null)
        #expect(turn.json(attempts: 1)["refusal"] == "I'm sorry, I can't help with that.")
        #expect(!AssistantTurn(text: "hi").json(attempts: 1).serialized.contains("refusal"), "no refusal key when there is none")
    }

    @Test func onlyChoiceZeroIsUsedStreamedAndNot() throws {
        let stream = """
            data: {"choices":[{"index":1,"delta":{"role":"assistant","content":"WRONG"}},{"index":0,"delta":{"role":"assistant","content":"right"}}]}

            data: {"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"x","function":{"name":"finish","arguments":"{}"}}]},"finish_reason":"length"}]}

            data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

            data: {"choices":[{"index":1,"delta":{"content":" also wrong"},"finish_reason":"stop"}]}

            data: [DONE]


            """
        var acc = OpenAIStreamAccumulator()
        for e in events(stream, splitEvery: 1000) { try acc.handle(e) }
        let turn = try acc.finish()
        #expect(turn.text == "right" && turn.toolCalls.isEmpty && turn.stopReason == .endTurn, "\(turn)")
        let json = try JSON.parse(#"{"choices":[{"index":1,"message":{"role":"assistant","content":"WRONG"},"finish_reason":"length"},{"index":0,"message":{"role":"assistant","content":"right"},"finish_reason":"stop"}]}"#)
        let plain = try OpenAIProtocol.decode(response: json)
        #expect(plain.text == "right" && plain.stopReason == .endTurn)
        let none = try JSON.parse(#"{"choices":[{"index":1,"message":{"role":"assistant","content":"WRONG"}}]}"#)
        #expect(throws: ModelError.self) { try OpenAIProtocol.decode(response: none) }
    }

    /// Thinking and redacted_thinking blocks, with their signatures, as the API streamed them, go back
    /// byte for byte in the next request (the API rejects a changed signature).
    @Test func anthropicThinkingBlocksGoBackUnchanged() throws {
        let thinking = #"{"type":"thinking","thinking":"The user wants a listing.","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgx"}"#
        let redacted = #"{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"}"#
        let stream = """
            event: message_start
            data: {"type":"message_start","message":{"id":"msg_1","content":[],"usage":{"input_tokens":10,"output_tokens":1}}}

            event: content_block_start
            data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user wants "}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"a listing."}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgx"}}

            event: content_block_stop
            data: {"type":"content_block_stop","index":0}

            event: content_block_start
            data: {"type":"content_block_start","index":1,"content_block":\(redacted)}

            event: content_block_stop
            data: {"type":"content_block_stop","index":1}

            event: content_block_start
            data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"shell","input":{}}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"command\\": \\"ls\\"}"}}

            event: content_block_stop
            data: {"type":"content_block_stop","index":2}

            event: message_delta
            data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30}}

            event: message_stop
            data: {"type":"message_stop"}


            """
        var acc = AnthropicStreamAccumulator()
        for e in events(stream, splitEvery: 5) { try acc.handle(e) }
        let streamed = try acc.finish()
        let plain = try AnthropicProtocol.decode(response: try JSON.parse(
            #"{"type":"message","content":[\#(thinking),\#(redacted),{"type":"tool_use","id":"toolu_1","name":"shell","input":{"command":"ls"}}],"stop_reason":"tool_use","usage":{}}"#))
        let spec = try ModelSpec.parse("anthropic:m", baseURL: "http://127.0.0.1:1")
        for turn in [streamed, plain] {
            let conversation = Conversation(system: "s", messages: [.user("list"), .assistant(turn), .toolResults([ToolResult(callID: "toolu_1", content: "a.txt")])])
            let bytes = try HTTPModelProvider.body(spec: spec, conversation: conversation, tools: [])
            let text = String(decoding: bytes, as: UTF8.self)
            #expect(text.contains(#"{"role":"assistant","content":[\#(thinking),\#(redacted),{"type":"tool_use""#), "\(text)")
        }
    }
}
