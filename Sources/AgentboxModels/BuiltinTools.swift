import AgentboxCore

/// The built-in agent tools of contracts.md: names and parameters are part of the contract.
public enum BuiltinTools {
    static func schema(_ properties: [(String, JSON)], required: [String]) -> JSON {
        .object([("type", "object"), ("properties", .object(properties)),
                 ("required", .array(required.map { .string($0) })), ("additionalProperties", false)])
    }

    static func prop(_ type: String, _ description: String, enumValues: [String]? = nil) -> JSON {
        var f: [(String, JSON)] = [("type", .string(type)), ("description", .string(description))]
        if let enumValues { f.append(("enum", .array(enumValues.map { .string($0) }))) }
        return .object(f)
    }

    public static let definitions: [ToolDefinition] = [
        ToolDefinition(name: BuiltinTool.shell.rawValue, description: "Run a command with /bin/sh -c in the workspace, inside the sandbox (no network, only the workspace and /tmp are writable). Returns the exit code and the output; long output is cut in the middle.",
                       parameters: schema([("command", prop("string", "The shell command line.")),
                                           ("timeout_s", prop("integer", "Seconds before the command is killed (optional)."))], required: ["command"])),
        ToolDefinition(name: BuiltinTool.readFile.rawValue, description: "Read a text file. Paths are relative to the workspace or absolute inside the sandbox.",
                       parameters: schema([("path", prop("string", "The file to read.")),
                                           ("offset", prop("integer", "First line to return, 1-based (optional).")),
                                           ("limit", prop("integer", "Number of lines to return (optional)."))], required: ["path"])),
        ToolDefinition(name: BuiltinTool.writeFile.rawValue, description: "Create or replace a file with the given content.",
                       parameters: schema([("path", prop("string", "The file to write.")),
                                           ("content", prop("string", "The complete new content."))], required: ["path", "content"])),
        ToolDefinition(name: BuiltinTool.editFile.rawValue, description: "Replace one exact, unique occurrence of old_text with new_text in a file. Fails if old_text is absent or appears more than once: include more context to make it unique.",
                       parameters: schema([("path", prop("string", "The file to edit.")),
                                           ("old_text", prop("string", "The exact text to replace.")),
                                           ("new_text", prop("string", "The replacement."))], required: ["path", "old_text", "new_text"])),
        ToolDefinition(name: BuiltinTool.confess.rawValue, description: "Report a problem to the people who operate this machine: something blocks you, the environment is broken or wrong, or you did something they should know about. Does not end the run.",
                       parameters: schema([("severity", prop("string", "How bad it is.", enumValues: ["info", "warning", "blocker"])),
                                           ("category", prop("string", "A short category, e.g. environment, permissions, tests, network.")),
                                           ("summary", prop("string", "One line.")),
                                           ("details", prop("string", "More detail (optional)."))], required: ["severity", "category", "summary"])),
        ToolDefinition(name: BuiltinTool.finish.rawValue, description: "End the run with a status and a summary of what was done.",
                       parameters: schema([("status", prop("string", "success or failure.", enumValues: ["success", "failure"])),
                                           ("summary", prop("string", "What was done and what is left."))], required: ["status", "summary"])),
    ]
}

/// The system prompt of `agentbox run`: where the model is, what its tools do, when to confess.
public enum AgentPrompt {
    public struct Facts: Sendable {
        public var workspace: String
        public var network: String
        public var limits: [String]
        public var budget: [String]
        public init(workspace: String, network: String, limits: [String], budget: [String]) {
            self.workspace = workspace
            self.network = network
            self.limits = limits
            self.budget = budget
        }
    }

    public static func system(_ f: Facts) -> String {
        var lines = [
            "You are an autonomous software agent working unattended inside an agentbox sandbox on a Linux machine. No human is watching in real time: work until the task is done, then call `finish`.",
            "",
            "Where you are:",
            "- The workspace is \(f.workspace). It is the current directory and the only place (besides /tmp) where you can write; everything else is read-only.",
            "- Network: \(f.network == "none" || f.network == "loopback" ? "none. There is no route to the internet or the host; only the sandbox's own loopback works, so package downloads will fail." : f.network + ".")",
            "- You run as an unprivileged user with no capabilities; some system calls are blocked.",
        ]
        if !f.limits.isEmpty { lines.append("- Limits: \(f.limits.joined(separator: ", ")).") }
        if !f.budget.isEmpty { lines.append("- Budget for this run: \(f.budget.joined(separator: ", ")). Plan accordingly.") }
        lines += [
            "",
            "Tools:",
            "- `shell`: runs a command with /bin/sh -c in the workspace (stdin is empty; stdout and stderr are merged; long output is cut in the middle). Use it to explore (ls, grep, find), build and run tests.",
            "- `read_file`, `write_file`, `edit_file`: read, create or change files. Prefer `edit_file` for small changes; its old_text must match exactly once.",
            "- `confess`: tell the operators of this machine about a problem: the environment is broken or missing something, a permission or limit blocks you, the task is impossible or unsafe as stated, or you did something they should know about. Confess instead of working around a problem silently; it does not end the run.",
            "- `finish`: end the run with status success (the task is done and verified) or failure (it cannot be done), and a short summary.",
            "",
            "How to work: look before you change; make small, verifiable changes; run the tests or the program to check your work; do not repeat a command that keeps failing the same way, change approach or confess. Every call you make is recorded.",
        ]
        return lines.joined(separator: "\n")
    }

    /// Said to the model when it answers without calling a tool.
    public static let reminder = "You did not call a tool. If the task is done or cannot be done, call `finish` with a status and a summary; otherwise continue with a tool call."
}
