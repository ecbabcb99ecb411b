import Foundation
import Testing

/// `agentbox model check` against the project's fake model server (Tests/FakeModelServer), with faults.
final class FakeModelServer: @unchecked Sendable {
    let process = Process()
    let port: Int
    let violations: String
    static let key = "test-key-\(UUID().uuidString.prefix(6))"

    let tls: Bool

    init(tlsCert: String? = nil, tlsKey: String? = nil) throws {
        tls = tlsCert != nil
        violations = "/tmp/agentbox-fake-violations-\(UUID().uuidString.prefix(8))"
        _ = FileManager.default.createFile(atPath: violations, contents: Data())
        let portFile = violations + ".port"
        port = try startTestServer(process, script: "fake_model_server.py", ["--key", FakeModelServer.key, "--violations", violations]
                                   + (tlsCert.map { ["--tls-cert", $0, "--tls-key", tlsKey ?? ""] } ?? []), portFile: portFile)
    }

    deinit { process.terminate() }

    func base(_ scenario: String, openai: Bool = true) -> String {
        "\(tls ? "https" : "http")://127.0.0.1:\(port)/s/\(scenario)" + (openai ? "/v1" : "")
    }

    /// An agent session (`agentbox run`) following the server's script `script`.
    func agent(_ script: String, openai: Bool = true) -> String {
        "\(tls ? "https" : "http")://127.0.0.1:\(port)/a/\(script)" + (openai ? "/v1" : "")
    }

    var violationLog: String { (try? String(contentsOfFile: violations, encoding: .utf8)) ?? "" }
}

@Suite(.serialized) struct ModelCheckTests {
    static let server = try! FakeModelServer()

    func check(_ model: String, _ scenario: String, openai: Bool = true, env extra: [String: String] = [:]) -> (RunResult, [String: Any]?) {
        var env = ["OPENAI_API_KEY": FakeModelServer.key, "ANTHROPIC_API_KEY": FakeModelServer.key, "AGENTBOX_MODEL_IDLE_TIMEOUT": "1"]
        for (k, v) in extra { env[k] = v }
        let r = run([TestEnv.agentbox, "model", "check", "--model", model, "--base-url", Self.server.base(scenario, openai: openai)], env: env)
        let json = try? JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
        return (r, json)
    }

    func firstCall(_ json: [String: Any]?) -> [String: Any]? { (json?["tool_calls"] as? [[String: Any]])?.first }

    @Test func openAIStreamedTurnIsParsed() {
        let (r, json) = check("openai:gpt-test", "ok")
        #expect(r.code == 0, "\(r)")
        #expect(json?["text"] as? String == "Let me look.")
        #expect(firstCall(json)?["name"] as? String == "shell")
        #expect((firstCall(json)?["arguments"] as? [String: Any])?["command"] as? String == "ls")
        #expect(json?["stop_reason"] as? String == "tool_use")
        #expect((json?["usage"] as? [String: Any])?["total_tokens"] as? Int == 62)
        #expect(json?["attempts"] as? Int == 1)
        #expect(Self.server.violationLog.isEmpty, Comment(rawValue: Self.server.violationLog))
    }

    @Test func anthropicStreamedTurnIsParsed() {
        let (r, json) = check("anthropic:claude-test", "ok", openai: false)
        #expect(r.code == 0, "\(r)")
        #expect(json?["text"] as? String == "Listing.")
        #expect((firstCall(json)?["arguments"] as? [String: Any])?["command"] as? String == "ls")
        #expect((json?["usage"] as? [String: Any])?["input_tokens"] as? Int == 849)
        #expect(Self.server.violationLog.isEmpty, Comment(rawValue: Self.server.violationLog))
    }

    /// `words`: what the live line may say (the stall ends when the server gives up, which libcurl's idle
    /// check, averaged over a few seconds, may or may not have seen first).
    @Test(arguments: [("openai:m", "429", true, ["429 rate limited"]), ("openai:m", "500", true, ["500 server error"]),
                      ("openai:m", "cut", true, ["stream cut short"]), ("openai:m", "stall", true, ["timed out", "stream cut short"]),
                      ("anthropic:m", "529", false, ["529 overloaded"]), ("anthropic:m", "errorevent", false, ["overloaded"])])
    func transientFaultsAreRetriedAndSaidLive(model: String, scenario: String, openai: Bool, words: [String]) {
        let (r, json) = check(model, scenario, openai: openai)
        #expect(r.code == 0, "\(scenario): \(r)")
        #expect(json?["attempts"] as? Int == 2, "\(scenario): \(r)")
        #expect(words.contains { r.err.contains("agentbox: attempt 1/6: \($0); retrying in 0.") }, "\(scenario): every retry is said: \(r.err)")
        #expect(!r.err.contains("kept failing") && !r.err.contains("gave up"), "\(scenario): the call succeeded: \(r.err)")
        #expect(firstCall(json)?["name"] as? String == "shell")
    }

    @Test func authAndQuotaErrorsAreNotRetriedAndSayWhatToDo() {
        let (auth, _) = check("openai:m", "auth")
        #expect(auth.code == 1)
        #expect(auth.err.contains("401 from 127.0.0.1") && auth.err.contains("check OPENAI_API_KEY"), "\(auth)")
        let (quota, _) = check("openai:m", "quota")
        #expect(quota.code == 1)
        #expect(quota.err.contains("429") && quota.err.contains("quota"), "\(quota)")
        #expect(!quota.err.contains("retrying"), "insufficient_quota is not retried")
    }

    @Test func malformedArgumentsIndexReuseAndNonStreamingServers() {
        let (bad, badJSON) = check("openai:m", "badargs")
        #expect(bad.code == 0, "\(bad)")
        #expect(firstCall(badJSON)?["arguments"] as? String == #"{"command":"ls"#, "invalid arguments are shown raw: \(bad.out)")
        let (_, reuse) = check("openai:m", "reuse")
        #expect((reuse?["tool_calls"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["a", "b"])
        let (plain, plainJSON) = check("openai:m", "nostream")
        #expect(plain.code == 0 && plainJSON?["text"] as? String == "plain", "\(plain)")
    }

    @Test func httpsWithAPrivateCAAndAClearErrorWithoutIt() throws {
        let dir = "/tmp/agentbox-tls-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let gen = shell("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout '\(dir)/key.pem' -out '\(dir)/cert.pem' 2>&1")
        #expect(gen.code == 0, "\(gen)")
        let server = try FakeModelServer(tlsCert: dir + "/cert.pem", tlsKey: dir + "/key.pem")
        let env = ["OPENAI_API_KEY": FakeModelServer.key, "AGENTBOX_CA_BUNDLE": dir + "/cert.pem"]
        let ok = run([TestEnv.agentbox, "model", "check", "--model", "openai:m", "--base-url", server.base("ok")], env: env)
        #expect(ok.code == 0 && ok.out.contains("\"shell\""), "\(ok)")
        let untrusted = run([TestEnv.agentbox, "model", "check", "--model", "openai:m", "--base-url", server.base("ok")],
                            env: ["OPENAI_API_KEY": FakeModelServer.key])
        #expect(untrusted.code == 1, "\(untrusted)")
        #expect(untrusted.err.contains("AGENTBOX_CA_BUNDLE") && !untrusted.err.contains("retrying"), "not retried: \(untrusted)")
    }

    /// A base URL that cannot work is refused before anything starts (125), by `model check` and by
    /// `run`, naming where it came from and what a valid one looks like; no run directory is made.
    @Test(arguments: ["not-a-url", "ftp://127.0.0.1/v1", "localhost:8000/v1", "http://127.0.0.1:99999/v1"])
    func aBaseURLThatCannotWorkFailsAtOnce(url: String) throws {
        let env = ["OPENAI_API_KEY": FakeModelServer.key]
        let started = Date()
        let check = run([TestEnv.agentbox, "model", "check", "--model", "openai:m", "--base-url", url], env: env)
        #expect(check.code == 125, "\(check)")
        #expect(check.err.contains("--base-url \(url): not a usable base URL") && check.err.contains("https://api.openai.com/v1"), "\(check)")
        #expect(!check.err.contains("retrying"), "\(check)")
        let home = "/tmp/agentbox-home-\(UUID().uuidString.prefix(8))"
        let agent = run([TestEnv.agentbox, "run", "--model", "openai:m", "--base-url", url, "--task", "t"], cwd: TestEnv.workspace(),
                        env: env.merging(["AGENTBOX_HOME": home]) { $1 })
        #expect(agent.code == 125 && agent.err.contains("not a usable base URL"), "\(agent)")
        #expect(!FileManager.default.fileExists(atPath: home + "/runs"), "no run was made")
        #expect(Date().timeIntervalSince(started) < 5, "no retries")
        let fromEnv = run([TestEnv.agentbox, "model", "check", "--model", "anthropic:m"],
                          env: ["ANTHROPIC_API_KEY": FakeModelServer.key, "ANTHROPIC_BASE_URL": url])
        #expect(fromEnv.code == 125 && fromEnv.err.contains("ANTHROPIC_BASE_URL=\(url)"), "\(fromEnv)")
    }

    /// `model check` and `run` agree: no key for an official endpoint is agentbox's usage error, 125,
    /// before any request.
    @Test func aMissingKeyIs125ForCheckAndRun() {
        let check = run([TestEnv.agentbox, "model", "check", "--model", "openai:gpt-4o-mini"])
        #expect(check.code == 125 && check.err.contains("OPENAI_API_KEY is not set"), "\(check)")
        let home = "/tmp/agentbox-home-\(UUID().uuidString.prefix(8))"
        let agent = run([TestEnv.agentbox, "run", "--model", "anthropic:claude-sonnet-4-5", "--task", "t"], cwd: TestEnv.workspace(),
                        env: ["AGENTBOX_HOME": home])
        #expect(agent.code == 125 && agent.err.contains("ANTHROPIC_API_KEY is not set"), "\(agent)")
        #expect(!FileManager.default.fileExists(atPath: home + "/runs"), "no run was made")
    }

    @Test(arguments: ["refusal", "refusalplain"])
    func aRefusalIsShownNotAnEmptyTurn(scenario: String) {
        let (r, json) = check("openai:m", scenario)
        #expect(r.code == 0, "\(r)")
        #expect((json?["refusal"] as? String)?.hasSuffix("I can't help with that.") == true, "\(r)")
        #expect(json?["stop_reason"] as? String == "refusal" && json?["text"] as? String == "", "\(r)")
    }

    @Test func onlyChoiceZeroIsUsed() {
        let (streamed, json) = check("openai:m", "choices")
        #expect(streamed.code == 0, "\(streamed)")
        #expect(json?["text"] as? String == "Let me look.", "\(streamed)")
        #expect((json?["tool_calls"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["call_1"], "\(streamed)")
        #expect(json?["stop_reason"] as? String == "tool_use", "\(streamed)")
        let (plain, plainJSON) = check("openai:m", "choicesplain")
        #expect(plain.code == 0 && plainJSON?["text"] as? String == "plain" && plainJSON?["stop_reason"] as? String == "end_turn", "\(plain)")
    }

    /// The last event of a body may lack its blank line: it is dispatched (as the SDKs do), an error
    /// event too, classified by its type.
    @Test func aFinalEventWithoutItsBlankLineIsDispatched() {
        let (openai, openaiJSON) = check("openai:m", "noblank")
        #expect(openai.code == 0 && openaiJSON?["attempts"] as? Int == 1, "\(openai)")
        #expect((openaiJSON?["usage"] as? [String: Any])?["total_tokens"] as? Int == 62, "\(openai)")
        let (anthropic, anthropicJSON) = check("anthropic:m", "noblank", openai: false)
        #expect(anthropic.code == 0 && anthropicJSON?["attempts"] as? Int == 1, "\(anthropic)")
        let (error, errorJSON) = check("anthropic:m", "errorlast", openai: false)
        #expect(error.code == 0 && errorJSON?["attempts"] as? Int == 2, "\(error)")
        #expect(error.err.contains("attempt 1/6: overloaded; retrying in"), "classified as overloaded, not as a cut stream: \(error)")
        #expect(Self.server.violationLog.isEmpty, Comment(rawValue: Self.server.violationLog))
    }

    @Test func replayNeedsNoNetwork() throws {
        let file = "/tmp/agentbox-replay-\(UUID().uuidString.prefix(6)).json"
        try #"{"turns": [{"text": "hi", "tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "ok"}}]}]}"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let r = run([TestEnv.agentbox, "model", "check", "--model", "replay:" + file])
        #expect(r.code == 0, "\(r)")
        #expect(r.out.contains("\"finish\""))
        try #"{"turns": [{"txt": "hi"}]}"#.write(toFile: file, atomically: true, encoding: .utf8)
        let bad = run([TestEnv.agentbox, "model", "check", "--model", "replay:" + file])
        #expect(bad.code == 125 && bad.err.contains("turns[0].txt"), "\(bad)")
    }
}
