/// Options given on the command line; each one that is set overrides the profile.
public struct SandboxOptions: Sendable {
    public var profile: String = "workspace-write"
    public var workspace: String? = nil
    public var ro: [String] = []
    public var rw: [String] = []
    public var hide: [String] = []
    public var network: Profile.Network? = nil
    public var memory: UInt64? = nil
    public var pids: Int? = nil
    public var cpus: Double? = nil
    public var timeout: Double? = nil
    public var tmpSize: UInt64? = nil
    public var env: [(String, String)] = []
    public var strictLimits = false
    public var name: String? = nil
    public init() {}
}

/// The fully resolved policy of one sandbox: the profile with the command line applied and every path
/// made absolute and canonical. Recorded as-is in the journal ("run started"), so it must be complete.
public struct SandboxPolicy: Sendable {
    public var profile: Profile
    public var workspace: String
    /// The starting directory inside the sandbox (the caller's directory when it is inside the workspace).
    public var workdir: String
    public var mounts: [MountEntry]
    public var limits: Limits
    public var env: [(String, String)]
    public var network: Profile.Network
    public var strictLimits: Bool
    public var hostname: String

    /// The policy as JSON, for `profile show`, `doctor` and the journal.
    public var json: JSON {
        var limitsJSON: [(String, JSON)] = []
        limitsJSON.append(("memory", limits.memory.map { .number(Double($0)) } ?? .null))
        limitsJSON.append(("pids", limits.pids.map { .number(Double($0)) } ?? .null))
        limitsJSON.append(("cpus", limits.cpus.map { .number($0) } ?? .null))
        limitsJSON.append(("timeout_s", limits.timeout.map { .number($0) } ?? .null))
        limitsJSON.append(("tmp_size", .number(Double(limits.tmpSize))))
        return .object([
            ("profile", .string(profile.name)),
            ("profile_path", .string(profile.path)),
            ("workspace", .string(workspace)),
            ("workdir", .string(workdir)),
            ("network", .string(network.rawValue)),
            ("hostname", .string(hostname)),
            ("mounts", .array(mounts.map { $0.json })),
            ("limits", .object(limitsJSON)),
            ("strict_limits", .bool(strictLimits)),
            ("env", .array(env.map { .string($0.0) })),
            ("seccomp", profile.seccomp.map { .string($0) } ?? .null),
            ("landlock", .string(profile.landlock.rawValue)),
        ])
    }
}

extension SandboxPolicy {
    /// Whether the sandbox sees the host path `path` (absolute, canonical): the deepest mount entry at or
    /// above it is a bind, not a hide (and there is one: the sandbox's root is an empty tmpfs).
    public func exposes(_ path: String) -> Bool {
        var deepest: MountEntry? = nil
        for m in mounts where m.kind != .symlink && (m.target == path || path.hasPrefix(m.target == "/" ? "/" : m.target + "/")) {
            if deepest.map({ PolicyResolver.depth(m.target) >= PolicyResolver.depth($0.target) }) ?? true { deepest = m }
        }
        return deepest.map { $0.kind == .bindRO || $0.kind == .bindRW } ?? false
    }

    /// Of the workspace's top-level environment files (`.env`, `.env.local`...; name and canonical
    /// path of each regular file whose name starts with `.env`), the names of those the sandbox can read.
    public func exposedEnvFiles(_ files: [(name: String, path: String)]) -> [String] {
        files.filter { $0.name.hasPrefix(".env") && exposes($0.path) }.map(\.name).sorted()
    }
}

/// One entry of the sandbox's filesystem, applied by the init in order (parents before children).
public struct MountEntry: Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        /// Bind `source` read-only at `target`.
        case bindRO = 0
        /// Bind `source` read-write at `target`.
        case bindRW = 1
        /// Cover a directory with an empty read-only tmpfs.
        case hideDir = 2
        /// Cover a file with an empty read-only file.
        case hideFile = 3
        /// Create a symlink at `target` whose text is `source` (merged-/usr links like /bin -> usr/bin).
        case symlink = 4
    }
    public var kind: Kind
    public var source: String
    public var target: String
    /// Whether the bind source is a directory (decided by the supervisor, which can see host paths the
    /// sandbox user cannot traverse).
    public var directory: Bool

    public init(_ kind: Kind, source: String, target: String, directory: Bool = true) {
        self.kind = kind
        self.source = source
        self.target = target
        self.directory = directory
    }

    public var writable: Bool { kind == .bindRW }

    var json: JSON {
        let kindName: String
        switch kind {
        case .bindRO: kindName = "ro"
        case .bindRW: kindName = "rw"
        case .hideDir, .hideFile: kindName = "hide"
        case .symlink: kindName = "symlink"
        }
        return .object([("type", .string(kindName)), ("source", .string(source)), ("target", .string(target))])
    }
}

/// What the resolver needs to know about the host's filesystem (so the logic stays testable).
public protocol HostPaths {
    /// The canonical absolute path (symlinks resolved), or nil when it does not exist.
    func canonical(_ path: String) -> String?
    /// The text of a symlink at `path`, or nil when `path` is not a symlink.
    func symlinkText(_ path: String) -> String?
    func isDirectory(_ path: String) -> Bool
}

public enum PolicyResolver {
    /// Paths that can never be the workspace or a writable bind.
    static let forbiddenRoots = ["/proc", "/sys", "/dev"]

    /// Applies the command-line options to the profile and resolves every path.
    /// `cwd` is the caller's working directory (absolute).
    public static func resolve(profile: Profile, options: SandboxOptions, cwd: String, host: some HostPaths) throws(AgentboxError) -> SandboxPolicy {
        func absolute(_ p: String) -> String { normalize(p.hasPrefix("/") ? p : (cwd == "/" ? "" : cwd) + "/" + p) }
        func canonical(_ p: String, _ what: String) throws(AgentboxError) -> String {
            guard let c = host.canonical(absolute(p)) else {
                throw AgentboxError(stage: "policy", "\(what) \(p): no such file or directory",
                                    hint: "create it first or fix the path")
            }
            return c
        }
        let workspace = try canonical(options.workspace ?? cwd, "workspace")
        guard host.isDirectory(workspace) else {
            throw AgentboxError(stage: "policy", "workspace \(workspace) is not a directory")
        }
        if workspace == "/" || forbiddenRoots.contains(where: { workspace == $0 || workspace.hasPrefix($0 + "/") }) {
            throw AgentboxError(stage: "policy", "workspace \(workspace) would expose the host's \(workspace == "/" ? "whole filesystem" : "kernel interfaces")",
                                hint: "run agentbox from a project directory or pass --workspace DIR")
        }
        let cwdCanonical = host.canonical(cwd) ?? cwd
        let workdir = cwdCanonical == workspace || cwdCanonical.hasPrefix(workspace + "/") ? cwdCanonical : workspace

        var mounts: [MountEntry] = []
        func add(_ entry: MountEntry) {
            var entry = entry
            if entry.kind == .bindRO || entry.kind == .bindRW { entry.directory = host.isDirectory(entry.source) }
            mounts.removeAll { $0.target == entry.target }
            mounts.append(entry)
        }
        for path in profile.system {
            if let link = host.symlinkText(path), !path.utf8.dropFirst().contains(UInt8(ascii: "/")) {
                add(MountEntry(.symlink, source: link, target: path))
            } else if let c = host.canonical(path) {
                add(MountEntry(.bindRO, source: c, target: c))
            }
        }
        add(MountEntry(profile.workspace == .rw ? .bindRW : .bindRO, source: workspace, target: workspace))
        for path in profile.ro { if let c = host.canonical(path) { add(MountEntry(.bindRO, source: c, target: c)) } }
        for path in profile.rw { if let c = host.canonical(path) { add(MountEntry(.bindRW, source: c, target: c)) } }
        for path in options.ro { let c = try canonical(path, "--ro"); add(MountEntry(.bindRO, source: c, target: c)) }
        for path in options.rw {
            let c = try canonical(path, "--rw")
            if c == "/" || forbiddenRoots.contains(where: { c == $0 || c.hasPrefix($0 + "/") }) {
                throw AgentboxError(stage: "policy", "--rw \(c) is not allowed: it would expose host kernel interfaces or the whole host")
            }
            add(MountEntry(.bindRW, source: c, target: c))
        }
        // Hidden paths that do not exist have nothing to hide; they are skipped.
        for path in profile.hide + options.hide.map(absolute) {
            guard let c = host.canonical(path) else { continue }
            add(MountEntry(host.isDirectory(c) ? .hideDir : .hideFile, source: "", target: c))
        }
        // Parents before children: a bind inside another bind must be mounted after it.
        mounts = stableSorted(mounts) { depth($0.target) < depth($1.target) }

        var limits = profile.limits
        if let v = options.memory { limits.memory = v }
        if let v = options.pids { limits.pids = v }
        if let v = options.cpus { limits.cpus = v }
        if let v = options.timeout { limits.timeout = v }
        if let v = options.tmpSize { limits.tmpSize = v }

        var env: [(String, String)] = [
            ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ("HOME", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("TERM", "dumb"),
        ]
        for (k, v) in profile.env + options.env {
            env.removeAll { $0.0 == k }
            env.append((k, v))
        }
        return SandboxPolicy(profile: profile, workspace: workspace, workdir: workdir, mounts: mounts, limits: limits,
                             env: env, network: options.network ?? profile.network, strictLimits: options.strictLimits,
                             hostname: options.name.flatMap(sanitizedHostname) ?? profile.hostname)
    }

    static func depth(_ path: String) -> Int { path.split(separator: "/").count }

    /// Removes `.` and `..` components lexically (symlinks are resolved later by the host).
    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." { continue }
            if part == ".." { _ = parts.popLast(); continue }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }

    static func sanitizedHostname(_ name: String) -> String? {
        let h = String(name.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "-" }.prefix(63))
        return h.isEmpty ? nil : h
    }

    static func stableSorted<T>(_ items: [T], by less: (T, T) -> Bool) -> [T] {
        items.enumerated().sorted { a, b in less(a.element, b.element) || (!less(b.element, a.element) && a.offset < b.offset) }
            .map(\.element)
    }
}
