import AgentboxJournal
import AgentboxModels
import AgentboxSupervisor
import AgentboxCore
import Foundation
import Testing

/// `agentbox run` end to end: the loop in a real sandbox, the gateway talking to the fake model server
/// (both protocols, scripted sessions in Tests/FakeModelServer), the journal, stop/kill/detach.
@Suite(.serialized) struct RunTests {
    static let server = try! FakeModelServer()

    func home() -> String {
        let dir = "/tmp/agentbox-home-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A workspace with a broken add.sh and its test (examples/hello-project with the bug put back).
    func brokenProject(owner: TestUser? = nil) -> String {
        let ws = TestEnv.workspace(owner: owner)
        _ = shell("cp '\(TestEnv.repoRoot)'/examples/hello-project/*.sh '\(ws)'/ && sed -i 's/+ \\$2/- $2/' '\(ws)/add.sh'")
        if let owner { _ = shell("chown -R \(owner.uid):\(owner.gid) '\(ws)'") }
        return ws
    }

    var env: [String: String] { ["OPENAI_API_KEY": FakeModelServer.key, "ANTHROPIC_API_KEY": FakeModelServer.key] }

    func agentRun(_ script: String, openai: Bool = true, home h: String, cwd: String? = nil, extra: [String] = [],
                  env more: [String: String] = [:]) -> RunResult {
        var e = env
        e["AGENTBOX_HOME"] = h
        for (k, v) in more { e[k] = v }
        let model = openai ? "openai:gpt-4o" : "anthropic:claude-sonnet-4-5"
        return run([TestEnv.agentbox, "run", "--model", model, "--base-url", Self.server.agent(script, openai: openai),
                    "--task", "fix the tests"] + extra, cwd: cwd ?? TestEnv.workspace(), env: e)
    }

    func ab(_ args: [String], home: String, env more: [String: String] = [:]) -> RunResult {
        run([TestEnv.agentbox] + args, cwd: "/tmp", env: ["AGENTBOX_HOME": home].merging(more) { $1 })
    }

    func records(_ ref: String, home: String) -> [[String: Any]] {
        ab(["logs", ref, "--json"], home: home).out.split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func inspect(_ ref: String, home: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(ab(["inspect", ref, "--json"], home: home).out.utf8)) as? [String: Any]) ?? [:]
    }

    func types(_ rs: [[String: Any]]) -> [String] { rs.compactMap { $0["type"] as? String } }
    func data(_ r: [String: Any]) -> [String: Any] { r["data"] as? [String: Any] ?? [:] }

    var violations: Comment { Comment(rawValue: Self.server.violationLog) }

    @Test(arguments: [true, false])
    func agentInspectsEditsTestsConfessesAndFinishes(openai: Bool) throws {
        let h = home()
        let ws = brokenProject()
        let r = agentRun("fix", openai: openai, home: h, cwd: ws, extra: ["--name", "fixer"])
        #expect(r.code == 0, "\(r)")
        #expect(Self.server.violationLog.isEmpty, violations)
        #expect(try String(contentsOfFile: ws + "/add.sh", encoding: .utf8).contains("$1 + $2"), "the edit landed in the workspace")
        #expect(r.err.contains("finished (success)") && r.err.contains("step 7"), "progress on stderr: \(r.err)")

        let rs = records("fixer", home: h)
        let t = types(rs)
        #expect(t.first == "journal.opened" && t.last == "run.ended")
        #expect(rs.map { $0["seq"] as? Int ?? 0 } == Array(1...rs.count))
        #expect(t.filter { $0 == "model.response" }.count == 7)
        // Each step: the model's response is on record before its tool call, and the call before its result.
        var lastResponse = 0, lastCall = 0
        for rec in rs {
            let seq = rec["seq"] as? Int ?? 0
            switch rec["type"] as? String {
            case "model.response": lastResponse = seq
            case "tool.call":
                #expect(lastResponse > lastCall, "a tool call follows its model response")
                lastCall = seq
            case "tool.done": #expect(lastCall > 0 && lastCall < seq)
            default: break
            }
        }
        let confessions = rs.filter { $0["type"] as? String == "confession" }.map(data)
        #expect(confessions.contains { $0["category"] as? String == "environment" && $0["by"] as? String == "agent" })
        // Each response names the exact request it answered (size and CRC-32C of the body sent).
        let requests = rs.filter { $0["type"] as? String == "model.response" }.map { data($0)["request"] as? [String: Any] ?? [:] }
        #expect(requests.allSatisfy { ($0["bytes"] as? Int ?? 0) > 1000 && ($0["crc32c"] as? String ?? "").count == 8 }, "\(requests)")
        let ended = data(rs.last!)
        #expect(ended["state"] as? String == "finished" && ended["status"] as? String == "success" && ended["exit_code"] as? Int == 0)
        // The key stays in the gateway: not in the journal (which holds every tool output), nor in the
        // env the sandbox got (the fake server also refuses any conversation that contains it).
        let journal = try String(contentsOfFile: inspect("fixer", home: h)["journal"] as? String ?? "", encoding: .utf8)
        #expect(!journal.contains(FakeModelServer.key))
        #expect(journal.contains("PATH=") && journal.contains("end"), "the env-dumping step really ran")
        let i = inspect("fixer", home: h)
        #expect(i["kind"] as? String == "run" && i["state"] as? String == "finished" && i["exit_code"] as? Int == 0)
        #expect((i["usage"] as? [String: Any])?["steps"] as? Int == 7)
        let feed = ab(["confessions", "fixer", "--json"], home: h)
        #expect(feed.out.contains("no network in the sandbox"), "\(feed)")
        #expect(ab(["journal", "verify", "fixer"], home: h).code == 0)
        let logs = ab(["logs", "fixer"], home: h)
        #expect(logs.out.contains("$ sh ./test.sh") && logs.out.contains("PASS: 2 + 3 = 5"), "\(logs)")
    }

    /// The journal alone rebuilds every request byte for byte (what `resume` relies on): the conversation
    /// rebuilt from the records, encoded again, has the size and CRC-32C the gateway recorded.
    func expectRequestsRebuild(_ ref: String, home h: String, model: String) throws {
        let path = inspect(ref, home: h)["journal"] as? String ?? ""
        let scan = try JournalReader.scan(path: path)
        let requests = try JournalConversation.requests(scan.records)
        #expect(!requests.isEmpty)
        let spec = try ModelSpec.parse(model)
        for r in requests {
            let body = try HTTPModelProvider.body(spec: spec, conversation: r.conversation, tools: BuiltinTools.definitions)
            #expect(r.recorded?.bytes == body.count && r.recorded?.crc32c == CRC32C.checksum(body), "step \(r.step) differs")
        }
    }

    @Test(arguments: [true, false])
    func theJournalRebuildsEveryRequestExactly(openai: Bool) throws {
        let h = home()
        let ws = brokenProject()
        let r = agentRun("fix", openai: openai, home: h, cwd: ws, extra: ["--name", "again"])
        #expect(r.code == 0, "\(r)")
        try expectRequestsRebuild("again", home: h, model: openai ? "openai:gpt-4o" : "anthropic:claude-sonnet-4-5")
    }

    @Test func theKeyIsRedactedWhenTheWorkspaceHoldsIt() throws {
        let h = home()
        let ws = TestEnv.workspace()
        let key = FakeModelServer.key
        let env = "OPENAI_API_KEY=\(key)\n"
        try env.write(toFile: ws + "/.env", atomically: true, encoding: .utf8)
        let r = agentRun("leak", home: h, cwd: ws, extra: ["--name", "leak"])
        #expect(r.code == 0, "\(r)")
        #expect(Self.server.violationLog.isEmpty, violations)
        #expect(r.err.contains("warning: the workspace holds .env") && r.err.contains("pass --hide .env"), "warned at the start: \(r.err)")
        let rs = records("leak", home: h)
        #expect(rs.contains { $0["type"] as? String == "warning" && (data($0)["message"] as? String ?? "").contains("--hide .env") })
        let journal = try String(contentsOfFile: inspect("leak", home: h)["journal"] as? String ?? "", encoding: .utf8)
        #expect(!journal.contains(key) && journal.contains("redacted by agentbox"))
        // The key's first 10 bytes were at the end of the kept head, its last 10 at the start of the tail.
        #expect(!journal.contains(String(key.prefix(10))) && !journal.contains(String(key.suffix(10))), "a part of the key at the cut")
        #expect(journal.contains("bytes cut by agentbox"))
        // base64 with the key at each alignment, and hex.
        for lead in ["", "x", "xy"] {
            let encoded = Array(Base64.encode(Array((lead + env).utf8)).utf8)
            let first = (8 * (lead.count + 15) + 5) / 6  // the first character that encodes only key bits
            let chunk = String(decoding: encoded[(first + 1)..<(first + 13)], as: UTF8.self)
            #expect(!journal.contains(chunk), "base64 with \(lead.count) leading bytes: \(chunk)")
        }
        #expect(!journal.contains(key.utf8.map { String($0, radix: 16) }.joined()), "hex")
        let cs = rs.filter { $0["type"] as? String == "confession" }.map(data)
        #expect(cs.filter { $0["category"] as? String == "secrets" }.count == 5, "one per result that held it: \(cs)")
    }

    @Test(arguments: [true, false])
    func malformedToolCallsGoBackToTheModelAsErrors(openai: Bool) throws {
        let h = home()
        let r = agentRun("badargs", openai: openai, home: h, extra: ["--name", "bad"])
        #expect(r.code == 1, "finish with failure: exit 1: \(r)")
        try expectRequestsRebuild("bad", home: h, model: openai ? "openai:gpt-4o" : "anthropic:claude-sonnet-4-5")
        #expect(Self.server.violationLog.isEmpty, violations)
        let rs = records("bad", home: h)
        let errors = rs.filter { $0["type"] as? String == "tool.done" && data($0)["is_error"] as? Bool == true }
        #expect(errors.count == 4, "\(errors)")
        #expect(data(rs.last!)["status"] as? String == "failure")
    }

    @Test func aRetriedModelCallIsSaidLiveAndTheRunGoesOn() {
        let h = home()
        var e = env
        e["AGENTBOX_HOME"] = h
        let r = run([TestEnv.agentbox, "run", "--model", "openai:gpt-4o", "--base-url", Self.server.base("500"), "--max-steps", "1",
                     "--task", "look around"], cwd: TestEnv.workspace(), env: e)
        #expect(r.code == 3, "the step budget ends it, not the 500: \(r)")
        #expect(r.err.contains("agentbox: attempt 1/6: 500 server error; retrying in 0."), "\(r.err)")
        #expect(!r.err.contains("kept failing"), "\(r.err)")
    }

    @Test func aRefusalIsShownConfessedAndEndsTheRun() {
        let h = home()
        var e = env
        e["AGENTBOX_HOME"] = h
        let r = run([TestEnv.agentbox, "run", "--name", "refused", "--model", "openai:gpt-4o", "--base-url", Self.server.base("refusal"),
                     "--task", "do something bad"], cwd: TestEnv.workspace(), env: e)
        #expect(r.code == 1 && r.err.contains("refused: I'm sorry"), "\(r)")
        let rs = records("refused", home: h)
        let turn = rs.first { $0["type"] as? String == "model.response" }.map(data)?["turn"] as? [String: Any]
        #expect((turn?["refusal"] as? String)?.contains("I'm sorry") == true && turn?["stop_reason"] as? String == "refusal", "\(String(describing: turn))")
        let cs = rs.filter { $0["type"] as? String == "confession" }.map(data)
        #expect(cs.map { $0["category"] as? String } == ["refusal"], "\(cs)")
        #expect(inspect("refused", home: h)["state"] as? String == "aborted")
        #expect(rs.filter { $0["type"] as? String == "model.request" }.count == 1, "a refusal is not reminded")
    }

    @Test func aStuckLoopIsConfessedThenStopped() {
        let h = home()
        let r = agentRun("loop", home: h, extra: ["--name", "loop"])
        #expect(r.code == 1, "\(r)")
        let cs = records("loop", home: h).filter { $0["type"] as? String == "confession" }.map(data)
        #expect(cs.map { $0["severity"] as? String ?? "" } == ["warning", "blocker"], "\(cs)")
        #expect(cs.allSatisfy { $0["category"] as? String == "stuck_loop" && $0["by"] as? String == "supervisor" })
        #expect(inspect("loop", home: h)["state"] as? String == "aborted")
        #expect(records("loop", home: h).filter { $0["type"] as? String == "model.response" }.count == 5)
    }

    @Test func aModelThatStopsCallingToolsIsRemindedThenStopped() throws {
        let h = home()
        let r = agentRun("talk", home: h, extra: ["--name", "talk"])
        #expect(r.code == 1, "\(r)")
        try expectRequestsRebuild("talk", home: h, model: "openai:gpt-4o")
        #expect(types(records("talk", home: h)).filter { $0 == "reminder" }.count == 2)
    }

    @Test(arguments: [(["--max-steps", "2"], "steps"), (["--max-tokens", "1500"], "tokens"), (["--max-cost", "0.005"], "cost")])
    func budgetsStopTheRunWithExit3(options: [String], kind: String) {
        let h = home()
        let r = agentRun("spin", home: h, extra: ["--name", "b"] + options)
        #expect(r.code == 3, "\(r)")
        let rs = records("b", home: h)
        #expect(rs.contains { $0["type"] as? String == "budget" && data($0)["kind"] as? String == kind })
        #expect(rs.contains { $0["type"] as? String == "confession" && data($0)["category"] as? String == "budget" })
        #expect(inspect("b", home: h)["state"] as? String == "budget")
    }

    @Test func aCostBudgetForAModelWithoutAPriceIsRefusedBeforeStarting() {
        let h = home()
        let r = run([TestEnv.agentbox, "run", "--model", "openai:my-local-model", "--base-url", Self.server.agent("spin"),
                     "--max-cost", "1", "--task", "x"], cwd: TestEnv.workspace(), env: env.merging(["AGENTBOX_HOME": h]) { $1 })
        #expect(r.code == 125 && r.err.contains("no price for openai:my-local-model"), "\(r)")
        #expect(ab(["ps", "--all", "--json"], home: h).out.isEmpty, "nothing was started")
    }

    @Test func theWallClockTimeoutEndsTheRunWith124() {
        let h = home()
        let r = agentRun("spin", home: h, extra: ["--name", "t", "--timeout", "1s"])
        #expect(r.code == 124, "\(r)")
        let rs = records("t", home: h)
        #expect(rs.contains { $0["type"] as? String == "limit" && data($0)["kind"] as? String == "timeout" })
        #expect(inspect("t", home: h)["state"] as? String == "timeout")
    }

    @Test func aModelThatKeepsFailingIsConfessedAndStopsTheRun() {
        let h = home()
        var e = env
        e["AGENTBOX_HOME"] = h
        let r = run([TestEnv.agentbox, "run", "--model", "openai:gpt-4o", "--base-url", Self.server.base("auth"), "--name", "m", "--task", "x"],
                    cwd: TestEnv.workspace(), env: e)
        #expect(r.code == 1 && r.err.contains("401"), "\(r)")
        let cs = records("m", home: h).filter { $0["type"] as? String == "confession" }.map(data)
        #expect(cs.contains { $0["severity"] as? String == "blocker" && $0["category"] as? String == "model" }, "\(cs)")
    }

    @Test func longConversationsAreCompactedBeforeEachRequest() throws {
        let h = home()
        let r = agentRun("big", home: h, extra: ["--name", "big"], env: ["AGENTBOX_CONTEXT_BYTES": "60000"])
        #expect(r.code == 0, "\(r)")
        try expectRequestsRebuild("big", home: h, model: "openai:gpt-4o")
        #expect(Self.server.violationLog.isEmpty, violations)
        let compactions = records("big", home: h).filter { $0["type"] as? String == "context.compacted" }
        #expect(!compactions.isEmpty)
        // The journal keeps every result whole: only what is sent to the model is shortened.
        let whole = records("big", home: h).filter { $0["type"] as? String == "tool.done" && data($0)["name"] as? String == "shell" }
            .allSatisfy { (data($0)["content"] as? String ?? "").utf8.count >= 30_000 }
        #expect(whole)
    }

    @Test func aContextLengthErrorIsAnsweredByCompactingAndAskingAgain() throws {
        let h = home()
        let r = agentRun("ctx", home: h, extra: ["--name", "ctx"])
        #expect(r.code == 0, "\(r)")
        try expectRequestsRebuild("ctx", home: h, model: "openai:gpt-4o")
        let rs = records("ctx", home: h)
        #expect(rs.contains { $0["type"] as? String == "context.compacted" && (data($0)["reason"] as? String ?? "").contains("context length") })
        #expect(!types(rs).contains("model.error"))
    }

    @Test func optionsAreCheckedBeforeAnythingStarts() {
        let h = home()
        let noTask = ab(["run", "--model", "replay:/nonexistent"], home: h)
        #expect(noTask.code == 125 && noTask.err.contains("no task given"), "\(noTask)")
        let both = ab(["run", "--model", "openai:gpt-4o", "--task", "a", "--task-file", "/etc/hostname"], home: h)
        #expect(both.code == 125 && both.err.contains("both"), "\(both)")
        let noKey = ab(["run", "--model", "openai:gpt-4o", "--task", "a"], home: h)
        #expect(noKey.code == 125 && noKey.err.contains("OPENAI_API_KEY is not set"), "\(noKey)")
        let badReplay = ab(["run", "--model", "replay:/etc/hostname", "--task", "a"], home: h)
        #expect(badReplay.code == 125 && badReplay.err.contains("replay"), "\(badReplay)")
        #expect(ab(["ps", "--all", "--json"], home: h).out.isEmpty)
    }

    @Test func jsonStreamsTheJournalRecordsOnStdout() {
        let h = home()
        let r = agentRun("sleep", home: h, extra: ["--json"])
        #expect(r.code == 0, "\(r)")
        let lines = r.out.split(separator: "\n").map { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(!lines.isEmpty && lines.allSatisfy { $0 != nil }, "stdout is only JSON lines: \(r.out)")
        #expect(lines.last??["type"] as? String == "run.ended")
    }

    /// Waits until the run's journal has a record of `type`.
    func waitFor(_ type: String, run ref: String, home h: String) -> Bool {
        eventually(15) { types(records(ref, home: h)).contains(type) }
    }

    @Test func detachReturnsTheIdAndTheRunGoesOn() {
        let h = home()
        let r = agentRun("sleep", home: h, extra: ["--detach", "--name", "bg"])
        #expect(r.code == 0, "\(r)")
        let id = r.out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 12, "the id alone on stdout: \(r)")
        #expect(inspect(id, home: h)["state"] as? String == "running", "\(r)")
        let follow = ab(["logs", "-f", id], home: h)
        #expect(follow.code == 0 && follow.out.contains("slept"), "\(follow)")
        let i = inspect("bg", home: h)
        #expect(i["state"] as? String == "finished" && i["exit_code"] as? Int == 0, "\(i)")
    }

    @Test func stopLetsTheCurrentToolFinishThenEndsWith75() {
        let h = home()
        let id = agentRun("sleep", home: h, extra: ["--detach"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(waitFor("tool.call", run: id, home: h))
        let stop = ab(["stop", id], home: h)
        #expect(stop.code == 0, "\(stop)")
        let i = inspect(id, home: h)
        #expect(i["state"] as? String == "stopped" && i["exit_code"] as? Int == 75, "\(i)")
        let rs = records(id, home: h)
        #expect(rs.contains { $0["type"] as? String == "tool.done" && (data($0)["content"] as? String ?? "").contains("slept") },
                "the tool in flight finished within the grace period")
        #expect(!types(rs).contains("tool.interrupted"))
    }

    @Test func stopKillsAToolThatOutlivesTheGracePeriod() {
        let h = home()
        let id = agentRun("sleep", home: h, extra: ["--detach"], env: ["AGENTBOX_GRACE": "0.3"]).out
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(waitFor("tool.call", run: id, home: h))
        #expect(ab(["stop", id], home: h).code == 0)
        let rs = records(id, home: h)
        #expect(types(rs).contains("tool.interrupted"), "\(types(rs))")
        #expect(inspect(id, home: h)["exit_code"] as? Int == 75)
        #expect(!hostHasProcess(withMarker: "sleep 2; echo slept"))
    }

    @Test func killEndsTheRunNowAndRecordsIt() {
        let h = home()
        let id = agentRun("sleep", home: h, extra: ["--detach"]).out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(waitFor("tool.call", run: id, home: h))
        // tool.call is on disk just before the tool starts: wait for the process itself.
        #expect(eventually(2) { hostHasProcess(withMarker: "sleep 2; echo slept") })
        let k = ab(["kill", id], home: h)
        #expect(k.code == 0, "\(k)")
        #expect(eventually(2) { !hostHasProcess(withMarker: "sleep 2; echo slept") }, "the sandbox died with its supervisor")
        let i = inspect(id, home: h)
        #expect(i["state"] as? String == "killed" && i["exit_code"] as? Int == 137, "\(i)")
        #expect(ab(["journal", "verify", id], home: h).code == 0)
        let again = ab(["stop", id], home: h)
        #expect(again.code == 1 && again.err.contains("not running"), "\(again)")
    }

    @Test func stopWorksForAJournaledExecToo() throws {
        let h = home()
        let p = try startAgentbox(["exec", "--name", "sleeper", "--", "sleep", "30"], env: ["AGENTBOX_HOME": h], stderr: FileHandle.nullDevice)
        #expect(waitFor("sandbox.ready", run: "sleeper", home: h))
        let stop = ab(["stop", "sleeper"], home: h)
        p.waitUntilExit()
        #expect(stop.code == 0 && p.terminationStatus == 143, "SIGTERM reached the command: \(stop)")
        #expect(inspect("sleeper", home: h)["exit_code"] as? Int == 143)
    }

    @Test func aKilledSupervisorLeavesNothingRunningAndAnInterruptedJournal() throws {
        let h = home()
        var e = env
        e["AGENTBOX_HOME"] = h
        let p = try startAgentbox(["run", "--model", "openai:gpt-4o", "--base-url", Self.server.agent("sleep"), "--name", "victim",
                                   "--task", "x"], env: e, stderr: FileHandle.nullDevice)
        #expect(waitFor("tool.call", run: "victim", home: h))
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(eventually(2) { !hostHasProcess(withMarker: "sleep 2; echo slept") })
        let i = inspect("victim", home: h)
        #expect(i["state"] as? String == "interrupted", "a supervisor that died: \(i)")
        let rs = records("victim", home: h)
        #expect(types(rs).last == "tool.call", "the call in flight is the last thing on record")
        #expect(ab(["journal", "verify", "victim"], home: h).code == 0)
    }

    @Test func theDemoProjectIsFixedByItsReplaySession() throws {
        let h = home()
        let ws = TestEnv.workspace()
        _ = shell("cp -r '\(TestEnv.repoRoot)'/examples/fix-the-test/project/. '\(ws)'/")
        let r = run([TestEnv.agentbox, "run", "--model", "replay:\(TestEnv.repoRoot)/examples/fix-the-test/replay.json",
                     "--env", "PYTHONDONTWRITEBYTECODE=1", "--task", "make the tests pass"], cwd: ws, env: ["AGENTBOX_HOME": h])
        #expect(r.code == 0, "\(r)")
        #expect(try String(contentsOfFile: ws + "/calc.py", encoding: .utf8).contains("return a + b"))
        #expect(shell("cd '\(ws)' && python3 -m unittest -q").code == 0, "the project's tests pass afterwards")
    }

    @Test func rootlessRunWorksAndFilesBelongToTheUser() throws {
        guard let user = TestUser.shared else { return }
        let h = "/tmp/agentbox-home-user-\(UUID().uuidString.prefix(6))"
        let ws = brokenProject(owner: user)
        let replay = ws + ".replay.json"
        try #"{"turns": [{"tool_calls": [{"name": "write_file", "arguments": {"path": "sub/new.txt", "content": "hi"}}]}, {"tool_calls": [{"name": "shell", "arguments": {"command": "id -u > uid.txt"}}]}, {"tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "ok"}}]}]}"#
            .write(toFile: replay, atomically: true, encoding: .utf8)
        _ = shell("chmod a+r '\(replay)'")
        let r = run([TestEnv.agentbox, "run", "--model", "replay:\(replay)", "--task", "x"], cwd: ws, user: user, env: ["AGENTBOX_HOME": h])
        #expect(r.code == 0, "\(r)")
        var st = stat()
        #expect(stat(ws + "/sub/new.txt", &st) == 0 && st.st_uid == user.uid, "created files belong to the user")
        #expect((try? String(contentsOfFile: ws + "/uid.txt", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == "\(user.uid)")
    }
}

/// Tool behaviour inside a real sandbox, driven by replay sessions (no server needed).
@Suite struct RunToolTests {
    func replayRun(_ turns: String, options: [String] = [], cwd: String = TestEnv.workspace()) throws -> (RunResult, [[String: Any]]) {
        let h = "/tmp/agentbox-home-\(UUID().uuidString.prefix(8))"
        let file = "/tmp/agentbox-replay-\(UUID().uuidString.prefix(8)).json"
        try "{\"turns\": [\(turns), {\"tool_calls\": [{\"name\": \"finish\", \"arguments\": {\"status\": \"success\", \"summary\": \"ok\"}}]}]}"
            .write(toFile: file, atomically: true, encoding: .utf8)
        let r = run([TestEnv.agentbox, "run", "--model", "replay:\(file)", "--name", "t", "--task", "x"] + options, cwd: cwd,
                    env: ["AGENTBOX_HOME": h])
        let records = run([TestEnv.agentbox, "logs", "t", "--json"], env: ["AGENTBOX_HOME": h]).out.split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        return (r, records)
    }

    func results(_ rs: [[String: Any]]) -> [[String: Any]] {
        rs.filter { $0["type"] as? String == "tool.done" }.map { $0["data"] as? [String: Any] ?? [:] }
    }

    @Test func shellOutputIsCappedHeadAndTailAndSlowCommandsTimeOut() throws {
        let (r, rs) = try replayRun("""
            {"tool_calls": [{"name": "shell", "arguments": {"command": "echo FIRST; head -c 1000000 /dev/zero | tr '\\\\0' x; echo; echo LAST"}}]},
            {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 30", "timeout_s": 1}}]},
            {"tool_calls": [{"name": "shell", "arguments": {"command": "exit 7"}}]}
            """)
        #expect(r.code == 0, "\(r)")
        let res = results(rs)
        let big = res[0]
        let content = big["content"] as? String ?? ""
        #expect(big["truncated"] as? Bool == true && big["output_bytes"] as? Int == 1_000_012, "\(big)")
        #expect(content.contains("FIRST") && content.contains("LAST") && content.contains("bytes cut by agentbox"))
        #expect(content.utf8.count < 40_000, "capped: \(content.utf8.count) bytes")
        #expect(res[1]["timed_out"] as? Bool == true && res[1]["is_error"] as? Bool == true, "\(res[1])")
        #expect((res[1]["duration_ms"] as? Double ?? 99_999) < 10_000)
        #expect(res[2]["exit_code"] as? Int == 7 && (res[2]["content"] as? String ?? "").hasPrefix("exit code 7"))
    }

    @Test func backgroundProcessesOfAToolCallKeepRunningWhileTheyWrite() throws {
        let (r, rs) = try replayRun(#"""
            {"tool_calls": [{"name": "shell", "arguments": {"command": "(while true; do echo tick; sleep 0.05; done) & echo $! > bg.pid; echo started"}}]},
            {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 1; kill -0 $(cat bg.pid) && echo alive"}}]}
            """#)
        #expect(r.code == 0, "\(r)")
        let res = results(rs)
        #expect((res[0]["content"] as? String ?? "").contains("started"))
        #expect((res[1]["content"] as? String ?? "").contains("alive"), "the writer did not die of SIGPIPE: \(res[1])")
        #expect((res[0]["duration_ms"] as? Double ?? 99_999) < 2_000, "the call returned without waiting for the background process")
    }

    @Test func fileToolsWorkAndFailClearly() throws {
        let ws = TestEnv.workspace()
        try "a = 1\nb = 1\n".write(toFile: ws + "/f.txt", atomically: true, encoding: .utf8)
        let (r, rs) = try replayRun("""
            {"tool_calls": [{"name": "read_file", "arguments": {"path": "missing.txt"}},
                            {"name": "edit_file", "arguments": {"path": "f.txt", "old_text": " = 1", "new_text": " = 2"}},
                            {"name": "edit_file", "arguments": {"path": "f.txt", "old_text": "a = 1", "new_text": "a = 2"}},
                            {"name": "write_file", "arguments": {"path": "d/e/new.txt", "content": "hi"}},
                            {"name": "write_file", "arguments": {"path": "/usr/evil", "content": "x"}},
                            {"name": "read_file", "arguments": {"path": "f.txt", "offset": 2, "limit": 1}}]}
            """, cwd: ws)
        #expect(r.code == 0, "\(r)")
        let res = results(rs)
        #expect(res[0]["is_error"] as? Bool == true && (res[0]["content"] as? String ?? "").contains("No such file"), "\(res[0])")
        #expect(res[1]["is_error"] as? Bool == true && (res[1]["content"] as? String ?? "").contains("appears 2 times"), "\(res[1])")
        #expect(res[2]["is_error"] as? Bool == false)
        #expect(res[3]["is_error"] as? Bool == false)
        #expect(res[4]["is_error"] as? Bool == true && (res[4]["content"] as? String ?? "").contains("/usr/evil"), "\(res[4])")
        #expect((res[5]["content"] as? String ?? "").hasPrefix("b = 1\n"), "\(res[5])")
        #expect(try String(contentsOfFile: ws + "/f.txt", encoding: .utf8) == "a = 2\nb = 1\n")
        #expect(try String(contentsOfFile: ws + "/d/e/new.txt", encoding: .utf8) == "hi")
        #expect(!FileManager.default.fileExists(atPath: "/usr/evil"))
    }

    @Test func anOOMKillDuringAToolIsConfessedAndToldToTheModel() throws {
        guard TestEnv.isRoot else { return }  // a real memory limit needs a cgroup
        let (r, rs) = try replayRun("""
            {"tool_calls": [{"name": "shell", "arguments": {"command": "tail /dev/zero"}}]}
            """, options: ["--memory", "64M"])
        #expect(r.code == 0, "the run goes on after the tool's OOM kill: \(r)")
        let res = results(rs)
        #expect((res[0]["content"] as? String ?? "").contains("OOM-killed"), "\(res[0])")
        let c = rs.filter { $0["type"] as? String == "confession" }.map { $0["data"] as? [String: Any] ?? [:] }
        #expect(c.contains { $0["category"] as? String == "limits" && $0["by"] as? String == "supervisor" }, "\(c)")
        #expect(rs.contains { $0["type"] as? String == "limit" })
    }

    @Test func onlyUnhiddenEnvFilesAreWarnedAbout() throws {
        let ws = TestEnv.workspace()
        try "SECRET=1\n".write(toFile: ws + "/.env.local", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: ws + "/.envs", withIntermediateDirectories: true)  // a directory (a venv): no warning
        let turn = #"{"tool_calls": [{"name": "shell", "arguments": {"command": "true"}}]}"#
        let (warned, rs) = try replayRun(turn, cwd: ws)
        #expect(warned.code == 0 && warned.err.contains("the workspace holds .env.local, readable") && warned.err.contains("--hide .env.local"), "\(warned)")
        #expect(!warned.err.contains(".envs"))
        #expect(rs.contains { $0["type"] as? String == "warning" && (($0["data"] as? [String: Any])?["message"] as? String ?? "").contains(".env.local") })
        let (hidden, hrs) = try replayRun(turn, options: ["--hide", ".env.local"], cwd: ws)
        #expect(hidden.code == 0 && !hidden.err.contains("--hide"), "\(hidden)")
        #expect(!hrs.contains { $0["type"] as? String == "warning" })
    }

    @Test func manyRunsAtOnceDoNotInterfere() throws {
        let h = "/tmp/agentbox-home-\(UUID().uuidString.prefix(8))"
        let file = "/tmp/agentbox-replay-\(UUID().uuidString.prefix(8)).json"
        try #"{"turns": [{"tool_calls": [{"name": "shell", "arguments": {"command": "echo $$ > pid.txt; sleep 0.2"}}]}, {"tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "ok"}}]}]}"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let workspaces = (0..<10).map { _ in TestEnv.workspace() }
        var procs: [Process] = []
        for ws in workspaces {
            procs.append(try startAgentbox(["run", "--model", "replay:\(file)", "--task", "x"], cwd: ws, env: ["AGENTBOX_HOME": h],
                                           stderr: FileHandle.nullDevice))
        }
        for p in procs { p.waitUntilExit() }
        #expect(procs.allSatisfy { $0.terminationStatus == 0 })
        for ws in workspaces { #expect(FileManager.default.fileExists(atPath: ws + "/pid.txt"), "each run wrote its own workspace") }
        let ps = run([TestEnv.agentbox, "ps", "--all", "--json"], env: ["AGENTBOX_HOME": h]).out.split(separator: "\n")
        #expect(ps.count == 10)
    }
}

/// What a model and its tools write reaches the operator's terminal escaped in every text view, and
/// exactly in every `--json` view (docs/security.md, "Terminal output").
@Suite struct TerminalOutputTests {
    static let osc52 = "\u{1B}]52;c;cHduZWQ=\u{07}"
    static let fakeConfession = "2026-01-01T00:00:00.000Z  000000000000 -  blocker  secrets: the key leaked"

    func json(_ text: String) -> [String: Any]? {
        try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
    }

    /// Bytes a terminal acts on: C0 controls but tab and newline, DEL, and UTF-8 C1 controls.
    func terminalControls(_ bytes: [UInt8]) -> [UInt8] {
        var found: [UInt8] = []
        for (i, b) in bytes.enumerated() {
            if (b < 0x20 && b != 0x09 && b != 0x0A) || b == 0x7F { found.append(b) }
            if b == 0xC2, i + 1 < bytes.count, bytes[i + 1] < 0xA0 { found.append(bytes[i + 1]) }
        }
        return found
    }

    @Test func hostileTextIsEscapedInTextViewsAndExactInJSON() throws {
        let h = "/tmp/agentbox-home-\(UUID().uuidString.prefix(8))"
        let name = "evil\u{1B}]0;title\u{07}\rname"
        let task = "do it\r\u{1B}[2J"
        let modelText = "Looking \(Self.osc52)\r\n[99] run ended: finished (success): fake\u{2028}\u{85}done"
        let category = "cat\u{1B}[31m"
        let summary = "real\r\n\(Self.fakeConfession) \(Self.osc52)\u{85}"
        let finish = "done\u{1B}]0;title\u{07}\nsecond line"
        let printed = "out \(Self.osc52)\r[3] fake\n\(Self.fakeConfession)\n\u{7}"
        let turns: [[String: Any]] = [
            ["text": modelText, "tool_calls": [["name": "shell", "arguments": ["command": "printf 'out \\033]52;c;cHduZWQ=\\007\\r[3] fake\\n\(Self.fakeConfession)\\n\\007'"]]]],
            ["tool_calls": [["name": "confess", "arguments": ["severity": "warning", "category": category, "summary": summary]]]],
            ["tool_calls": [["name": "finish", "arguments": ["status": "success", "summary": finish]]]],
        ]
        let replay = "/tmp/agentbox-replay-\(UUID().uuidString.prefix(8)).json"
        try JSONSerialization.data(withJSONObject: ["turns": turns]).write(to: URL(fileURLWithPath: replay))
        let r = run([TestEnv.agentbox, "run", "--model", "replay:\(replay)", "--name", name, "--task", task], cwd: TestEnv.workspace(),
                    env: ["AGENTBOX_HOME": h])
        #expect(r.code == 0, "\(r)")
        #expect(terminalControls(Array(r.err.utf8)).isEmpty, "run's progress lines: \(r.err)")
        #expect(r.err.contains("\\x1b]52;c;cHduZWQ=\\x07"), "escaped visibly: \(r.err)")
        func ab(_ args: [String]) -> RunResult { run([TestEnv.agentbox] + args, env: ["AGENTBOX_HOME": h]) }

        // Text views: nothing a terminal acts on, and one confession per line.
        for args in [["logs", name], ["confessions"], ["confessions", name], ["ps", "--all"], ["inspect", name]] {
            let v = ab(args)
            #expect(v.code == 0, "\(args): \(v)")
            #expect(terminalControls(v.outBytes).isEmpty && terminalControls(Array(v.err.utf8)).isEmpty, "\(args): \(v)")
            #expect(!v.out.contains("\u{2028}"), "\(args)")
        }
        let confessions = ab(["confessions"]).out
        #expect(confessions.split(separator: "\n").count == 1 && confessions.contains("\\r\\n2026-01-01"), "\(confessions)")
        let logs = ab(["logs", name]).out
        #expect(logs.contains("\n  | out \\x1b]52;c;cHduZWQ=\\x07\\r[3] fake\n  | \(Self.fakeConfession)\n  | \\x07\n"),
                "tool output is attributed line by line: \(logs)")
        #expect(logs.contains("  | [99] run ended: finished (success): fake\\u{2028}\\u{85}done"), "\(logs)")
        #expect(!logs.split(separator: "\n").contains { $0.hasPrefix("[99]") || $0.hasPrefix("2026-01-01") }, "\(logs)")

        // JSON views: valid, one record per line, and the exact text.
        let records = ab(["logs", name, "--json"])
        #expect(terminalControls(records.outBytes).isEmpty && !records.out.contains("\u{2028}") && !records.out.contains("\u{85}"))
        let rs = records.out.split(separator: "\n").map { json(String($0)) }
        #expect(!rs.isEmpty && rs.allSatisfy { $0 != nil }, "every line is one JSON record")
        let data = rs.compactMap { $0 }.map { ($0["type"] as? String ?? "", $0["data"] as? [String: Any] ?? [:]) }
        #expect(data.contains { $0.0 == "model.response" && ($0.1["turn"] as? [String: Any])?["text"] as? String == modelText })
        #expect(data.contains { $0.0 == "tool.done" && ($0.1["content"] as? String ?? "").hasSuffix(printed) }, "\(data)")
        #expect(data.contains { $0.0 == "confession" && $0.1["summary"] as? String == summary && $0.1["category"] as? String == category })
        #expect(data.contains { $0.0 == "run.ended" && $0.1["summary"] as? String == finish })
        let feed = ab(["confessions", "--json"])
        #expect(terminalControls(feed.outBytes).isEmpty)
        #expect(json(feed.out)?["summary"] as? String == summary && json(feed.out)?["name"] as? String == name, "\(feed.out)")
        let ps = ab(["ps", "--all", "--json"])
        #expect(terminalControls(ps.outBytes).isEmpty && json(ps.out)?["name"] as? String == name && json(ps.out)?["task"] as? String == task)
        let inspect = ab(["inspect", name, "--json"])
        #expect(terminalControls(inspect.outBytes).isEmpty && json(inspect.out)?["name"] as? String == name, "\(inspect.out)")
    }
}
