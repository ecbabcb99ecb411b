#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where agentbox keeps what it trusts: its state (journals, locks, the confession feed), its
/// configuration (profiles, prices) and its cache (compiled seccomp programs). None of it may be
/// writable from inside a sandbox (docs/security.md, "agentbox's own files").
///
/// Every path here is absolute: the one value is both what agentbox uses and what it protects (a relative
/// `AGENTBOX_HOME` is taken from the current directory; relative `XDG_*` values are ignored, as the XDG
/// base directory spec says; a relative `HOME` is not a home).
public enum AgentboxPaths {
    /// Inside every sandbox: the folder of `agentbox` (agentbox-init bound read-only under that name:
    /// `agentbox confess`, `agentbox mcp`), on PATH.
    public static let toolDirectory = "/run/agentbox/bin"

    /// `AGENTBOX_HOME`, else `$XDG_STATE_HOME/agentbox`, else `~/.local/state/agentbox` (root: `/var/lib/agentbox`).
    public static func home() -> String {
        if let h = file("AGENTBOX_HOME") { return h }
        if geteuid() == 0 { return "/var/lib/agentbox" }
        if let x = dir("XDG_STATE_HOME") { return x + "/agentbox" }
        if let h = dir("HOME") { return h + "/.local/state/agentbox" }
        return "/tmp/agentbox-\(getuid())"
    }

    /// `$XDG_CONFIG_HOME/agentbox`, else `~/.config/agentbox` (profiles, prices.json).
    public static func configDir() -> String? {
        if let x = dir("XDG_CONFIG_HOME") { return x + "/agentbox" }
        if let h = dir("HOME") { return h + "/.config/agentbox" }
        return nil
    }

    /// `/var/cache/agentbox` for root, else `$XDG_CACHE_HOME/agentbox`, else `~/.cache/agentbox`.
    public static func cacheDir() -> String? {
        if geteuid() == 0 { return "/var/cache/agentbox" }
        if let x = dir("XDG_CACHE_HOME") { return x + "/agentbox" }
        if let h = dir("HOME") { return h + "/.cache/agentbox" }
        return nil
    }

    /// A file or folder named by an environment variable (`AGENTBOX_PRICES`, `AGENTBOX_CA_BUNDLE`,
    /// `AGENTBOX_INIT`...), made absolute from the current directory.
    public static func file(_ name: String) -> String? { env(name).map(absolute) }

    /// `path` made absolute from the current directory.
    public static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        let cwd = getcwd(nil, 0).map { p in defer { free(p) }; return String(cString: p) } ?? "/"
        return (cwd == "/" ? "" : cwd) + "/" + path
    }

    /// A base folder from the environment: absolute, or ignored.
    static func dir(_ name: String) -> String? {
        env(name).flatMap { $0.hasPrefix("/") ? $0 : nil }
    }

    /// A non-empty environment variable.
    public static func env(_ name: String) -> String? {
        guard let v = getenv(name), v.pointee != 0 else { return nil }
        return String(cString: v)
    }
}

/// A path of agentbox's own that a sandbox must not be able to change, and what the resolver does
/// when a bind of the sandbox contains it.
public struct ProtectedPath: Equatable, Sendable {
    public enum Access: String, Sendable {
        /// Covered by an empty read-only directory or file under every bind (state: journals of other
        /// runs, the confession feed, configuration, the cache). No bind may lie inside it.
        case hidden
        /// Bound read-only on itself under writable binds (agentbox's binaries, profiles). No writable
        /// bind may lie inside it.
        case readOnly = "read-only"
    }
    public var path: String
    /// What it is, for messages: "agentbox's state (AGENTBOX_HOME)".
    public var what: String
    public var access: Access

    public init(_ path: String, _ what: String, _ access: Access) {
        self.path = path
        self.what = what
        self.access = access
    }
}
