/// A sandbox profile: the policy a sandbox starts from (docs/profiles.md). Profiles are JSON files in
/// `sandbox-profiles/`; every key is validated strictly, and errors name the file, the key and the problem.
public struct Profile: Equatable, Sendable {
    public enum Access: String, Sendable { case rw, ro }
    /// `none` and `loopback` name the same thing: a private network namespace with only its own
    /// loopback. `allow:RULES` adds the supervisor's proxy as the only way out (docs/network.md).
    public enum Network: Equatable, Sendable, CustomStringConvertible {
        case none, loopback
        case allow(NetworkRules)

        public init(parsing text: String) throws(AgentboxError) {
            switch text {
            case "none": self = .none
            case "loopback": self = .loopback
            case _ where text.hasPrefix("allow:"): self = .allow(try NetworkRules.parse(String(text.dropFirst(6))))
            default:
                throw .usage("unknown network mode \"\(text)\"",
                             hint: "use none (or loopback): only the sandbox's own loopback; or allow:RULES (e.g. allow:pypi.org,*.pythonhosted.org) for an allowlist through agentbox's proxy")
            }
        }

        public var description: String {
            switch self {
            case .none: return "none"
            case .loopback: return "loopback"
            case let .allow(rules): return "allow:" + rules.description
            }
        }

        /// The allowlist, when there is one.
        public var rules: NetworkRules? {
            if case let .allow(r) = self { return r }
            return nil
        }
    }
    public enum LandlockMode: String, Sendable, CaseIterable {
        /// Fail when the kernel has no Landlock.
        case required
        /// Use Landlock when the kernel has it, say so on stderr when it does not.
        case bestEffort = "best-effort"
        case off
    }

    public var name: String
    /// The file the profile came from (absolute), or "" for a profile built in code.
    public var path: String
    public var description: String = ""
    public var workspace: Access = .rw
    /// Host system paths bound read-only at the same place; missing ones are skipped.
    public var system: [String] = []
    public var ro: [String] = []
    public var rw: [String] = []
    public var hide: [String] = []
    public var network: Network = .none
    public var limits = Limits()
    public var env: [(String, String)] = []
    /// Path of an OCI/Docker seccomp JSON policy; relative paths are relative to the profile's folder.
    public var seccomp: String? = nil
    public var landlock: LandlockMode = .bestEffort
    public var hostname: String = "agentbox"
    /// Every file this profile was read from: its own and those of its `extends` chain (absolute).
    /// They decide the next sandbox's policy, so no sandbox may write them.
    public var files: [String] = []

    public init(name: String, path: String = "") {
        self.name = name
        self.path = path
    }

    public static func == (a: Profile, b: Profile) -> Bool {
        a.name == b.name && a.path == b.path && a.description == b.description && a.workspace == b.workspace
            && a.system == b.system && a.ro == b.ro && a.rw == b.rw && a.hide == b.hide && a.network == b.network
            && a.limits == b.limits && a.env.map { $0.0 + "=" + $0.1 } == b.env.map { $0.0 + "=" + $0.1 }
            && a.seccomp == b.seccomp && a.landlock == b.landlock && a.hostname == b.hostname
    }
}

/// Resource limits. nil means "not limited" (no cgroup value is written).
public struct Limits: Equatable, Sendable {
    public var memory: UInt64? = nil
    public var pids: Int? = nil
    public var cpus: Double? = nil
    /// Wall-clock seconds.
    public var timeout: Double? = nil
    /// Size of the private /tmp (and /dev/shm) tmpfs.
    public var tmpSize: UInt64 = 256 << 20
    /// Bytes of command output a journaled run stores; past it, output is passed through and counted,
    /// not stored (the journal lives on the host's disk, outside every cgroup).
    public var journalOutput: UInt64 = Limits.defaultJournalOutput
    public static let defaultJournalOutput: UInt64 = 256 << 20
    public init() {}
}

/// A problem in a profile file: which file, which key, what is wrong.
public struct ProfileError: Error, CustomStringConvertible, Sendable {
    public let file: String
    public let key: String
    public let problem: String
    public init(file: String, key: String, problem: String) {
        self.file = file
        self.key = key
        self.problem = problem
    }
    public var description: String { key.isEmpty ? "\(file): \(problem)" : "\(file): \(key): \(problem)" }
    public var asAgentboxError: AgentboxError {
        AgentboxError(stage: "profile", description,
                      hint: "see docs/profiles.md for the format; `agentbox profile check FILE` validates a file")
    }
}

extension Profile {
    static let topLevelKeys = ["description", "extends", "filesystem", "network", "limits", "env", "seccomp",
                               "landlock", "hostname"]
    static let filesystemKeys = ["workspace", "system", "ro", "rw", "hide"]
    static let limitKeys = ["memory", "pids", "cpus", "timeout", "tmp_size", "journal_output"]

    /// Parses a profile document. `base` is the profile named by `extends`, already loaded.
    public static func parse(_ text: String, name: String, file: String, base: Profile? = nil) throws(ProfileError) -> Profile {
        let json: JSON
        do { json = try JSON.parse(text) } catch {
            throw ProfileError(file: file, key: "", problem: "not valid JSON: \(error)")
        }
        guard case let .object(members) = json else {
            throw ProfileError(file: file, key: "", problem: "the top level must be a JSON object, not \(json.typeName)")
        }
        var p = base ?? Profile(name: name, path: file)
        p.name = name
        p.path = file
        func fail(_ key: String, _ problem: String) -> ProfileError { ProfileError(file: file, key: key, problem: problem) }
        func unknown(_ key: String, _ allowed: [String]) -> ProfileError {
            fail(key, "unknown key (known keys: \(allowed.joined(separator: ", ")))")
        }
        func string(_ v: JSON, _ key: String) throws(ProfileError) -> String {
            guard let s = v.stringValue else { throw fail(key, "must be a string, not \(v.typeName)") }
            return s
        }
        func paths(_ v: JSON, _ key: String) throws(ProfileError) -> [String] {
            guard let items = v.arrayValue else { throw fail(key, "must be an array of absolute paths, not \(v.typeName)") }
            var out: [String] = []
            for (i, item) in items.enumerated() {
                guard let s = item.stringValue else { throw fail("\(key)[\(i)]", "must be a string, not \(item.typeName)") }
                guard s.hasPrefix("/") else { throw fail("\(key)[\(i)]", "\"\(s)\" is not an absolute path") }
                guard !s.split(separator: "/").contains("..") else {
                    throw fail("\(key)[\(i)]", "\"\(s)\" must not contain '..'")
                }
                out.append(s)
            }
            return out
        }
        func size(_ v: JSON, _ key: String) throws(ProfileError) -> UInt64? {
            if v == .null { return nil }
            if let n = v.intValue, n > 0 { return UInt64(n) }
            guard let s = v.stringValue, let bytes = Units.parseSize(s) else {
                throw fail(key, "must be a size like \"512M\" or \"2G\" (or null for no limit), not \(v.serialized)")
            }
            return bytes
        }
        for (key, value) in members {
            switch key {
            case "description": p.description = try string(value, key)
            case "extends":
                _ = try string(value, key)  // resolved by the loader before parsing
            case "hostname":
                let h = try string(value, key)
                guard !h.isEmpty, h.utf8.count <= 64, h.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }) else {
                    throw fail(key, "must be 1-64 letters, digits, '-' or '.'")
                }
                p.hostname = h
            case "network":
                let s = try string(value, key)
                do { p.network = try Network(parsing: s) } catch { throw fail(key, error.message + (error.hint.isEmpty ? "" : " (\(error.hint))")) }
            case "landlock":
                let s = try string(value, key)
                guard let m = LandlockMode(rawValue: s) else {
                    throw fail(key, "\"\(s)\" is not a Landlock mode (use \"required\", \"best-effort\" or \"off\")")
                }
                p.landlock = m
            case "seccomp":
                if value == .null { p.seccomp = nil; break }
                let s = try string(value, key)
                guard !s.isEmpty else { throw fail(key, "must name a seccomp policy file") }
                if s.hasPrefix("/") || file.isEmpty {
                    p.seccomp = s
                } else {
                    let dir = file.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
                    p.seccomp = dir + "/" + s
                }
            case "env":
                guard case let .object(vars) = value else { throw fail(key, "must be an object of strings") }
                for (k, v) in vars {
                    guard EnvVar.isValidName(k) else { throw fail("env.\(k)", "is not a valid variable name") }
                    p.env.removeAll { $0.0 == k }
                    p.env.append((k, try string(v, "env.\(k)")))
                }
            case "filesystem":
                guard case let .object(fs) = value else { throw fail(key, "must be an object, not \(value.typeName)") }
                for (fk, fv) in fs {
                    let full = "filesystem.\(fk)"
                    switch fk {
                    case "workspace":
                        let s = try string(fv, full)
                        guard let a = Access(rawValue: s) else { throw fail(full, "\"\(s)\" must be \"rw\" or \"ro\"") }
                        p.workspace = a
                    case "system": p.system = try paths(fv, full)
                    case "ro": p.ro = try paths(fv, full)
                    case "rw": p.rw = try paths(fv, full)
                    case "hide": p.hide = try paths(fv, full)
                    default: throw unknown(full, filesystemKeys)
                    }
                }
            case "limits":
                guard case let .object(limits) = value else { throw fail(key, "must be an object, not \(value.typeName)") }
                for (lk, lv) in limits {
                    let full = "limits.\(lk)"
                    switch lk {
                    case "memory": p.limits.memory = try size(lv, full)
                    case "tmp_size":
                        guard let s = try size(lv, full) else { throw fail(full, "must be a size; /tmp is always capped") }
                        p.limits.tmpSize = s
                    case "journal_output":
                        guard let s = try size(lv, full) else { throw fail(full, "must be a size; journaled output is always capped") }
                        p.limits.journalOutput = s
                    case "pids":
                        if lv == .null { p.limits.pids = nil; break }
                        guard let n = lv.intValue, n > 0 else { throw fail(full, "must be a positive integer, not \(lv.serialized)") }
                        p.limits.pids = n
                    case "cpus":
                        if lv == .null { p.limits.cpus = nil; break }
                        guard let n = lv.numberValue, n > 0, n <= 4096 else {
                            throw fail(full, "must be a positive number of CPUs (e.g. 1.5), not \(lv.serialized)")
                        }
                        p.limits.cpus = n
                    case "timeout":
                        if lv == .null { p.limits.timeout = nil; break }
                        guard let s = lv.stringValue, let d = Units.parseDuration(s) else {
                            throw fail(full, "must be a duration like \"90s\", \"30m\" or \"2h\", not \(lv.serialized)")
                        }
                        p.limits.timeout = d
                    default: throw unknown(full, limitKeys)
                    }
                }
            default: throw unknown(key, topLevelKeys)
            }
        }
        return p
    }

    /// The name given in `extends`, if any (read before the full parse so the base can be loaded first).
    public static func extendsName(_ text: String) -> String? {
        (try? JSON.parse(text))?["extends"]?.stringValue
    }
}

/// Environment variable helpers.
public enum EnvVar {
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || first.isASCIILetter else {
            return false
        }
        return name.unicodeScalars.allSatisfy { $0 == "_" || $0.isASCIILetter || ("0"..."9").contains($0) }
    }

    /// Splits `KEY=VALUE`; nil when malformed.
    public static func split(_ assignment: String) -> (String, String)? {
        guard let eq = assignment.firstIndex(of: "=") else { return nil }
        let key = String(assignment[..<eq])
        guard isValidName(key) else { return nil }
        return (key, String(assignment[assignment.index(after: eq)...]))
    }
}

extension Unicode.Scalar {
    var isASCIILetter: Bool { ("a"..."z").contains(self) || ("A"..."Z").contains(self) }
}
