import Foundation
import Testing

/// The venv with the real SDK clients (openai, anthropic, llm) that `make test` creates once (Makefile,
/// target pyclients): AGENTBOX_PYCLIENTS or /var/tmp/agentbox-pyclients.
enum PyClients {
    static let path = ProcessInfo.processInfo.environment["AGENTBOX_PYCLIENTS"] ?? "/var/tmp/agentbox-pyclients"
    static var python: String { path + "/bin/python" }
    static var llm: String { path + "/bin/llm" }
    static let available: Bool = {
        guard FileManager.default.isExecutableFile(atPath: path + "/bin/python"), FileManager.default.isExecutableFile(atPath: path + "/bin/llm")
        else { return false }
        return run([path + "/bin/python", "-c", "import openai, anthropic, llm"]).code == 0
    }()
    static let missing: Comment = "the Python SDK clients are not installed at \(path): run `make test` (or `make pyclients`), or set AGENTBOX_PYCLIENTS to a venv with openai, anthropic and llm"
}

/// The fake provider behind the gateway: fake_model_server.py in gateway mode (/g/<scenario>), with the
/// real key, logging every request that reached it.
final class GatewayUpstream: @unchecked Sendable {
    let process = Process()
    let port: Int
    let violations: String
    let requests: String
    /// The real key: only agentbox (outside the sandbox) and this server know it.
    let key = "sk-agentbox-real-" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()

    init() throws {
        let base = "/tmp/agentbox-gwup-\(getpid())"
        violations = base + ".violations"
        requests = base + ".requests"
        for f in [violations, requests] { _ = FileManager.default.createFile(atPath: f, contents: Data()) }
        atexit {
            for suffix in [".violations", ".requests", ".port"] { try? FileManager.default.removeItem(atPath: "/tmp/agentbox-gwup-\(getpid())" + suffix) }
        }
        let portFile = base + ".port"
        // The server exits with the test process (its watchdog).
        port = try startTestServer(process, script: "fake_model_server.py", ["--key", key, "--violations", violations, "--requests", requests],
                                   portFile: portFile)
    }

    var keySHA256: String {
        shell("printf %s '\(key)' | sha256sum").out.split(separator: " ").first.map(String.init) ?? ""
    }

    /// The requests of `scenario` that reached the server, oldest first.
    func received(_ scenario: String) -> [[String: Any]] {
        let text = (try? String(contentsOfFile: requests, encoding: .utf8)) ?? ""
        return parseJSONLines(text).filter { $0["scenario"] as? String == scenario }
    }

    /// The violations logged for `scenario` (a request without the real key, a malformed request).
    func violations(_ scenario: String) -> [String] {
        ((try? String(contentsOfFile: violations, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            .filter { $0.hasPrefix("/g/\(scenario)/") }
    }
}

func parseJSONLines(_ text: String) -> [[String: Any]] {
    text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
}

/// One `agentbox run [options] -- CMD` with the clients of Tests/Clients in its workspace.
struct AgentRunResult {
    let name: String
    let home: String
    let workspace: String
    let result: RunResult
    let user: TestUser?

    /// The JSON lines the client programs printed.
    var lines: [[String: Any]] { parseJSONLines(result.out) }
    /// The answer line of `call`, the n-th of that name (0-based).
    func call(_ name: String, _ n: Int = 0) -> [String: Any]? {
        let found = lines.filter { $0["call"] as? String == name }
        return n < found.count ? found[n] : nil
    }
    var envLines: [[String: Any]] { lines.filter { $0["env"] != nil } }

    func agentbox(_ args: [String]) -> RunResult {
        run([TestEnv.agentbox] + args, user: user, env: ["AGENTBOX_HOME": home])
    }

    var journal: [[String: Any]] { parseJSONLines(agentbox(["logs", name, "--json"]).out) }
    func records(_ type: String) -> [[String: Any]] {
        journal.filter { $0["type"] as? String == type }.compactMap { $0["data"] as? [String: Any] }
    }
    var runID: String? { records("run.started").first?["id"] as? String }
    var confessions: [[String: Any]] { parseJSONLines(agentbox(["confessions", name, "--json"]).out) }

    /// Removes the run's home and workspace (at the end of a test).
    func remove() {
        try? FileManager.default.removeItem(atPath: home)
        try? FileManager.default.removeItem(atPath: workspace)
    }
}

/// Real SDK clients (openai, anthropic, llm) as bring-your-own agents behind the model gateway
/// (`agentbox run -- CMD`): what they get, what the journal counts, what reaches the provider, and that
/// the key never enters the sandbox.
@Suite(.serialized, .enabled(if: PyClients.available, PyClients.missing))
struct AgentsTests {
    static let upstream = try! GatewayUpstream()
    static let placeholder = "agentbox-gateway-placeholder"

    func tag(_ kind: String) -> String { "\(kind).\(UUID().uuidString.prefix(8).lowercased())" }

    /// Runs `command` (argv inside the sandbox, in the workspace holding Tests/Clients) under
    /// `agentbox run`, with the provider base URLs of `scenario`; bounded by agentbox's --timeout and
    /// by timeout(1) around it; checks that nothing it started is left.
    func agentRun(_ scenario: String, _ options: [String] = [], _ command: [String], user: TestUser? = nil,
                  env extra: [String: String] = [:]) -> AgentRunResult {
        let up = Self.upstream
        let name = "agents-" + scenario.replacingOccurrences(of: ".", with: "-")
        let home = "/tmp/agentbox-agentshome-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        if let user { _ = shell("chown \(user.uid):\(user.gid) '\(home)'") }
        let ws = TestEnv.workspace(owner: user)
        _ = shell("cp '\(TestEnv.repoRoot)/Tests/Clients/'*.py '\(ws)/' && chmod a+r '\(ws)/'*.py")
        var env = ["AGENTBOX_HOME": home, "OPENAI_API_KEY": up.key, "ANTHROPIC_API_KEY": up.key,
                   "OPENAI_BASE_URL": "http://127.0.0.1:\(up.port)/g/\(scenario)/v1", "ANTHROPIC_BASE_URL": "http://127.0.0.1:\(up.port)/g/\(scenario)",
                   "AGENTBOX_GRACE": "10"]
        for (k, v) in extra { env[k] = v }
        let argv = ["/usr/bin/timeout", "-k", "5", "90", TestEnv.agentbox, "run", "--timeout", "60s", "--ro", PyClients.path, "--name", name]
            + options + ["--"] + command
        let r = run(argv, cwd: ws, user: user, env: env)
        #expect(eventually(5) { !hostHasProcess(withMarker: name) }, "a process of run \(name) is left")
        return AgentRunResult(name: name, home: home, workspace: ws, result: r, user: user)
    }

    /// The openai or anthropic client program with `calls`, told the key's digest to look for it.
    func client(_ program: String, _ calls: [String]) -> [String] {
        [PyClients.python, program, "--key-sha256", Self.upstream.keySHA256, "--key-length", "\(Self.upstream.key.utf8.count)"] + calls
    }

    /// What every run must show about the key: placeholders inside, not found by the client, not in the
    /// workspace nor in agentbox's home (journal, confessions) afterwards.
    func expectKeyStayedOutside(_ r: AgentRunResult, sourceLocation: SourceLocation = #_sourceLocation) {
        let key = Self.upstream.key
        #expect(!r.envLines.isEmpty, "the client ran: \(r.result)", sourceLocation: sourceLocation)
        for line in r.envLines {
            let env = line["env"] as? [String: Any]
            #expect(env?["OPENAI_API_KEY"] as? String == Self.placeholder && env?["ANTHROPIC_API_KEY"] as? String == Self.placeholder,
                    "\(line)", sourceLocation: sourceLocation)
            #expect(env?["OPENAI_BASE_URL"] as? String == "http://127.0.0.1:3129/v1" && env?["ANTHROPIC_BASE_URL"] as? String == "http://127.0.0.1:3129",
                    "\(line)", sourceLocation: sourceLocation)
            #expect(line["key_scan"] as? String == "not found", "\(line)", sourceLocation: sourceLocation)
        }
        #expect(!r.result.out.contains(key) && !r.result.err.contains(key), "the key reached the client's output", sourceLocation: sourceLocation)
        let ws = shell("grep -rlF -- '\(key)' '\(r.workspace)'")
        #expect(ws.code == 1, "the key is in the workspace: \(ws)", sourceLocation: sourceLocation)
        let home = shell("grep -rlF -- '\(key)' '\(r.home)'")
        #expect(home.code == 1, "the key is in agentbox's home (journal, feed): \(home)", sourceLocation: sourceLocation)
    }

    /// The model.response records' usage equals what the fake provider sent, call by call, not estimated.
    func expectUsageMatches(_ r: AgentRunResult, _ scenario: String, sourceLocation: SourceLocation = #_sourceLocation) {
        // Every call is journaled; listing models is not a model call (no usage).
        let listing = Set(r.records("model.request").filter { $0["path"] as? String == "/v1/models" }.compactMap { $0["call"] as? Int })
        let responses = r.records("model.response").filter { !listing.contains($0["call"] as? Int ?? -1) }
        let sent = Self.upstream.received(scenario).filter { $0["method"] as? String == "POST" && $0["status"] as? Int == 200 }
        #expect(responses.count == sent.count && !sent.isEmpty, "\(responses.count) responses, \(sent.count) upstream calls", sourceLocation: sourceLocation)
        for (response, request) in zip(responses, sent) {
            let usage = response["usage"] as? [String: Any]
            let given = request["usage"] as? [String: Any]
            let input = given?["prompt_tokens"] as? Int ?? given?["input_tokens"] as? Int
            let output = given?["completion_tokens"] as? Int ?? given?["output_tokens"] as? Int
            #expect(input != nil && usage?["input_tokens"] as? Int == input && usage?["output_tokens"] as? Int == output,
                    "journal \(String(describing: usage)) vs upstream \(String(describing: given))", sourceLocation: sourceLocation)
            #expect(usage?["total_tokens"] as? Int == (input ?? 0) + (output ?? 0), sourceLocation: sourceLocation)
            #expect(response["usage_estimated"] as? Bool == false, "\(response)", sourceLocation: sourceLocation)
        }
    }

    // MARK: what the gateway refuses

    @Test func providerToolsThatReachTheNetworkAreRefusedUnlessAllowed() throws {
        let s = tag("ok")
        // An Anthropic MCP connector and an OpenAI web search: the provider would fetch for the agent.
        let script = """
            curl -s -o /dev/null -w 'mcp:%{http_code}\\n' -H 'content-type: application/json' http://127.0.0.1:3129/v1/messages \\
              -d '{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"mcp_servers":[{"type":"url","url":"https://attacker.example/mcp","name":"x"}]}'
            curl -s -H 'content-type: application/json' http://127.0.0.1:3129/v1/chat/completions \\
              -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"web_search_options":{}}'
            """
        let r = agentRun(s, [], ["/bin/sh", "-c", script])
        defer { r.remove() }
        #expect(r.result.out.contains("mcp:400") && r.result.out.contains("agentbox_provider_tool_refused"), "\(r.result)")
        #expect(Self.upstream.received(s).isEmpty, "a refused call reached the provider: \(Self.upstream.received(s))")
        let allowed = agentRun(s, ["--allow-provider-tools"], ["/bin/sh", "-c", script])
        defer { allowed.remove() }
        #expect(!allowed.result.out.contains("agentbox_provider_tool_refused") && Self.upstream.received(s).count == 2, "\(allowed.result)")
    }

    @Test func aCommandThatGoesOnPastItsBudgetIsEndedAfterTheGracePeriod() throws {
        let s = tag("ok")
        let script = """
            curl -s -o /dev/null -w 'call:%{http_code}\\n' -H 'content-type: application/json' http://127.0.0.1:3129/v1/chat/completions \\
              -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
            sleep 100; echo still-here
            """
        let started = Date()
        let r = agentRun(s, ["--max-steps", "1"], ["/bin/sh", "-c", script], env: ["AGENTBOX_GRACE": "2"])
        defer { r.remove() }
        #expect(r.result.code == 3 && r.result.out.contains("call:200") && !r.result.out.contains("still-here"), "\(r.result)")
        #expect(Date().timeIntervalSince(started) < 60, "the sandbox was not ended after the grace period")
        #expect(r.records("run.ended").first?["state"] as? String == "budget", "\(r.journal)")
    }

    @Test func refusedCallsBackToBackAreRecordedUpToACap() throws {
        // Past the budget every call is refused at once, so an agent can make thousands a second: the
        // journal keeps the first 1000 and says it stopped.
        let s = tag("ok")
        let script = """
            import http.client, json
            body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            codes = {}
            for i in range(1101):
                c = http.client.HTTPConnection("127.0.0.1", 3129)
                c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                r = c.getresponse(); r.read(); c.close()
                codes[r.status] = codes.get(r.status, 0) + 1
            print(sorted(codes.items()))
            """
        let r = agentRun(s, ["--max-steps", "1"], ["/usr/bin/python3", "-c", script], env: ["AGENTBOX_GRACE": "60"])
        defer { r.remove() }
        #expect(r.result.code == 3 && r.result.out.contains("[(200, 1), (403, 1100)]"), "\(r.result)")
        #expect(r.records("model.error").count == 1000, "\(r.records("model.error").count) refusal records")
        #expect(r.records("warning").contains { ($0["message"] as? String)?.contains("later ones are not") == true }, "\(r.journal)")
    }

    @Test func onceABudgetIsOutListingAndCountingAreRefusedToo() throws {
        let s = tag("ok")
        let script = """
            curl -s -o /dev/null -w 'first:%{http_code}\\n' -H 'content-type: application/json' http://127.0.0.1:3129/v1/chat/completions \\
              -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
            curl -s -o /dev/null -w 'models:%{http_code}\\n' http://127.0.0.1:3129/v1/models
            """
        let r = agentRun(s, ["--max-steps", "1"], ["/bin/sh", "-c", script])
        defer { r.remove() }
        #expect(r.result.code == 3 && r.result.out.contains("first:200") && r.result.out.contains("models:403"), "\(r.result)")
        #expect(Self.upstream.received(s).count == 1, "\(Self.upstream.received(s))")
    }

    // MARK: the SDKs through the gateway

    @Test func openaiSDKStreamedAndNotWithToolsThroughTheGateway() throws {
        let s = tag("ok")
        let r = agentRun(s, [], client("openai_client.py", ["plain", "stream", "stream_usage", "tools", "stream_tools", "models"]))
        defer { r.remove() }
        #expect(r.result.code == 0, "\(r.result)")
        let hello = "Hello from the fake OpenAI upstream."
        let plain = try #require(r.call("plain"), "\(r.result)")
        #expect(plain["ok"] as? Bool == true && plain["text"] as? String == hello, "\(plain)")
        #expect((plain["usage"] as? [String: Any])?["total_tokens"] as? Int == 19, "\(plain)")
        // A stream that did not ask for usage: the text, and no usage-only chunk (the gateway asked
        // upstream and took it out); one that asked gets it.
        let stream = try #require(r.call("stream"), "\(r.result)")
        #expect(stream["ok"] as? Bool == true && stream["text"] as? String == hello, "\(stream)")
        #expect(stream["usage_chunk"] as? Bool == false, "the client got a usage chunk it did not ask for: \(stream)")
        let asked = try #require(r.call("stream_usage"), "\(r.result)")
        #expect(asked["usage_chunk"] as? Bool == true && (asked["usage"] as? [String: Any])?["total_tokens"] as? Int == 19, "\(asked)")
        let tools = try #require(r.call("tools"), "\(r.result)")
        #expect(tools["tool"] as? String == "get_weather" && (tools["arguments"] as? [String: Any])?["city"] as? String == "Paris", "\(tools)")
        #expect(tools["text"] as? String == "The tool said: sunny, 21 C", "\(tools)")
        let streamTools = try #require(r.call("stream_tools"), "\(r.result)")
        #expect(streamTools["tool"] as? String == "get_weather" && streamTools["text"] as? String == "The tool said: rain, 12 C", "\(streamTools)")
        #expect(streamTools["usage_chunk"] as? Bool == false, "\(streamTools)")
        #expect(r.call("models")?["models"] as? [String] == ["gpt-4o-mini"], "\(r.result)")

        // What reached the provider: the real key as a bearer token on every request, include_usage on
        // every streamed one, the placeholder never.
        let got = Self.upstream.received(s)
        #expect(got.count == 8, "\(got)")
        #expect(got.allSatisfy { $0["auth_ok"] as? Bool == true && $0["placeholder"] as? Bool == false }, "\(got)")
        let streamed = got.filter { $0["stream"] as? Bool == true }
        #expect(streamed.count == 4 && streamed.allSatisfy { $0["include_usage"] as? Bool == true }, "\(streamed)")
        #expect(Self.upstream.violations(s).isEmpty, "\(Self.upstream.violations(s))")

        // The journal: 7 model calls and the listing of models (journaled, not a step), the provider's usage exactly.
        expectUsageMatches(r, s)
        #expect(r.records("model.request").filter { $0["path"] as? String != "/v1/models" }.count == 7)
        #expect(r.records("model.request").filter { $0["path"] as? String == "/v1/models" }.count == 1)
        #expect((r.records("usage").first?["steps"] as? Int) == 7, "\(r.journal)")
        #expect(r.records("run.ended").first?["state"] as? String == "finished", "\(r.journal)")
        expectKeyStayedOutside(r)
    }

    @Test func anthropicSDKStreamedAndNotWithToolsThroughTheGateway() throws {
        let s = tag("ok")
        let r = agentRun(s, [], client("anthropic_client.py", ["plain", "stream", "tools", "stream_tools"]))
        defer { r.remove() }
        #expect(r.result.code == 0, "\(r.result)")
        let hello = "Hello from the fake Anthropic upstream."
        for call in ["plain", "stream"] {
            let line = try #require(r.call(call), "\(r.result)")
            #expect(line["ok"] as? Bool == true && line["text"] as? String == hello, "\(line)")
            let usage = line["usage"] as? [String: Any]
            #expect(usage?["input_tokens"] as? Int == 12 && usage?["output_tokens"] as? Int == 7, "\(line)")
        }
        for call in ["tools", "stream_tools"] {
            let line = try #require(r.call(call), "\(r.result)")
            #expect(line["tool"] as? String == "get_weather" && line["text"] as? String == "The tool said: sunny, 21 C", "\(line)")
        }
        let got = Self.upstream.received(s)
        #expect(got.count == 6, "\(got)")
        // The real key in x-api-key, as Anthropic takes it; no Authorization header, no placeholder.
        #expect(got.allSatisfy { $0["auth_ok"] as? Bool == true && ($0["other_auth_headers"] as? [Any])?.isEmpty == true
                                 && $0["placeholder"] as? Bool == false }, "\(got)")
        #expect(got.filter { $0["stream"] as? Bool == true }.count == 3, "\(got)")
        #expect(Self.upstream.violations(s).isEmpty, "\(Self.upstream.violations(s))")
        expectUsageMatches(r, s)
        expectKeyStayedOutside(r)
    }

    /// The key scan of the client programs finds a key that is there (so "not found" above means something).
    @Test func theClientsKeyScanFindsAKeyThatIsThere() throws {
        let up = Self.upstream
        let r = run([PyClients.python, TestEnv.repoRoot + "/Tests/Clients/openai_client.py", "--key-sha256", up.keySHA256,
                     "--key-length", "\(up.key.utf8.count)"], env: ["OPENAI_API_KEY": up.key])
        let line = try #require(parseJSONLines(r.out).first, "\(r)")
        #expect(line["key_scan"] as? String == "found", "\(line)")
        #expect((line["key_places"] as? [String])?.contains("/proc/self/environ") == true, "\(line)")
    }

    /// The gateway streams: chunks 0.4 s apart upstream arrive spread out, not all at the end.
    @Test func aSlowStreamArrivesAsItComes() throws {
        let s = tag("slow")
        let r = agentRun(s, [], client("openai_client.py", ["stream"]))
        defer { r.remove() }
        #expect(r.result.code == 0, "\(r.result)")
        let line = try #require(r.call("stream"), "\(r.result)")
        #expect(line["text"] as? String == "Hello from the fake OpenAI upstream.", "\(line)")
        #expect((line["spread"] as? Double ?? 0) >= 0.8, "the chunks arrived together, the stream was buffered: \(line)")
    }

    // MARK: budgets

    /// A budget that runs out after two calls (steps; tokens: 19 a call, the second passes 30): the
    /// next calls get an error the SDK raises, and never reach the provider.
    @Test(arguments: [(["--max-steps", "2"], "openai_client.py", "step budget (2 model calls) is used up", "step budget"),
                      (["--max-tokens", "30"], "anthropic_client.py", "token budget (30) is used up", "token budget")])
    func aBudgetRefusesCallsWithAnErrorTheSDKRaises(options: [String], program: String, message: String, words: String) throws {
        let s = tag("ok")
        let r = agentRun(s, options, client(program, ["plain", "plain", "plain", "plain"]))
        defer { r.remove() }
        #expect(r.result.code == 3, "\(r.result)")
        for n in 0..<2 { #expect(r.call("plain", n)?["ok"] as? Bool == true, "\(r.result)") }
        for n in 2..<4 {
            let line = try #require(r.call("plain", n), "\(r.result)")
            #expect(line["error"] as? String == "PermissionDeniedError" && line["status"] as? Int == 403, "\(line)")
            #expect((line["message"] as? String)?.contains(message) == true, "\(line)")
        }
        #expect(Self.upstream.received(s).count == 2, "refused calls never reach the provider")
        try expectBudgetEnding(r, words)
        expectKeyStayedOutside(r)
    }

    func expectBudgetEnding(_ r: AgentRunResult, _ words: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let budget = r.records("budget")
        #expect(budget.count == 1 && (budget.first?["exceeded"] as? String)?.contains(words) == true, "\(budget)", sourceLocation: sourceLocation)
        let ended = r.records("run.ended").first
        #expect(ended?["state"] as? String == "budget" && ended?["exit_code"] as? Int == 3, "\(String(describing: ended))", sourceLocation: sourceLocation)
        let id = try #require(r.runID, sourceLocation: sourceLocation)
        let feed = r.confessions
        #expect(feed.contains { $0["category"] as? String == "budget" && $0["run"] as? String == id
                                && ($0["summary"] as? String)?.contains(words) == true }, "\(feed)", sourceLocation: sourceLocation)
    }

    // MARK: provider behaviours

    @Test func anAnswerWithoutUsageIsEstimatedAndMarked() throws {
        let s = tag("nousage")
        let r = agentRun(s, [], client("openai_client.py", ["plain", "stream"]))
        defer { r.remove() }
        #expect(r.result.code == 0, "\(r.result)")
        #expect(r.call("plain")?["text"] as? String == "Hello from the fake OpenAI upstream." && r.call("plain")?["usage"] is NSNull, "\(r.result)")
        #expect(r.call("stream")?["ok"] as? Bool == true, "\(r.result)")
        let responses = r.records("model.response")
        #expect(responses.count == 2 && responses.allSatisfy { $0["usage_estimated"] as? Bool == true }, "\(responses)")
        #expect(responses.allSatisfy { (($0["usage"] as? [String: Any])?["total_tokens"] as? Int ?? 0) > 0 }, "an estimate is not zero: \(responses)")
    }

    @Test func aFlakyProviderIsRetriedAndTheClientSeesSuccess() throws {
        let s = tag("flaky")
        let r = agentRun(s, [], client("openai_client.py", ["plain"]))
        defer { r.remove() }
        #expect(r.result.code == 0, "\(r.result)")
        #expect(r.call("plain")?["ok"] as? Bool == true && r.call("plain")?["text"] as? String == "Hello from the fake OpenAI upstream.", "\(r.result)")
        let got = Self.upstream.received(s)
        #expect(got.map { $0["status"] as? Int ?? 0 } == [503, 200], "\(got)")
        #expect(r.records("model.attempt").count == 1, "\(r.journal)")
        #expect(r.records("model.response").first?["attempts"] as? Int == 2, "\(r.records("model.response"))")
        expectUsageMatches(r, s)
    }

    @Test func aProviderErrorEchoingTheKeyReachesTheClientRedacted() throws {
        let s = tag("echokey")
        let py = PyClients.python, up = Self.upstream
        let scan = "--key-sha256 \(up.keySHA256) --key-length \(up.key.utf8.count)"
        let script = "\(py) openai_client.py \(scan) plain; \(py) anthropic_client.py \(scan) plain"
        let r = agentRun(s, [], ["/bin/sh", "-c", script])
        defer { r.remove() }
        #expect(r.result.code == 0, "\(r.result)")
        #expect(Self.upstream.received(s).count == 2, "the provider was reached (and echoed the key)")
        for (n, error) in [(0, "AuthenticationError"), (1, "AuthenticationError")] {
            let line = try #require(r.call("plain", n), "\(r.result)")
            #expect(line["error"] as? String == error && line["status"] as? Int == 401, "\(line)")
            let message = line["message"] as? String ?? ""
            #expect(message.contains("[REDACTED]") && !message.contains(up.key), "\(line)")
        }
        let errors = r.records("model.error")
        #expect(errors.count == 2 && errors.allSatisfy { ($0["message"] as? String)?.contains("[REDACTED]") == true }, "\(errors)")
        expectKeyStayedOutside(r)
    }

    @Test func anAnswerHoldingTheKeyIsRedactedAcrossItsChunks() throws {
        // The provider's answer carries the key, written in two sends split inside it: the gateway sees
        // two chunks, neither holding the whole key.
        let s = tag("leakkey")
        let up = Self.upstream
        let script = """
            curl -s -H 'content-type: application/json' http://127.0.0.1:3129/v1/chat/completions \\
              -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
            """
        let r = agentRun(s, [], ["/bin/sh", "-c", script])
        defer { r.remove() }
        #expect(r.result.out.contains("the key is [REDACTED]!") && !r.result.out.contains(up.key), "\(r.result)")
        #expect(Self.upstream.received(s).count == 1)
        let response = try #require(r.records("model.response").first, "\(r.journal)")
        let body = "\(response)"
        #expect(!body.contains(up.key) && body.contains("[REDACTED]"), "the journal's copy: \(response)")
        let home = shell("grep -rlF -- '\(up.key)' '\(r.home)'")
        #expect(home.code == 1, "the key is in agentbox's home: \(home)")
    }

    // MARK: a real CLI agent

    @Test func llmRunsEndToEnd() throws {
        let s = tag("ok")
        let r = agentRun(s, [], ["/bin/sh", "-c", "LLM_USER_PATH=/tmp/llm \(PyClients.llm) -m gpt-4o-mini 'Say hello' </dev/null"])
        defer { r.remove() }
        #expect(r.result.code == 0, "\(r.result)")
        #expect(r.result.out == "Hello from the fake OpenAI upstream.\n", "\(r.result)")
        let got = Self.upstream.received(s)
        #expect(got.count == 1 && got.first?["stream"] as? Bool == true && got.first?["auth_ok"] as? Bool == true, "\(got)")
        #expect(r.records("model.response").count == 1, "\(r.journal)")
        expectUsageMatches(r, s)
        #expect(shell("grep -rlF -- '\(Self.upstream.key)' '\(r.home)' '\(r.workspace)'").code == 1)
    }

    // MARK: confessions from inside

    /// `agentbox confess` from a shell and `agentbox mcp` driven over stdio, inside: both confessions are
    /// in the node's feed with the run's id.
    func expectConfessionsFromInside(_ r: AgentRunResult, _ marker: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(r.result.code == 0, "\(r.result)", sourceLocation: sourceLocation)
        #expect(r.result.out.contains("confession recorded (seq "), "\(r.result)", sourceLocation: sourceLocation)
        let mcp = parseJSONLines(r.result.out)
        #expect(mcp.count == 4, "\(r.result)", sourceLocation: sourceLocation)
        #expect(((mcp.first?["result"] as? [String: Any])?["serverInfo"] as? [String: Any]) != nil, "\(mcp)", sourceLocation: sourceLocation)
        let tools = ((mcp.dropFirst().first?["result"] as? [String: Any])?["tools"] as? [[String: Any]])?.compactMap { $0["name"] as? String }
        #expect(tools?.contains("confess") == true, "\(mcp)", sourceLocation: sourceLocation)
        let call = mcp.dropFirst(2).first?["result"] as? [String: Any]
        #expect(call != nil && call?["isError"] as? Bool != true, "\(mcp)", sourceLocation: sourceLocation)
        #expect(mcp.last?["exit"] as? Int == 0, "\(mcp)", sourceLocation: sourceLocation)
        let id = try #require(r.runID, sourceLocation: sourceLocation)
        let feed = r.confessions
        for summary in ["from the shell \(marker)", "over mcp \(marker)"] {
            let found = feed.filter { $0["summary"] as? String == summary }
            #expect(found.count == 1 && found.first?["run"] as? String == id && found.first?["name"] as? String == r.name,
                    "\(summary): \(feed)", sourceLocation: sourceLocation)
        }
    }

    func confessScript(_ marker: String) -> String {
        "agentbox confess --severity warning --category tests 'from the shell \(marker)' && python3 mcp_driver.py 'over mcp \(marker)'"
    }

    @Test func confessAndMCPInsideAnExec() throws {
        let m = "m-\(UUID().uuidString.prefix(8))"
        let name = "agents-exec-\(m)"
        let home = "/tmp/agentbox-agentshome-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        let ws = TestEnv.workspace()
        _ = shell("cp '\(TestEnv.repoRoot)/Tests/Clients/mcp_driver.py' '\(ws)/'")
        let result = run(["/usr/bin/timeout", "-k", "5", "60", TestEnv.agentbox, "exec", "--timeout", "50s", "--name", name, "--",
                          "/bin/sh", "-c", confessScript(m)], cwd: ws, env: ["AGENTBOX_HOME": home])
        #expect(eventually(5) { !hostHasProcess(withMarker: name) })
        let r = AgentRunResult(name: name, home: home, workspace: ws, result: result, user: nil)
        defer { r.remove() }
        try expectConfessionsFromInside(r, m)
    }

    @Test func confessAndMCPInsideARunOfACommand() throws {
        let m = "m-\(UUID().uuidString.prefix(8))"
        let r = agentRun(tag("ok"), [], ["/bin/sh", "-c", confessScript(m)])
        defer { r.remove() }
        try expectConfessionsFromInside(r, m)
    }

    // MARK: rootless

    @Test(.enabled(if: TestUser.shared != nil, "needs root to create the unprivileged test user"))
    func anSDKCallThroughTheGatewayRootless() throws {
        let user = try #require(TestUser.shared)
        let s = tag("ok")
        let r = agentRun(s, [], client("openai_client.py", ["stream"]), user: user)
        defer { r.remove() }
        #expect(r.result.code == 0, "\(r.result)")
        #expect(r.call("stream")?["text"] as? String == "Hello from the fake OpenAI upstream." && r.call("stream")?["usage_chunk"] as? Bool == false,
                "\(r.result)")
        #expect(Self.upstream.received(s).first?["auth_ok"] as? Bool == true)
        expectUsageMatches(r, s)
        expectKeyStayedOutside(r)
    }
}
