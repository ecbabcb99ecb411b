/// The one error type users see: what failed (the stage), why, and what to do next.
/// Its exit code follows docs/cli.md: 125 for agentbox's own failures unless stated otherwise.
public struct AgentboxError: Error, CustomStringConvertible, Sendable {
    /// The stage that failed, e.g. `profile`, `cgroup`, `mount /proc`, `seccomp`.
    public var stage: String
    /// What went wrong, in one line.
    public var message: String
    /// What the user can do about it (may be empty).
    public var hint: String
    public var exitCode: Int32

    public init(stage: String, _ message: String, hint: String = "", exitCode: Int32 = 125) {
        self.stage = stage
        self.message = message
        self.hint = hint
        self.exitCode = exitCode
    }

    public var description: String {
        var s = "\(stage): \(message)"
        if !hint.isEmpty { s += "\n  hint: \(hint)" }
        return s
    }

    public static func usage(_ message: String, hint: String = "") -> AgentboxError {
        AgentboxError(stage: "usage", message, hint: hint)
    }
}
