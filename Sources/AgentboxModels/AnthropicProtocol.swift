import AgentboxCore

/// Anthropic Messages (`POST {base}/v1/messages`). Wire facts: ../shared/brief/protocols.md.
public enum AnthropicProtocol {
    public static let version = "2023-06-01"

    /// The request body. Fails when a tool_use would go out without its tool_result in the very next
    /// message (the API rejects that with 400; a resumed run must never send it).
    public static func request(model: String, conversation: Conversation, tools: [ToolDefinition], stream: Bool,
                               maxTokens: Int) throws(ModelError) -> JSON {
        var messages: [JSON] = []
        let list = conversation.messages
        for (i, m) in list.enumerated() {
            switch m {
            case let .user(text):
                messages.append(.object([("role", "user"), ("content", .string(text))]))
            case let .assistant(turn):
                var blocks: [JSON] = turn.thinking
                if !turn.text.isEmpty { blocks.append(.object([("type", "text"), ("text", .string(turn.text))])) }
                for call in turn.toolCalls {
                    let input: JSON
                    switch call.parsed {
                    case let .success(v): input = v
                    case .failure: input = .object([])  // the model gets an error result for it
                    }
                    blocks.append(.object([("type", "tool_use"), ("id", .string(call.id)), ("name", .string(call.name)), ("input", input)]))
                }
                if blocks.isEmpty { blocks.append(.object([("type", "text"), ("text", "(no content)")])) }
                messages.append(.object([("role", "assistant"), ("content", .array(blocks))]))
                if !turn.toolCalls.isEmpty {
                    let answered: Set<String>
                    if i + 1 < list.count, case let .toolResults(results) = list[i + 1] { answered = Set(results.map(\.callID)) } else { answered = [] }
                    let missing = turn.toolCalls.map(\.id).filter { !answered.contains($0) }
                    if !missing.isEmpty {
                        throw ModelError(kind: .badConversation,
                                         message: "tool_use \(missing.joined(separator: ", ")) has no tool_result in the next message",
                                         provider: "anthropic")
                    }
                }
            case let .toolResults(results):
                messages.append(.object([("role", "user"), ("content", .array(results.map { r in
                    .object([("type", "tool_result"), ("tool_use_id", .string(r.callID)), ("content", .string(r.content)),
                             ("is_error", .bool(r.isError))])
                }))]))
            }
        }
        var body: [(String, JSON)] = [("model", .string(model)), ("max_tokens", .number(Double(maxTokens)))]
        if !conversation.system.isEmpty { body.append(("system", .string(conversation.system))) }
        body.append(("messages", .array(messages)))
        if !tools.isEmpty {
            body.append(("tools", .array(tools.map { t in
                .object([("name", .string(t.name)), ("description", .string(t.description)), ("input_schema", t.parameters)])
            })))
        }
        if stream { body.append(("stream", true)) }
        return .object(body)
    }

    static func stopReason(_ s: String?) -> StopReason {
        guard let s else { return .other }
        return StopReason(rawValue: s) ?? .other
    }

    static func usage(_ u: JSON?) -> Usage {
        Usage(inputTokens: u?["input_tokens"]?.intValue ?? 0, outputTokens: u?["output_tokens"]?.intValue ?? 0)
    }

    /// A non-streamed answer.
    public static func decode(response json: JSON, host: String = "") throws(ModelError) -> AssistantTurn {
        if json["type"]?.stringValue == "error" { throw ModelError.fromStreamError(json, provider: "anthropic", host: host) }
        guard let content = json["content"]?.arrayValue else {
            throw ModelError(kind: .protocolViolation, message: "the answer has no content", host: host, provider: "anthropic")
        }
        var turn = AssistantTurn()
        for block in content {
            switch block["type"]?.stringValue {
            case "text": turn.text += block["text"]?.stringValue ?? ""
            case "tool_use":
                turn.toolCalls.append(ToolCall(id: block["id"]?.stringValue ?? "", name: block["name"]?.stringValue ?? "",
                                               arguments: (block["input"] ?? .object([])).serialized))
            case "thinking", "redacted_thinking": turn.thinking.append(block)
            default: break
            }
        }
        turn.stopReason = stopReason(json["stop_reason"]?.stringValue)
        turn.usage = usage(json["usage"])
        return turn
    }
}

/// Builds an assistant turn from a Messages stream, event by event.
public struct AnthropicStreamAccumulator: Sendable {
    struct Block {
        var type: String
        var start: JSON
        var text = ""
        var json = ""
        var thinking = ""
        var signature = ""
    }
    var blocks: [Int: Block] = [:]
    var order: [Int] = []
    var stop: String? = nil
    var usage = Usage()
    public private(set) var done = false
    let host: String

    public init(host: String = "") { self.host = host }

    public mutating func handle(_ event: SSEEvent) throws(ModelError) {
        let json: JSON
        do { json = try JSON.parse(event.data) } catch {
            throw ModelError(kind: .protocolViolation, message: "a stream event is not JSON: \(error)", host: host, provider: "anthropic")
        }
        let name = event.event ?? json["type"]?.stringValue ?? ""
        switch name {
        case "message_start":
            usage = AnthropicProtocol.usage(json["message"]?["usage"])
        case "content_block_start":
            let index = json["index"]?.intValue ?? order.count
            let block = json["content_block"] ?? .object([])
            var b = Block(type: block["type"]?.stringValue ?? "", start: block)
            if b.type == "text" { b.text = block["text"]?.stringValue ?? "" }
            if b.type == "thinking" {  // usually empty here, filled by deltas
                b.thinking = block["thinking"]?.stringValue ?? ""
                b.signature = block["signature"]?.stringValue ?? ""
            }
            blocks[index] = b
            order.append(index)
        case "content_block_delta":
            guard let index = json["index"]?.intValue, blocks[index] != nil, let delta = json["delta"] else { return }
            switch delta["type"]?.stringValue {
            case "text_delta": blocks[index]!.text += delta["text"]?.stringValue ?? ""
            case "input_json_delta": blocks[index]!.json += delta["partial_json"]?.stringValue ?? ""
            case "thinking_delta": blocks[index]!.thinking += delta["thinking"]?.stringValue ?? ""
            case "signature_delta": blocks[index]!.signature += delta["signature"]?.stringValue ?? ""
            default: break
            }
        case "message_delta":
            if let s = json["delta"]?["stop_reason"]?.stringValue { stop = s }
            if let out = json["usage"]?["output_tokens"]?.intValue { usage.outputTokens = out }
            if let input = json["usage"]?["input_tokens"]?.intValue, input > 0 { usage.inputTokens = input }
        case "message_stop":
            done = true
        case "error":
            throw ModelError.fromStreamError(json, provider: "anthropic", host: host)
        default:
            break  // ping and event types added later
        }
    }

    public func finish() throws(ModelError) -> AssistantTurn {
        guard done else {
            throw ModelError(kind: .incompleteStream, message: "the stream ended before message_stop", host: host, provider: "anthropic")
        }
        var turn = AssistantTurn()
        for index in order {
            guard let b = blocks[index] else { continue }
            switch b.type {
            case "text": turn.text += b.text
            case "tool_use":
                // partial_json joined per block; empty means {}.
                turn.toolCalls.append(ToolCall(id: b.start["id"]?.stringValue ?? "", name: b.start["name"]?.stringValue ?? "",
                                               arguments: b.json.isEmpty ? "{}" : b.json))
            case "thinking":
                turn.thinking.append(.object([("type", "thinking"), ("thinking", .string(b.thinking)), ("signature", .string(b.signature))]))
            case "redacted_thinking":
                turn.thinking.append(b.start)
            default: break
            }
        }
        turn.stopReason = AnthropicProtocol.stopReason(stop)
        turn.usage = usage
        return turn
    }
}
