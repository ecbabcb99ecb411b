// `agentbox` inside a sandbox: the same binary as agentbox-init, bind-mounted read-only at
// /run/agentbox/bin/agentbox and started by that name. It is then a small client of the agentbox
// service (ServiceClient.swift): `agentbox confess` and `agentbox mcp` (MCP.swift).
import AgentboxCore
import Glibc

enum Client {
    /// Whether this process was started as the in-sandbox client (argv[0]'s basename is `agentbox`).
    /// Compared on the C string, without building Swift strings.
    static func invoked(argv0: UnsafeMutablePointer<CChar>?) -> Bool {
        guard let argv0 else { return false }
        let base = strrchr(argv0, 0x2F).map { $0 + 1 } ?? argv0
        return strcmp(base, "agentbox") == 0
    }

    static let usage = """
        usage: agentbox confess --severity info|warning|blocker --category CATEGORY SUMMARY... [--details TEXT]
               agentbox mcp

        Inside an agentbox sandbox, tell the people who operate this machine about a problem.
          confess   record a confession (see 'agentbox confess --help')
          mcp       serve the confess tool to an MCP client on stdin/stdout (see 'agentbox mcp --help')

        """

    static let confessHelp = """
        usage: agentbox confess --severity info|warning|blocker --category CATEGORY SUMMARY... [--details TEXT]

        Report a problem to the people who operate this machine: something blocks you, the environment
        is broken, missing something or wrong, a permission or limit stops you, the task is impossible or
        unsafe as stated, or you did something they should know about. The confession is recorded for
        them; it does not end or stop anything.

          --severity LEVEL   info, warning or blocker (required)
          --category NAME    a short category, e.g. environment, permissions, tests, network (required)
          SUMMARY...         one line (required); several words are joined with spaces
          --details TEXT     more detail (optional); '-' reads it from standard input (at most 64 KiB)
          -h, --help         this help

        On success it prints 'confession recorded (seq N)'. Exit status: 0 recorded, 1 the request
        failed, 2 a usage error.
        Environment: AGENTBOX_API, the agentbox service (http://HOST:PORT, default http://127.0.0.1:3129).

        """

    static let mcpHelp = """
        usage: agentbox mcp

        An MCP server on standard input and output (JSON-RPC 2.0, one message per line) with one tool,
        confess: the same as 'agentbox confess'. To give it to an agent, add to its MCP configuration:
          {"mcpServers": {"agentbox": {"command": "agentbox", "args": ["mcp"]}}}
        It ends at the end of its input, with exit status 0.
        Environment: AGENTBOX_API, the agentbox service (http://HOST:PORT, default http://127.0.0.1:3129).

        """

    /// Runs the client with `args` (argv without argv[0]); the exit status.
    static func run(_ args: [String]) -> Int32 {
        // A reader that went away is an error on write, not a signal that kills without a word.
        signal(SIGPIPE, SIG_IGN)
        guard let command = args.first else {
            writeAll(2, usage)
            return 2
        }
        switch command {
        case "-h", "--help", "help":
            writeAll(1, usage)
            return 0
        case "confess":
            do {
                return try confess(Array(args.dropFirst()))
            } catch {
                writeAll(2, error.description + "\n")
                return error.exitCode
            }
        case "mcp":
            let rest = args.dropFirst()
            if rest.contains("-h") || rest.contains("--help") {
                writeAll(1, mcpHelp)
                return 0
            }
            if let extra = rest.first {
                writeAll(2, "agentbox mcp: unexpected argument '\(TerminalText.line(extra))'\n  hint: agentbox mcp takes no arguments\n")
                return 2
            }
            return MCPServer().run()
        default:
            writeAll(2, "agentbox: unknown command '\(TerminalText.line(command))'\n  hint: inside a sandbox the commands are confess and mcp ('agentbox --help')\n")
            return 2
        }
    }

    /// `agentbox confess ...`: 0 when recorded; throws what failed (exit 1) or a usage error (exit 2).
    static func confess(_ args: [String]) throws(AgentboxError) -> Int32 {
        func usageError(_ message: String) -> AgentboxError {
            AgentboxError(stage: "agentbox confess", message, hint: "see 'agentbox confess --help'", exitCode: 2)
        }
        var severity: String?, category: String?, details: String?
        var words: [String] = []
        var i = 0
        var optionsEnded = false
        while i < args.count {
            let arg = args[i]
            i += 1
            if optionsEnded || !arg.hasPrefix("-") || arg == "-" {
                words.append(arg)
                continue
            }
            if arg == "--" { optionsEnded = true; continue }
            if arg == "-h" || arg == "--help" {
                writeAll(1, confessHelp)
                return 0
            }
            // --name VALUE or --name=VALUE
            var name = arg, value: String? = nil
            if let eq = arg.firstIndex(of: "=") {
                name = String(arg[..<eq])
                value = String(arg[arg.index(after: eq)...])
            }
            guard ["--severity", "--category", "--details"].contains(name) else {
                throw usageError("unknown option '\(TerminalText.line(name))'")
            }
            if value == nil {
                guard i < args.count else { throw usageError("\(name) needs a value") }
                value = args[i]
                i += 1
            }
            switch name {
            case "--severity":
                if severity != nil { throw usageError("--severity given twice") }
                severity = value
            case "--category":
                if category != nil { throw usageError("--category given twice") }
                category = value
            default:
                if details != nil { throw usageError("--details given twice") }
                details = value
            }
        }
        if details == "-" { details = try readDetails() }
        let confession = try Confession.make(severity: severity, category: category,
                                             summary: words.isEmpty ? nil : words.joined(separator: " "), details: details)
        let seq = try ServiceClient.confess(confession, to: try ServiceEndpoint.fromEnvironment())
        writeAll(1, "confession recorded (seq \(seq))\n")
        return 0
    }

    static let detailsLimit = 64 << 10

    /// `--details -`: standard input, at most 64 KiB, without one final newline.
    static func readDetails() throws(AgentboxError) -> String {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while data.count <= detailsLimit {
            let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw AgentboxError(stage: "agentbox confess", "reading the details from standard input: \(FileIO.errnoString())", exitCode: 1) }
            if n == 0 { break }
            data += chunk[0..<n]
        }
        if data.count > detailsLimit {
            throw AgentboxError(stage: "agentbox confess", "the details on standard input are longer than 64 KiB",
                                hint: "give the gist; the operators can look at the rest", exitCode: 2)
        }
        if data.last == 0x0A { data.removeLast() }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Writes all of `bytes` to `fd` (EINTR retried); false when the descriptor failed.
@discardableResult
func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        offset += n
    }
    return true
}

@discardableResult
func writeAll(_ fd: Int32, _ text: String) -> Bool { writeAll(fd, Array(text.utf8)) }
