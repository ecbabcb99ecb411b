import Glibc
import Testing
@testable import AgentboxCore
@testable import AgentboxSandbox

/// How the end of a sandbox's init becomes the result (`SandboxEnding.termination`, a pure function),
/// and the agent protocol's messages at both ends.
@Suite struct SandboxEndingTests {
    func ending(_ change: (inout SandboxEnding) -> Void) -> SandboxEnding {
        var e = SandboxEnding()
        change(&e)
        return e
    }

    @Test func theCommandsOwnStatusWins() throws {
        #expect(try ending { $0.commandStarted = true; $0.commandStatus = 3 << 8 }.termination(oomKills: 0) == .exited(3))
        #expect(try ending { $0.commandStarted = true; $0.commandStatus = SIGSEGV }.termination(oomKills: 0) == .signaled(SIGSEGV))
        // A stop signal forwarded to a command that then exited on its own: the exit status is the answer.
        #expect(try ending { $0.commandStarted = true; $0.stopSignal = SIGTERM; $0.commandStatus = 0 }.termination(oomKills: 0) == .exited(0))
    }

    @Test func aTimeoutIsATimeoutWhateverTheInitSaid() throws {
        #expect(try ending { $0.commandStarted = true; $0.timedOut = true; $0.commandStatus = SIGKILL }.termination(oomKills: 0) == .timedOut)
    }

    @Test func aCommandThatCouldNotBeExecutedIs127Or126() throws {
        #expect(try ending { $0.execFailure = (ENOENT, "/nope") }.termination(oomKills: 0) == .notExecuted(code: 127, reason: "/nope: command not found in the sandbox"))
        guard case let .notExecuted(code, reason) = try ending({ $0.execFailure = (EACCES, "/etc") }).termination(oomKills: 0) else {
            Issue.record("not notExecuted")
            return
        }
        #expect(code == 126 && reason.contains("/etc: cannot execute"))
    }

    @Test func anInitThatDiedWithTheCommandIsItsSignal() throws {
        #expect(try ending { $0.commandStarted = true; $0.initStatus = SIGKILL }.termination(oomKills: 1) == .signaled(SIGKILL))
        #expect(try ending { $0.commandStarted = true; $0.stopSignal = SIGINT; $0.initStatus = SIGKILL }.termination(oomKills: 0) == .signaled(SIGINT))
    }

    @Test func anInitThatEndedBeforeTheCommandIsASetupError() {
        #expect { try ending { $0.initStatus = 125 << 8 }.termination(oomKills: 0) } throws: {
            ($0 as? AgentboxError)?.message == "agentbox-init exited with status 125 before starting the command"
        }
        #expect { try ending { $0.initStatus = SIGKILL }.termination(oomKills: 1) } throws: {
            ($0 as? AgentboxError)?.hint.contains("memory limit is too low") == true
        }
        #expect { try ending { $0.setupFailure = AgentboxError(stage: "sandbox setup: mount", "EPERM"); $0.commandStatus = 0 }.termination(oomKills: 0) } throws: {
            ($0 as? AgentboxError)?.stage == "sandbox setup: mount"
        }
    }
}

@Suite struct AgentMessageTests {
    @Test func everyMessageSurvivesTheWire() throws {
        let messages: [AgentMessage] = [
            .next, .toolStart(id: "c1"), .done, .end, .go(args: ["command": "ls"]),
            .turn([.init(id: "a", name: "shell"), .init(id: "b", name: "finish")]), .turn([]),
            .toolDone(.init(id: "c1", content: "exit code 0\n\u{0}\u{2028}é", isError: false, facts: [("exit_code", 0), ("truncated", false)])),
        ]
        for m in messages {
            var assembler = AgentWire.Assembler()
            var decoded: AgentMessage? = nil
            for p in AgentWire.packets(encoded: m.encoded) {
                if let json = try assembler.add(p[...]) { decoded = try AgentMessage(json: json) }
            }
            #expect(decoded == m)
        }
    }

    @Test func malformedMessagesAreRefusedWithTheReason() {
        func problem(_ json: JSON) -> String? {
            do { _ = try AgentMessage(json: json); return nil } catch { return error.description }
        }
        #expect(problem(["t": "tool_start"]) == "a tool_start without an id")
        #expect(problem(["t": "tool_done", "id": "x", "content": 3, "is_error": false])?.contains("string content") == true)
        #expect(problem(["t": "tool_done", "id": "x", "content": "", "is_error": false, "exit_code": "zero"]) == "a tool result whose exit_code is a string")
        #expect(problem(["t": "turn", "calls": [["id": "x"]]]) == "a turn call without an id and a name")
        #expect(problem(["t": "launch"])?.contains("unknown message") == true)
        #expect(problem([:])?.contains("without a type") == true)
    }

    @Test func theToolNamesAreTheDefinitionsNames() {
        #expect(Set(BuiltinTool.allCases.map(\.rawValue)) == ["shell", "read_file", "write_file", "edit_file", "confess", "finish"])
        #expect(BuiltinTool.allCases.filter(\.runsInSandbox) == [.shell, .readFile, .writeFile, .editFile])
    }
}
