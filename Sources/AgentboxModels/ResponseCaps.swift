import AgentboxCore

/// What one model answer may hold, streamed or not: the supervisor runs outside every cgroup, so a
/// server that streams without end, or a model that emits a thousand tool calls, must not grow its
/// memory or the run's work without bound. Past a cap the attempt fails (`response_too_large`, not
/// retried) with a message naming the cap.
public struct ResponseCaps: Sendable, Equatable {
    /// Bytes received for one answer (the SSE stream or the JSON body), whatever they hold.
    public var bytes = 16 << 20
    /// Characters of the answer's text.
    public var text = 4 << 20
    /// Tool calls in one answer (a run also answers at most `AgentSession.maxCallsPerTurn` of them).
    public var toolCalls = 256
    /// Bytes of one tool call's arguments.
    public var argumentBytes = 4 << 20

    public init() {}

    static func exceeded(_ what: String, host: String, provider: String) -> ModelError {
        ModelError(kind: .responseTooLarge, message: what, host: host, provider: provider)
    }

    /// Checks a whole answer.
    public func check(_ turn: AssistantTurn, host: String, provider: String) throws(ModelError) {
        if turn.text.utf8.count > text {
            throw ResponseCaps.exceeded("the answer's text passed \(text >> 20) MiB", host: host, provider: provider)
        }
        if turn.toolCalls.count > toolCalls {
            throw ResponseCaps.exceeded("the answer has \(turn.toolCalls.count) tool calls; at most \(toolCalls) are accepted",
                                        host: host, provider: provider)
        }
        if let big = turn.toolCalls.first(where: { $0.arguments.utf8.count > argumentBytes }) {
            throw ResponseCaps.exceeded("the arguments of tool call \(big.name) passed \(argumentBytes >> 20) MiB", host: host, provider: provider)
        }
    }
}
