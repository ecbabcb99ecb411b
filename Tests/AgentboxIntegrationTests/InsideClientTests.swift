import Foundation
import Testing

/// The stand-in for the agentbox service (Tests/FakeModelServer/confess_stub.py): records each request.
final class ConfessStub: @unchecked Sendable {
    let process = Process()
    let port: Int
    let requestsFile: String

    init() throws {
        // Named by the test process's pid, so that it can be removed at exit.
        requestsFile = "/tmp/agentbox-confess-stub-\(getpid())"
        _ = FileManager.default.createFile(atPath: requestsFile, contents: Data())
        atexit {
            for suffix in ["", ".port"] { try? FileManager.default.removeItem(atPath: "/tmp/agentbox-confess-stub-\(getpid())" + suffix) }
        }
        let portFile = requestsFile + ".port"
        port = try startTestServer(process, script: "confess_stub.py", ["--requests", requestsFile], portFile: portFile)
    }

    deinit { process.terminate() }

    var url: String { "http://127.0.0.1:\(port)" }

    /// Every request received so far, oldest first.
    var requests: [[String: Any]] {
        let text = (try? String(contentsOfFile: requestsFile, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// The requests whose confession summary is `summary`.
    func received(summary: String) -> [[String: Any]] {
        requests.filter { ($0["body"] as? [String: Any])?["summary"] as? String == summary }
    }
}

/// An `agentbox mcp` process, talked to one line at a time.
final class MCPSession {
    let process = Process()
    let input = Pipe()
    let output = Pipe()
    var buffer: [UInt8] = []

    init(client: String, api: String) throws {
        process.executableURL = URL(fileURLWithPath: client)
        process.arguments = ["mcp"]
        process.environment = ["PATH": "/usr/bin:/bin", "AGENTBOX_API": api]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    deinit { if process.isRunning { process.terminate() } }

    func send(_ line: String) { input.fileHandleForWriting.write(Data((line + "\n").utf8)) }

    /// The next line the server writes, or nil when none comes within `seconds` (or its output ends).
    func nextLine(within seconds: Double = 15) -> String? {
        let fd = output.fileHandleForReading.fileDescriptor
        let end = Date().addingTimeInterval(seconds)
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            let left = end.timeIntervalSinceNow
            if left <= 0 { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(left * 1000) + 1) <= 0 { continue }  // timeout or EINTR: the deadline decides
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
        }
    }

    /// Sends `line` and returns the answer, parsed.
    func call(_ line: String) -> [String: Any]? {
        send(line)
        guard let answer = nextLine() else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any]
    }

    /// Closes stdin; the exit status, or nil when the server is still running after `seconds`.
    func finish(within seconds: Double = 10) -> Int32? {
        try? input.fileHandleForWriting.close()
        guard eventually(seconds, { !process.isRunning }) else { return nil }
        return process.terminationStatus
    }
}

/// `agentbox confess` and `agentbox mcp`: agentbox-init started by the name `agentbox`, as inside a sandbox,
/// against a stand-in for the agentbox service.
@Suite(.serialized) struct InsideClientTests {
    static let stub = try! ConfessStub()

    /// A folder with `agentbox`, a symbolic link to the built agentbox-init.
    static let client: String = {
        let dir = "/tmp/agentbox-client-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: "/tmp/agentbox-client-\(getpid())") }
        try! FileManager.default.createSymbolicLink(atPath: dir + "/agentbox", withDestinationPath: TestEnv.installDir + "/agentbox-init")
        return dir + "/agentbox"
    }()

    func agentbox(_ args: [String], api: String? = nil, stdin: String? = nil) -> RunResult {
        run([Self.client] + args, env: ["AGENTBOX_API": api ?? Self.stub.url], stdin: stdin)
    }

    func marker() -> String { "m-\(UUID().uuidString.prefix(8))" }

    /// A port on 127.0.0.1 that nothing listens on (it was free a moment ago).
    func freePort() -> Int {
        let r = shell("python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'")
        return Int(r.out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    @Test func confessPostsExactlyTheContractFields() throws {
        let m = marker()
        let r = agentbox(["confess", "--severity", "warning", "--category", "environment", "the disk", "is full", m,
                          "--details", "df says 100%"])
        #expect(r.code == 0, "\(r)")
        #expect(r.out == "confession recorded (seq 7)\n", "\(r)")
        let got = Self.stub.received(summary: "the disk is full \(m)")
        try #require(got.count == 1, "\(Self.stub.requests)")
        let request = got[0]
        #expect(request["method"] as? String == "POST")
        #expect(request["path"] as? String == "/agentbox/v1/confess")
        #expect(request["version"] as? String == "HTTP/1.1")
        #expect(request["host"] as? String == "127.0.0.1:\(Self.stub.port)")
        #expect(request["content_type"] as? String == "application/json")
        #expect(request["connection"] as? String == "close")
        let body = try #require(request["body"] as? [String: Any])
        #expect(Set(body.keys) == ["severity", "category", "summary", "details"])
        #expect(body["severity"] as? String == "warning")
        #expect(body["category"] as? String == "environment")
        #expect(body["details"] as? String == "df says 100%")
    }

    @Test func detailsAreOptionalOrReadFromStdin() throws {
        let m1 = marker(), m2 = marker()
        let plain = agentbox(["confess", "--severity=info", "--category=tests", m1])
        #expect(plain.code == 0, "\(plain)")
        let body1 = try #require(Self.stub.received(summary: m1).first?["body"] as? [String: Any], "\(Self.stub.requests)")
        #expect(Set(body1.keys) == ["severity", "category", "summary"])

        let piped = agentbox(["confess", "--severity", "blocker", "--category", "tests", "--details", "-", m2], stdin: "line 1\nline 2\n")
        #expect(piped.code == 0, "\(piped)")
        let body2 = try #require(Self.stub.received(summary: m2).first?["body"] as? [String: Any], "\(Self.stub.requests)")
        #expect(body2["details"] as? String == "line 1\nline 2")
        #expect(body2["severity"] as? String == "blocker")

        let m3 = marker()
        let big = agentbox(["confess", "--severity", "info", "--category", "tests", "--details", "-", m3],
                           stdin: String(repeating: "d", count: 65 << 10))
        #expect(big.code == 2, "\(big)")
        #expect(big.err.contains("64 KiB"), "\(big)")
        #expect(Self.stub.received(summary: m3).isEmpty)
    }

    @Test func usageErrorsExitTwoAndSendNothing() {
        let m = marker()
        let bad = agentbox(["confess", "--severity", "urgent", "--category", "env", m])
        #expect(bad.code == 2, "\(bad)")
        #expect(bad.err.hasPrefix("agentbox confess: invalid severity 'urgent'"), "\(bad)")
        #expect(bad.err.contains("info, warning or blocker"), "\(bad)")
        for args in [["--severity", "info", m], ["--severity", "info", "--category", " ", m], ["--severity", "info", "--category", "env"],
                     ["--category", "env", m], ["--severity", "info", "--category", "env", "--frobnicate", m],
                     ["--severity", "info", "--category", "env", m, "--details"]] {
            let r = agentbox(["confess"] + args)
            #expect(r.code == 2, "\(args): \(r)")
            #expect(r.err.hasPrefix("agentbox confess: "), "\(args): \(r)")
            #expect(r.err.contains("hint: "), "\(args): \(r)")
        }
        #expect(Self.stub.received(summary: m).isEmpty, "\(Self.stub.requests)")
    }

    @Test func serviceErrorIsShownSafely() {
        let r = agentbox(["confess", "--severity", "info", "--category", "env", "fail"])
        #expect(r.code == 1, "\(r)")
        #expect(r.out.isEmpty, "\(r)")
        #expect(r.err.contains("HTTP 409"), "\(r)")
        #expect(r.err.contains("the confession feed is full \\x1b[31mred\\x1b[0m"), "\(r)")
        #expect(!r.err.contains("\u{1b}"), "an escape sequence from the server reached the terminal: \(r)")
    }

    @Test func oversizedAnswerIsRefused() {
        let r = agentbox(["confess", "--severity", "info", "--category", "env", "huge"])
        #expect(r.code == 1, "\(r)")
        #expect(r.err.contains("larger than 1 MiB"), "\(r)")
    }

    @Test func unreachableServiceGivesTheHint() {
        let port = freePort()
        #expect(port > 0)
        let r = agentbox(["confess", "--severity", "info", "--category", "env", "anyone there"], api: "http://127.0.0.1:\(port)")
        #expect(r.code == 1, "\(r)")
        #expect(r.err.contains("agentbox confess: the agentbox service at http://127.0.0.1:\(port) is not reachable (connection refused)"), "\(r)")
        #expect(r.err.contains("inside an agentbox sandbox?"), "\(r)")
    }

    @Test func endpointMustBeHTTPToIPv4OrLocalhost() {
        let m = marker()
        let local = agentbox(["confess", "--severity", "info", "--category", "env", m], api: "http://localhost:\(Self.stub.port)/")
        #expect(local.code == 0, "\(local)")
        #expect(Self.stub.received(summary: m).first?["host"] as? String == "localhost:\(Self.stub.port)")
        for api in ["https://127.0.0.1:\(Self.stub.port)", "http://example.com:80", "http://[::1]:\(Self.stub.port)",
                    "http://127.0.0.1", "http://127.0.0.1:\(Self.stub.port)/other", "http://127.0.0.01:\(Self.stub.port)",
                    "http://127.0.0.1:99999", "http://user@127.0.0.1:\(Self.stub.port)"] {
            let r = agentbox(["confess", "--severity", "info", "--category", "env", m], api: api)
            #expect(r.code == 1, "\(api): \(r)")
            #expect(r.err.contains("AGENTBOX_API is '\(api)'"), "\(api): \(r)")
        }
        #expect(Self.stub.received(summary: m).count == 1, "\(Self.stub.requests)")
    }

    @Test func helpNamesBothCommands() {
        for args in [["--help"], ["help"], ["-h"]] {
            let r = agentbox(args)
            #expect(r.code == 0, "\(args): \(r)")
            #expect(r.out.contains("agentbox confess") && r.out.contains("agentbox mcp"), "\(args): \(r)")
        }
        let none = agentbox([])
        #expect(none.code == 2, "\(none)")
        #expect(none.out.isEmpty && none.err.contains("agentbox confess") && none.err.contains("agentbox mcp"), "\(none)")
        let confess = agentbox(["confess", "--help"])
        #expect(confess.code == 0 && confess.out.contains("--severity") && confess.out.contains("--details"), "\(confess)")
        let mcp = agentbox(["mcp", "--help"])
        #expect(mcp.code == 0 && mcp.out.contains("MCP"), "\(mcp)")
        let other = agentbox(["exec", "--", "true"])
        #expect(other.code == 2 && other.err.contains("unknown command 'exec'"), "\(other)")
    }

    @Test func mcpServesConfessOverJSONRPC() throws {
        let session = try MCPSession(client: Self.client, api: Self.stub.url)
        let initialize = try #require(session.call(#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}"#))
        #expect(initialize["id"] as? Int == 1)
        let result = try #require(initialize["result"] as? [String: Any], "\(initialize)")
        #expect(result["protocolVersion"] as? String == "2025-03-26")
        #expect((result["capabilities"] as? [String: Any])?["tools"] is [String: Any])
        #expect((result["serverInfo"] as? [String: Any])?["name"] as? String == "agentbox")

        // A notification gets no answer: the next line is the ping's.
        session.send(#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        let ping = try #require(session.call(#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#))
        #expect(ping["id"] as? Int == 2 && ping["result"] is [String: Any], "\(ping)")

        let list = try #require(session.call(#"{"jsonrpc":"2.0","id":"list","method":"tools/list"}"#))
        #expect(list["id"] as? String == "list")
        let tools = try #require((list["result"] as? [String: Any])?["tools"] as? [[String: Any]], "\(list)")
        #expect(tools.count == 1 && tools.first?["name"] as? String == "confess", "\(tools)")
        let schema = try #require(tools.first?["inputSchema"] as? [String: Any])
        #expect(Set(schema["required"] as? [String] ?? []) == ["severity", "category", "summary"])
        let properties = try #require(schema["properties"] as? [String: Any])
        #expect(Set(properties.keys) == ["severity", "category", "summary", "details"])
        #expect((properties["severity"] as? [String: Any])?["enum"] as? [String] == ["info", "warning", "blocker"])
        let description = tools.first?["description"] as? String
        #expect(description?.contains("operate this machine") == true, "\(tools)")

        let m = marker()
        let call = try #require(session.call(#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"confess","arguments":{"severity":"blocker","category":"network","summary":"\#(m)","details":"no route"}}}"#))
        let called = try #require(call["result"] as? [String: Any], "\(call)")
        #expect(called["isError"] as? Bool == false, "\(call)")
        #expect((called["content"] as? [[String: Any]])?.first?["text"] as? String == "confession recorded (seq 7)", "\(call)")
        let body = try #require(Self.stub.received(summary: m).first?["body"] as? [String: Any], "\(Self.stub.requests)")
        #expect(body["severity"] as? String == "blocker" && body["category"] as? String == "network" && body["details"] as? String == "no route")

        // Bad arguments and a refused request are tool results with isError, not JSON-RPC errors.
        let bad = try #require(session.call(#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"confess","arguments":{"severity":"urgent","category":"x","summary":"\#(m)"}}}"#))
        let badResult = try #require(bad["result"] as? [String: Any], "\(bad)")
        #expect(badResult["isError"] as? Bool == true)
        let badText = (badResult["content"] as? [[String: Any]])?.first?["text"] as? String
        #expect(badText?.contains("info, warning or blocker") == true, "\(bad)")
        let failed = try #require(session.call(#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"confess","arguments":{"severity":"info","category":"x","summary":"fail"}}}"#))
        let failedText = ((failed["result"] as? [String: Any])?["content"] as? [[String: Any]])?.first?["text"] as? String ?? ""
        #expect((failed["result"] as? [String: Any])?["isError"] as? Bool == true, "\(failed)")
        #expect(failedText.contains("the confession feed is full") && !failedText.contains("\u{1b}"), "\(failed)")
        #expect(Self.stub.received(summary: m).count == 1, "bad arguments must not reach the service")

        let unknown = try #require(session.call(#"{"jsonrpc":"2.0","id":6,"method":"resources/list"}"#))
        #expect(unknown["id"] as? Int == 6)
        #expect((unknown["error"] as? [String: Any])?["code"] as? Int == -32601, "\(unknown)")

        let garbage = try #require(session.call("this is not json"))
        #expect(garbage["id"] is NSNull, "\(garbage)")
        #expect((garbage["error"] as? [String: Any])?["code"] as? Int == -32700, "\(garbage)")

        #expect(session.finish() == 0)
    }

    @Test func mcpRefusesOverlongLinesAndKeepsServing() throws {
        let session = try MCPSession(client: Self.client, api: Self.stub.url)
        // An unsupported version is answered with the newest one.
        let initialize = try #require(session.call(#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#))
        #expect((initialize["result"] as? [String: Any])?["protocolVersion"] as? String == "2025-06-18", "\(initialize)")
        let long = try #require(session.call(#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"pad":""# + String(repeating: "x", count: 3 << 19) + #""}}"#))
        #expect(long["id"] is NSNull, "\(long)")
        #expect((long["error"] as? [String: Any])?["code"] as? Int == -32600, "\(long)")
        let ping = try #require(session.call(#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#))
        #expect(ping["id"] as? Int == 3 && ping["result"] is [String: Any], "\(ping)")
        #expect(session.finish() == 0)
    }
}
