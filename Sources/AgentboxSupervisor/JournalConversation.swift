import AgentboxCore
import AgentboxJournal
import AgentboxModels

/// An agent run's conversation rebuilt from its journal alone (docs/journal.md): what `resume` starts
/// from, and the proof that the journal is enough. For every model call it gives the conversation as it
/// was sent and the size/CRC-32C the supervisor recorded for that request.
public enum JournalConversation {
    public struct Request {
        public var step: Int
        public var conversation: Conversation
        /// (bytes, crc32c) as recorded in `model.response`; nil for replay runs.
        public var recorded: (bytes: Int, crc32c: UInt32)?
    }

    public struct RebuildError: Error, CustomStringConvertible {
        public let description: String
    }

    public static func requests(_ records: [JournalRecord]) throws(RebuildError) -> [Request] {
        try walk(records, keepRequests: true).requests
    }

    /// Where a run stands at the end of its journal: what `resume` continues from.
    public struct Tail {
        /// Every request made, as above.
        public var requests: [Request]
        /// The conversation through the last assistant turn (reminders and compaction applied).
        public var conversation: Conversation
        /// The last assistant turn, when its results have not gone to a request yet.
        public var lastTurn: AssistantTurn?
        /// The results recorded for `lastTurn`'s calls, in order (a prefix of its calls).
        public var results: [ToolResult]
        /// A call journaled as started (`tool.call`) whose result never came: it was running.
        public var inFlight: ToolCall?
        /// Usage of each model response, and the number of tool calls made (for the budgets).
        public var usages: [Usage]
        public var toolCalls: Int
        /// Reminders since the last turn with a tool call.
        public var reminders: Int
        /// The stuck-loop rule's state: the last call and result (`call_key`) and how many times in a row.
        public var callKey: String
        public var repeats: Int
    }

    /// The journal's records walked once: where the run stands, and with `keepRequests` every request
    /// (each a copy of the conversation then: quadratic in the run's length, so only when asked).
    public static func walk(_ records: [JournalRecord], keepRequests: Bool = false) throws(RebuildError) -> Tail {
        guard let start = records.first(where: { $0.kind == .runStarted }), start.data["kind"]?.stringValue == "run",
              let system = start.data["system_prompt"]?.stringValue, let task = start.data["task"]?.stringValue else {
            throw RebuildError(description: "not an agent run's journal (no run.started of kind run)")
        }
        var conversation = Conversation(system: system, messages: [.user(task)])
        var pending: [ToolResult] = []
        var out: [Request] = []
        var lastTurn: AssistantTurn? = nil
        var started: [String: ToolCall] = [:]
        var usages: [Usage] = []
        var toolCalls = 0
        var reminders = 0
        var callKey = ""
        var repeats = 0
        func flush() {
            if !pending.isEmpty { conversation.messages.append(.toolResults(pending)) }
            pending = []
            lastTurn = nil
            started = [:]
        }
        for r in records {
            switch r.kind {
            case .toolDone?:
                guard let id = r.data["id"]?.stringValue else { throw RebuildError(description: "seq \(r.seq): tool.done without an id") }
                pending.append(ToolResult(callID: id, content: r.data["content"]?.stringValue ?? "", isError: r.data["is_error"]?.boolValue ?? false))
                started[id] = nil
                if let key = r.data["call_key"]?.stringValue, let n = r.data["repeats"]?.intValue { (callKey, repeats) = (key, n) }
            case .toolCall?:
                toolCalls += 1
                if let id = r.data["id"]?.stringValue, let call = lastTurn?.toolCalls.first(where: { $0.id == id }) { started[id] = call }
            case .reminder?:
                flush()
                reminders += 1
                conversation.messages.append(.user(r.data["text"]?.stringValue ?? ""))
            case .contextCompacted?:
                flush()
                let ids = Set(r.data["elided"]?.arrayValue?.compactMap(\.stringValue) ?? [])
                let rule = Compactor(limit: r.data["limit"]?.intValue ?? 0, target: r.data["target"]?.intValue)
                for i in conversation.messages.indices {
                    guard case var .toolResults(results) = conversation.messages[i] else { continue }
                    for j in results.indices where ids.contains(results[j].callID) { results[j].content = rule.shorten(results[j].content) }
                    conversation.messages[i] = .toolResults(results)
                }
            case .modelRequest?:
                flush()
            case .modelResponse?:
                let turnJSON = r.data["turn"] ?? .null
                var turn = AssistantTurn(text: turnJSON["text"]?.stringValue ?? "")
                for c in turnJSON["tool_calls"]?.arrayValue ?? [] {
                    turn.toolCalls.append(ToolCall(id: c["id"]?.stringValue ?? "", name: c["name"]?.stringValue ?? "",
                                                   arguments: c["arguments"]?.stringValue ?? ""))
                }
                turn.thinking = turnJSON["thinking"]?.arrayValue ?? []
                turn.stopReason = StopReason(rawValue: turnJSON["stop_reason"]?.stringValue ?? "") ?? .other
                turn.refusal = turnJSON["refusal"]?.stringValue
                let request = r.data["request"]
                let recorded: (Int, UInt32)? = request?["bytes"]?.intValue.flatMap { bytes in
                    request?["crc32c"]?.stringValue.flatMap { UInt32($0, radix: 16) }.map { (bytes, $0) }
                }
                if keepRequests { out.append(Request(step: r.data["step"]?.intValue ?? out.count + 1, conversation: conversation, recorded: recorded)) }
                conversation.messages.append(.assistant(turn))
                turn.usage = Usage(inputTokens: turnJSON["usage"]?["input_tokens"]?.intValue ?? 0, outputTokens: turnJSON["usage"]?["output_tokens"]?.intValue ?? 0)
                usages.append(turn.usage)
                if !turn.toolCalls.isEmpty { reminders = 0 }
                lastTurn = turn
            default: break
            }
        }
        return Tail(requests: out, conversation: conversation, lastTurn: lastTurn, results: pending, inFlight: started.values.first,
                    usages: usages, toolCalls: toolCalls, reminders: reminders, callKey: callKey, repeats: repeats)
    }
}
