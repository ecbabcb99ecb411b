import AgentboxCore

/// A provider-neutral conversation (docs/models.md): what the agent loop keeps, and what each
/// protocol encodes to its own request format and decodes its replies into.
public struct Conversation: Sendable {
    public var system: String
    public var messages: [Message]
    public init(system: String, messages: [Message] = []) {
        self.system = system
        self.messages = messages
    }
}

public enum Message: Sendable, Equatable {
    case user(String)
    case assistant(AssistantTurn)
    /// The results of the previous assistant turn's tool calls, one per call, in order.
    case toolResults([ToolResult])
}

/// A tool call as the model made it. `arguments` is the raw JSON text (OpenAI sends a string, which may
/// be invalid JSON); `parsed` is its parse, or why it is not usable.
public struct ToolCall: Sendable, Equatable {
    public var id: String
    public var name: String
    public var arguments: String

    public init(id: String, name: String, arguments: String) {
        self.id = id
        self.name = name
        self.arguments = arguments
    }

    /// The arguments as a JSON object, or a message for the model saying what is wrong with them.
    public var parsed: Result<JSON, ToolArgumentError> {
        let text = arguments.trimmingSpaces()
        if text.isEmpty { return .success(.object([])) }
        do {
            let json = try JSON.parse(text)
            guard case .object = json else {
                return .failure(ToolArgumentError(message: "the arguments of \(name) must be a JSON object, not \(json.typeName)"))
            }
            return .success(json)
        } catch {
            return .failure(ToolArgumentError(message: "the arguments of \(name) are not valid JSON (\(error)); send a JSON object"))
        }
    }
}

public struct ToolArgumentError: Error, Sendable, Equatable {
    public let message: String
}

public struct ToolResult: Sendable, Equatable {
    public var callID: String
    public var content: String
    public var isError: Bool
    public init(callID: String, content: String, isError: Bool = false) {
        self.callID = callID
        self.content = content
        self.isError = isError
    }
}

public enum StopReason: String, Sendable, Equatable {
    case endTurn = "end_turn"
    case toolUse = "tool_use"
    case maxTokens = "max_tokens"
    case stopSequence = "stop_sequence"
    case contentFilter = "content_filter"
    case refusal = "refusal"
    case pauseTurn = "pause_turn"
    case other = "other"
}

public struct Usage: Sendable, Equatable {
    public var inputTokens: Int = 0
    public var outputTokens: Int = 0
    public init(inputTokens: Int = 0, outputTokens: Int = 0) {
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
    }
    public var total: Int { inputTokens + outputTokens }

    public var json: JSON {
        .object([("input_tokens", .number(Double(inputTokens))), ("output_tokens", .number(Double(outputTokens))),
                 ("total_tokens", .number(Double(total)))])
    }
}

/// One assistant turn. `thinking` keeps Anthropic thinking blocks exactly as received, to send back.
public struct AssistantTurn: Sendable, Equatable {
    public var text: String = ""
    public var toolCalls: [ToolCall] = []
    public var thinking: [JSON] = []
    /// The model declined to answer and said why (OpenAI `message.refusal` / streamed `delta.refusal`);
    /// nil when it did not refuse. Such a turn has stop reason `refusal` (docs/models.md, "Refusals").
    public var refusal: String? = nil
    public var stopReason: StopReason = .endTurn
    public var usage = Usage()
    public init(text: String = "", toolCalls: [ToolCall] = [], thinking: [JSON] = [], refusal: String? = nil,
                stopReason: StopReason = .endTurn, usage: Usage = Usage()) {
        self.text = text
        self.toolCalls = toolCalls
        self.thinking = thinking
        self.refusal = refusal
        self.stopReason = stopReason
        self.usage = usage
    }

    /// Whether the model refused: a refusal text (OpenAI) or stop reason `refusal` (Anthropic, which
    /// gives no separate text).
    public var isRefusal: Bool { refusal != nil || stopReason == .refusal }

    /// The turn as `model check` prints it (contracts.md), with `refusal` when the model refused.
    public func json(attempts: Int) -> JSON {
        var fields: [(String, JSON)] = [
            ("text", .string(text)),
            ("tool_calls", .array(toolCalls.map { call in
                let args: JSON
                switch call.parsed {
                case let .success(value): args = value
                case .failure: args = .string(call.arguments)
                }
                return .object([("id", .string(call.id)), ("name", .string(call.name)), ("arguments", args)])
            })),
        ]
        if let refusal { fields.append(("refusal", .string(refusal))) }
        fields += [("stop_reason", .string(stopReason.rawValue)), ("usage", usage.json), ("attempts", .number(Double(attempts)))]
        return .object(fields)
    }
}

/// A tool offered to the model.
public struct ToolDefinition: Sendable {
    public var name: String
    public var description: String
    /// JSON schema of the arguments object.
    public var parameters: JSON
    public init(name: String, description: String, parameters: JSON) {
        self.name = name
        self.description = description
        self.parameters = parameters
    }
}
