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
        ToolDefinition(name: "shell", description: "Run a command with /bin/sh -c in the workspace, inside the sandbox (no network, only the workspace and /tmp are writable). Returns the exit code and the output; long output is cut in the middle.",
                       parameters: schema([("command", prop("string", "The shell command line.")),
                                           ("timeout_s", prop("integer", "Seconds before the command is killed (optional)."))], required: ["command"])),
        ToolDefinition(name: "read_file", description: "Read a text file. Paths are relative to the workspace or absolute inside the sandbox.",
                       parameters: schema([("path", prop("string", "The file to read.")),
                                           ("offset", prop("integer", "First line to return, 1-based (optional).")),
                                           ("limit", prop("integer", "Number of lines to return (optional)."))], required: ["path"])),
        ToolDefinition(name: "write_file", description: "Create or replace a file with the given content.",
                       parameters: schema([("path", prop("string", "The file to write.")),
                                           ("content", prop("string", "The complete new content."))], required: ["path", "content"])),
        ToolDefinition(name: "edit_file", description: "Replace one exact, unique occurrence of old_text with new_text in a file. Fails if old_text is absent or appears more than once: include more context to make it unique.",
                       parameters: schema([("path", prop("string", "The file to edit.")),
                                           ("old_text", prop("string", "The exact text to replace.")),
                                           ("new_text", prop("string", "The replacement."))], required: ["path", "old_text", "new_text"])),
        ToolDefinition(name: "confess", description: "Report a problem to the people who operate this machine: something blocks you, the environment is broken or wrong, or you did something they should know about. Does not end the run.",
                       parameters: schema([("severity", prop("string", "How bad it is.", enumValues: ["info", "warning", "blocker"])),
                                           ("category", prop("string", "A short category, e.g. environment, permissions, tests, network.")),
                                           ("summary", prop("string", "One line.")),
                                           ("details", prop("string", "More detail (optional)."))], required: ["severity", "category", "summary"])),
        ToolDefinition(name: "finish", description: "End the run with a status and a summary of what was done.",
                       parameters: schema([("status", prop("string", "success or failure.", enumValues: ["success", "failure"])),
                                           ("summary", prop("string", "What was done and what is left."))], required: ["status", "summary"])),
    ]
}
