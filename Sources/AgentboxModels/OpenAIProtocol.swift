import AgentboxCore

/// OpenAI Chat Completions (`POST {base}/chat/completions`), also spoken by vLLM, llama.cpp, Ollama,
/// LM Studio, OpenRouter and LiteLLM. Wire facts: ../shared/brief/protocols.md.
public enum OpenAIProtocol {
    public static func request(model: String, conversation: Conversation, tools: [ToolDefinition], stream: Bool,
                               maxTokens: Int? = nil) -> JSON {
        var messages: [JSON] = [.object([("role", "system"), ("content", .string(conversation.system))])]
        for m in conversation.messages {
            switch m {
            case let .user(text):
                messages.append(.object([("role", "user"), ("content", .string(text))]))
            case let .assistant(turn):
                var fields: [(String, JSON)] = [("role", "assistant"), ("content", turn.text.isEmpty ? .null : .string(turn.text))]
                if let refusal = turn.refusal { fields.append(("refusal", .string(refusal))) }  // as the SDKs send it back
                if !turn.toolCalls.isEmpty {
                    fields.append(("tool_calls", .array(turn.toolCalls.map { call in
                        .object([("id", .string(call.id)), ("type", "function"),
                                 ("function", .object([("name", .string(call.name)), ("arguments", .string(call.arguments))]))])
                    })))
                }
                messages.append(.object(fields))
            case let .toolResults(results):
                for r in results {
                    // Chat Completions has no error flag: say it in the content.
                    messages.append(.object([("role", "tool"), ("tool_call_id", .string(r.callID)),
                                             ("content", .string(r.isError ? "ERROR: " + r.content : r.content))]))
                }
            }
        }
        var body: [(String, JSON)] = [("model", .string(model)), ("messages", .array(messages))]
        if !tools.isEmpty {
            body.append(("tools", .array(tools.map { t in
                .object([("type", "function"), ("function", .object([("name", .string(t.name)), ("description", .string(t.description)),
                                                                     ("parameters", t.parameters)]))])
            })))
            body.append(("tool_choice", "auto"))
        }
        if let maxTokens { body.append(("max_tokens", .number(Double(maxTokens)))) }
        if stream {
            body.append(("stream", true))
            body.append(("stream_options", .object([("include_usage", true)])))
        }
        return .object(body)
    }

    static func stopReason(_ finish: String?) -> StopReason {
        switch finish {
        case "stop": return .endTurn
        case "tool_calls", "function_call": return .toolUse
        case "length": return .maxTokens
        case "content_filter": return .contentFilter
        default: return .other
        }
    }

    static func usage(_ json: JSON?) -> Usage? {
        guard let u = json, case .object = u else { return nil }
        return Usage(inputTokens: u["prompt_tokens"]?.intValue ?? 0, outputTokens: u["completion_tokens"]?.intValue ?? 0)
    }

    /// Whether a choice is the one agentbox uses: `index` 0 (a server may send several, e.g. for `n` > 1;
    /// the SDKs' `choices[0]`). A choice without an index counts as its position.
    static func isFirst(_ choice: JSON, position: Int) -> Bool {
        (choice["index"]?.intValue ?? position) == 0
    }

    /// The refusal text of a message or delta, nil when there is none (absent, null or empty).
    static func refusal(_ json: JSON?) -> String? {
        guard let text = json?["refusal"]?.stringValue, !text.isEmpty else { return nil }
        return text
    }

    /// A refusal ends the turn as `refusal` (OpenAI says `stop`), unless a more telling reason came.
    static func stopReason(_ finish: String?, refusal: String?) -> StopReason {
        let reason = stopReason(finish)
        return refusal != nil && (reason == .endTurn || reason == .other) ? .refusal : reason
    }

    /// A non-streamed answer.
    public static func decode(response json: JSON, host: String = "") throws(ModelError) -> AssistantTurn {
        if let error = json["error"], error != .null {
            throw ModelError.fromStreamError(json, provider: "openai", host: host)
        }
        let choices = json["choices"]?.arrayValue ?? []
        guard let choice = choices.indices.first(where: { isFirst(choices[$0], position: $0) }).map({ choices[$0] }),
              let message = choice["message"] else {
            throw ModelError(kind: .protocolViolation, message: "the answer has no choice with index 0 and a message", host: host, provider: "openai")
        }
        var turn = AssistantTurn()
        turn.text = message["content"]?.stringValue ?? ""
        turn.refusal = refusal(message)
        for (i, call) in (message["tool_calls"]?.arrayValue ?? []).enumerated() {
            let function = call["function"]
            turn.toolCalls.append(ToolCall(id: call["id"]?.stringValue ?? "call_\(i)", name: function?["name"]?.stringValue ?? "",
                                           arguments: function?["arguments"]?.stringValue ?? function?["arguments"]?.serialized ?? ""))
        }
        turn.stopReason = stopReason(choice["finish_reason"]?.stringValue, refusal: turn.refusal)
        turn.usage = usage(json["usage"]) ?? Usage()
        return turn
    }
}

/// Builds an assistant turn from a Chat Completions stream, chunk by chunk.
public struct OpenAIStreamAccumulator: Sendable {
    struct Slot { var index: Int; var id: String; var name: String; var arguments: String }
    var text = ""
    var refusal = ""
    var slots: [Slot] = []
    var finishReason: String? = nil
    var usage: Usage? = nil
    public private(set) var done = false
    let host: String

    public init(host: String = "") { self.host = host }

    /// Handles one SSE event (`data: {...}` or `data: [DONE]`).
    public mutating func handle(_ event: SSEEvent) throws(ModelError) {
        let data = event.data
        if data == "[DONE]" { done = true; return }
        let chunk: JSON
        do { chunk = try JSON.parse(data) } catch {
            throw ModelError(kind: .protocolViolation, message: "a stream chunk is not JSON: \(error)", host: host, provider: "openai")
        }
        if let e = chunk["error"], e != .null { throw ModelError.fromStreamError(chunk, provider: "openai", host: host) }
        if let u = OpenAIProtocol.usage(chunk["usage"]) { usage = u }
        for (position, choice) in (chunk["choices"]?.arrayValue ?? []).enumerated() {
            // Only choice 0 is used; the deltas of other choices (`n` > 1) are not this turn's.
            guard OpenAIProtocol.isFirst(choice, position: position) else { continue }
            if let f = choice["finish_reason"]?.stringValue { finishReason = f }
            guard let delta = choice["delta"] else { continue }
            if let t = delta["content"]?.stringValue { text += t }
            if let r = delta["refusal"]?.stringValue { refusal += r }
            for fragment in delta["tool_calls"]?.arrayValue ?? [] {
                let index = fragment["index"]?.intValue ?? 0
                let id = fragment["id"]?.stringValue ?? ""
                let function = fragment["function"]
                // Group by index; a new non-empty id at an index in use opens a new slot (Ollama reuses 0).
                var slotIndex = slots.lastIndex { $0.index == index }
                if let s = slotIndex, !id.isEmpty, !slots[s].id.isEmpty, slots[s].id != id { slotIndex = nil }
                if slotIndex == nil {
                    slots.append(Slot(index: index, id: id, name: "", arguments: ""))
                    slotIndex = slots.count - 1
                }
                if !id.isEmpty { slots[slotIndex!].id = id }
                if let n = function?["name"]?.stringValue, !n.isEmpty { slots[slotIndex!].name += n }
                if let a = function?["arguments"]?.stringValue { slots[slotIndex!].arguments += a }
            }
        }
    }

    /// The turn, once the stream ended properly; a stream cut short is a failed attempt.
    public func finish() throws(ModelError) -> AssistantTurn {
        guard finishReason != nil || done else {
            throw ModelError(kind: .incompleteStream, message: "the stream ended before finish_reason and [DONE]", host: host, provider: "openai")
        }
        var turn = AssistantTurn()
        turn.text = text
        turn.refusal = refusal.isEmpty ? nil : refusal
        turn.toolCalls = slots.enumerated().map { i, s in
            ToolCall(id: s.id.isEmpty ? "call_\(i)" : s.id, name: s.name, arguments: s.arguments)
        }
        turn.stopReason = OpenAIProtocol.stopReason(finishReason, refusal: turn.refusal)
        if turn.stopReason == .other && !turn.toolCalls.isEmpty { turn.stopReason = .toolUse }
        turn.usage = usage ?? Usage()
        return turn
    }
}
