import Testing
@testable import AgentboxCore
import AgentboxJournal
import AgentboxModels
@testable import AgentboxSandbox
@testable import AgentboxSupervisor

/// A host that records what the session does: no kernel, no sandbox, no model server.
final class RecordingHost: AgentSessionHost {
    var records: [(type: RecordType, data: JSON)] = []
    var sent: [AgentMessage] = []
    var modelCalls: [Conversation] = []
    var modelBusy = false
    var cancelled = 0
    var report = CgroupReport()
    var diskLow = false
    var feed: [String] = []
    var events: [AgentEvent] = []
    var warnings: [String] = []

    var critical: [Bool] = []
    var takenOver = false

    func journal(_ type: RecordType, _ data: JSON, critical: Bool) throws(AgentboxError) -> UInt64 {
        records.append((type, data))
        self.critical.append(critical)
        return UInt64(records.count)
    }
    func confirmOwnership() throws(AgentboxError) {
        if takenOver { throw AgentboxError(stage: "lease", "the run was taken over by another supervisor") }
    }
    /// Whether the last record of `type` was written as critical.
    func wasCritical(_ type: RecordType) -> Bool? { records.indices.last { records[$0].type == type }.map { critical[$0] } }
    func send(encoded: [UInt8]) {
        guard let json = try? JSON.parse(bytes: encoded), let m = try? AgentMessage(json: json) else {
            Issue.record("the session sent something that is not an agent message")
            return
        }
        sent.append(m)
    }
    func startModelCall(_ conversation: Conversation, tools: [ToolDefinition]) throws(AgentboxError) {
        modelCalls.append(conversation)
        modelBusy = true
    }
    func cancelModelCall() { cancelled += 1 }
    func cgroupReport() -> CgroupReport? { report }
    func journalDiskLow(reserve: UInt64) -> Bool { diskLow }
    func feedConfession(seq: UInt64, severity: String, category: String, summary: String) throws(AgentboxError) {
        feed.append("\(severity)/\(category)")
    }
    func progress(_ event: AgentEvent) { events.append(event) }
    func warn(_ message: String) { warnings.append(message) }

    func types(_ t: RecordType) -> [JSON] { records.filter { $0.type == t }.map(\.data) }
    var confessions: [String] {
        types(.confession).map { "\($0["severity"]?.stringValue ?? "")/\($0["category"]?.stringValue ?? "")" }
    }
}

/// The agent protocol's rules (docs/agent.md) driven message by message, as the loop in the sandbox and
/// the model gateway would: what is journaled, what the sandbox is told, how the run ends.
@Suite struct AgentSessionTests {
    static let key = "sk-test-key-0123456789abcdefghij"

    func make(budget: Budget = Budget()) -> (AgentSession, RecordingHost) {
        let host = RecordingHost()
        var spec = try! ModelSpec.parse("openai:gpt-4o", baseURL: "http://127.0.0.1:9/v1")
        spec.apiKey = AgentSessionTests.key
        let task = AgentTask(name: "t", task: "fix it", model: spec, budget: budget, prices: PriceTable())
        let policy = SandboxPolicy(profile: Profile(name: "test"), workspace: "/w", workdir: "/w", mounts: [], limits: Limits(),
                                   env: [], network: .none, strictLimits: false, hostname: "agentbox")
        return (AgentSession(host: host, runID: "r1", task: task, policy: policy, grace: 1, system: "system"), host)
    }

    func call(_ name: String, _ args: String, id: String) -> ToolCall { ToolCall(id: id, name: name, arguments: args) }

    /// The model answers the pending call with `calls` (or text only).
    func answer(_ s: AgentSession, _ host: RecordingHost, _ calls: [ToolCall], text: String = "") throws {
        #expect(host.modelBusy, "a model call must be pending")
        host.modelBusy = false
        let turn = AssistantTurn(text: text, toolCalls: calls, usage: Usage(inputTokens: 10, outputTokens: 5))
        try s.modelDone(ModelCallOutcome(result: .success(turn), attempts: [], request: nil))
    }

    /// The loop runs call `id` in the sandbox and reports `content`.
    func run(_ s: AgentSession, _ host: RecordingHost, id: String, content: String, isError: Bool = false) throws {
        try s.received(.toolStart(id: id))
        guard case .go? = host.sent.last else { Issue.record("expected go, got \(String(describing: host.sent.last))"); return }
        try s.received(.toolDone(.init(id: id, content: content, isError: isError, facts: [("exit_code", 0)])))
    }

    @Test func aTurnRunsItsCallsAndFinishEndsTheRun() throws {
        let (s, host) = make()
        try s.received(.next)
        #expect(host.modelCalls.count == 1 && host.types(.modelRequest).count == 1)
        try answer(s, host, [call("shell", #"{"command":"make test"}"#, id: "c1"), call("finish", #"{"status":"success","summary":"done"}"#, id: "c2")])
        #expect(host.sent.last == .turn([.init(id: "c1", name: "shell"), .init(id: "c2", name: "finish")]))
        try run(s, host, id: "c1", content: "exit code 0\nok")
        try s.received(.toolStart(id: "c2"))
        #expect(host.sent.last == .done)
        try s.received(.next)
        #expect(host.sent.last == .end && host.modelCalls.count == 1)
        #expect(s.ending == .finished(status: "success", summary: "done"))
        #expect(host.types(.toolCall).count == 2 && host.types(.toolDone).count == 2)
        // The next request would carry both results, matched to their calls.
        guard case let .toolResults(results)? = s.conversation.messages.last else { Issue.record("no tool results"); return }
        #expect(results.map(\.callID) == ["c1", "c2"])
        let outcome = try s.conclude(SandboxResult(termination: .exited(0), report: CgroupReport(), oomKilled: false, landlockABI: 7, elapsed: 1))
        #expect(outcome.state == "finished" && outcome.exitCode == 0 && outcome.summary == "done")
        #expect(host.types(.runEnded).first?["state"]?.stringValue == "finished")
    }

    /// docs/journal.md, "Durability": a response that calls tools is made durable with its first
    /// `tool.call` (one fdatasync for both); one without calls is durable by itself.
    @Test func aResponseWithToolCallsIsSyncedWithItsFirstCall() throws {
        let (s, host) = make()
        try s.received(.next)
        try answer(s, host, [call("shell", #"{"command":"true"}"#, id: "c1")])
        #expect(host.wasCritical(.modelResponse) == false)
        try s.received(.toolStart(id: "c1"))
        #expect(host.records.last?.type == .toolCall && host.wasCritical(.toolCall) == true)
        try s.received(.toolDone(.init(id: "c1", content: "ok", isError: false, facts: [("exit_code", 0)])))
        #expect(host.wasCritical(.toolDone) == true)
        try s.received(.next)
        try answer(s, host, [], text: "thinking aloud")
        #expect(host.wasCritical(.modelResponse) == true)
    }

    /// A supervisor taken over while its `tool.call` was being synced does not start the tool.
    @Test func aTakenOverOwnerDoesNotStartTheTool() throws {
        let (s, host) = make()
        try s.received(.next)
        try answer(s, host, [call("shell", #"{"command":"rm -rf build"}"#, id: "c1")])
        let sentBefore = host.sent.count
        host.takenOver = true
        #expect(throws: AgentboxError.self) { try s.received(.toolStart(id: "c1")) }
        #expect(host.types(.toolCall).count == 1, "the call is journaled (the new owner answers it as interrupted)")
        #expect(host.sent.count == sentBefore, "nothing was sent to the sandbox: \(host.sent.suffix(2))")
    }

    @Test func theSameCallAndResultWarnsAtThreeAndStopsAtFive() throws {
        let (s, host) = make()
        for i in 1...5 {
            try s.received(.next)
            try answer(s, host, [call("shell", #"{"command":"echo same"}"#, id: "c\(i)")])
            try run(s, host, id: "c\(i)", content: "exit code 0\nsame")
        }
        #expect(host.confessions == ["warning/stuck_loop", "blocker/stuck_loop"])
        #expect(host.types(.toolDone)[2]["content"]?.stringValue?.contains("3 times in a row") == true)
        try s.received(.next)
        #expect(host.sent.last == .end && host.modelCalls.count == 5)
        guard case .aborted? = s.ending else { Issue.record("\(String(describing: s.ending))"); return }
        #expect(host.feed == ["warning/stuck_loop", "blocker/stuck_loop"])
    }

    @Test func aDifferentResultResetsTheStuckCount() throws {
        let (s, host) = make()
        for i in 1...6 {
            try s.received(.next)
            try answer(s, host, [call("shell", #"{"command":"date"}"#, id: "c\(i)")])
            try run(s, host, id: "c\(i)", content: "exit code 0\n\(i % 2)")
        }
        #expect(host.confessions.isEmpty && s.ending == nil)
    }

    @Test func turnsWithoutToolsAreRemindedTwiceThenStopped() throws {
        let (s, host) = make()
        try s.received(.next)
        for _ in 0..<3 {
            try answer(s, host, [], text: "I think it works.")
            #expect(host.sent.last == .turn([]))
            try s.received(.next)
        }
        #expect(host.types(.reminder).count == 2)
        #expect(host.sent.last == .end)
        guard case let .aborted(why)? = s.ending else { Issue.record("not stopped"); return }
        #expect(why.contains("reminders"))
    }

    @Test func aResultForACallThatIsNotRunningIsAProtocolViolation() throws {
        let (s, host) = make()
        try s.received(.next)
        try answer(s, host, [call("shell", #"{"command":"ls"}"#, id: "c1")])
        #expect(throws: AgentboxError.self) { try s.received(.toolDone(.init(id: "c1", content: "x", isError: false))) }
        #expect(throws: AgentboxError.self) { try s.received(.toolStart(id: "other")) }
        #expect(throws: AgentboxError.self) { try s.received(.go(args: [:])) }
    }

    @Test func nextBeforeEveryCallIsAnsweredIsAProtocolViolation() throws {
        let (s, host) = make()
        try s.received(.next)
        try answer(s, host, [call("shell", #"{"command":"ls"}"#, id: "c1")])
        #expect(throws: AgentboxError.self) { try s.received(.next) }
    }

    @Test func callsPastThePerTurnBoundAreRefused() throws {
        let (s, host) = make()
        try s.received(.next)
        let n = AgentSession.maxCallsPerTurn + 2
        try answer(s, host, (0..<n).map { call("confess", #"{"severity":"info","category":"c","summary":"s\#($0)"}"#, id: "c\($0)") })
        for i in 0..<n { try s.received(.toolStart(id: "c\(i)")) }
        let refused = host.types(.toolDone).filter { $0["refused"]?.stringValue == "calls_per_turn" }
        #expect(refused.count == 2 && host.types(.confession).count == AgentSession.maxCallsPerTurn)
    }

    @Test func badArgumentsAreAnsweredWithAnErrorTheModelCanFix() throws {
        let (s, host) = make()
        try s.received(.next)
        try answer(s, host, [call("shell", #"{"timeout_s":"soon"}"#, id: "c1"), call("write_file", "{not json", id: "c2"),
                             call("nosuch", "{}", id: "c3"), call("finish", #"{"status":"maybe","summary":"s"}"#, id: "c4")])
        for i in 1...4 {
            try s.received(.toolStart(id: "c\(i)"))
            #expect(host.sent.last == .done, "call c\(i) must be answered by the supervisor")
        }
        let done = host.types(.toolDone)
        #expect(done.allSatisfy { $0["is_error"]?.boolValue == true })
        #expect(done[0]["content"]?.stringValue?.contains("command is required") == true)
        #expect(done[2]["content"]?.stringValue?.contains("there is no tool named nosuch") == true)
        #expect(done[3]["content"]?.stringValue?.contains("must be one of") == true)
        #expect(s.ending == nil)
    }

    @Test func theKeyInAToolResultIsRedactedAndConfessed() throws {
        let (s, host) = make()
        try s.received(.next)
        try answer(s, host, [call("read_file", #"{"path":".env"}"#, id: "c1")])
        try run(s, host, id: "c1", content: "OPENAI_API_KEY=\(AgentSessionTests.key)\n")
        let content = host.types(.toolDone)[0]["content"]?.stringValue ?? ""
        #expect(!content.contains(AgentSessionTests.key) && content.contains("[redacted by agentbox"))
        #expect(host.confessions == ["warning/secrets"])
    }

    @Test func theToolCallBudgetStopsTheRun() throws {
        var budget = Budget()
        budget.maxToolCalls = 1
        let (s, host) = make(budget: budget)
        try s.received(.next)
        try answer(s, host, [call("shell", #"{"command":"a"}"#, id: "c1"), call("shell", #"{"command":"b"}"#, id: "c2")])
        try run(s, host, id: "c1", content: "exit code 0")
        try s.received(.toolStart(id: "c2"))
        #expect(host.sent.last == .done)
        try s.received(.next)
        #expect(host.sent.last == .end && host.types(.budget).count == 1)
        let outcome = try s.conclude(SandboxResult(termination: .exited(0), report: CgroupReport(), oomKilled: false, landlockABI: 7, elapsed: 1))
        #expect(outcome.state == "budget" && outcome.exitCode == 3)
    }

    @Test func aStopSignalSkipsTheRestOfTheTurnAndEndsWith75() throws {
        let (s, host) = make()
        try s.received(.next)
        try answer(s, host, [call("shell", #"{"command":"a"}"#, id: "c1"), call("shell", #"{"command":"b"}"#, id: "c2")])
        try s.received(.toolStart(id: "c1"))
        s.stop(signal: 15)
        #expect(host.cancelled == 1)
        try s.received(.toolDone(.init(id: "c1", content: "exit code 0", isError: false)))
        try s.received(.toolStart(id: "c2"))
        #expect(host.sent.last == .done && host.types(.toolDone).last?["skipped"]?.boolValue == true)
        try s.received(.next)
        #expect(host.sent.last == .end)
        let outcome = try s.conclude(SandboxResult(termination: .exited(0), report: CgroupReport(), oomKilled: false, landlockABI: 7, elapsed: 1))
        #expect(outcome.state == "stopped" && outcome.exitCode == 75)
    }

    @Test func anOOMKillDuringAToolIsToldToTheModelAndConfessed() throws {
        let (s, host) = make()
        try s.received(.next)
        try answer(s, host, [call("shell", #"{"command":"big"}"#, id: "c1")])
        host.report.oomKills = 1
        try run(s, host, id: "c1", content: "killed by signal 9")
        #expect(host.types(.limit).first?["kind"]?.stringValue == "oom")
        #expect(host.types(.toolDone)[0]["content"]?.stringValue?.contains("use less memory") == true)
        #expect(host.confessions == ["warning/limits"])
    }

    @Test func aLowDiskStopsTheRunBeforeTheNextModelCall() throws {
        let (s, host) = make()
        host.diskLow = true
        try s.received(.next)
        #expect(host.modelCalls.isEmpty && host.sent.last == .end)
        #expect(host.types(.limit).first?["kind"]?.stringValue == "journal_disk")
    }

    @Test func aFailedModelCallIsConfessedAndEndsTheRun() throws {
        let (s, host) = make()
        try s.received(.next)
        host.modelBusy = false
        let error = ModelError(kind: .auth, status: 401, message: "bad key", host: "127.0.0.1", provider: "openai")
        try s.modelDone(ModelCallOutcome(result: .failure(error), attempts: [], request: nil))
        #expect(host.sent.last == .end && host.types(.modelError).count == 1 && host.confessions == ["blocker/model"])
        let outcome = try s.conclude(SandboxResult(termination: .exited(0), report: CgroupReport(), oomKilled: false, landlockABI: 7, elapsed: 1))
        #expect(outcome.state == "aborted" && outcome.exitCode == 1)
    }
}
