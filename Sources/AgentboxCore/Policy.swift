/// Options given on the command line; each one that is set overrides the profile.
public struct SandboxOptions: Sendable {
    public var profile: String = "workspace-write"
    public var workspace: String? = nil
    public var ro: [String] = []
    public var rw: [String] = []
    public var hide: [String] = []
    public var network: Profile.Network? = nil
    /// `--add-host NAME:IP`: names the proxy resolves to these addresses (with `allow:` only).
    public var addHosts: [(String, IPAddress)] = []
    public var memory: UInt64? = nil
    public var pids: Int? = nil
    public var cpus: Double? = nil
    public var timeout: Double? = nil
    public var tmpSize: UInt64? = nil
    public var journalOutput: UInt64? = nil
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
    /// `--add-host` mappings for the proxy.
    public var addHosts: [(String, IPAddress)] = []
    public var strictLimits: Bool
    public var hostname: String
    /// agentbox's own paths that a bind of this sandbox contains, and how each is kept out of reach
    /// (hidden or read-only). Said on stderr and recorded with the policy.
    public var protections: [ProtectedPath] = []

    /// The policy as JSON, for `profile show`, `doctor` and the journal.
    public var json: JSON {
        var limitsJSON: [(String, JSON)] = []
        limitsJSON.append(("memory", limits.memory.map { .number(Double($0)) } ?? .null))
        limitsJSON.append(("pids", limits.pids.map { .number(Double($0)) } ?? .null))
        limitsJSON.append(("cpus", limits.cpus.map { .number($0) } ?? .null))
        limitsJSON.append(("timeout_s", limits.timeout.map { .number($0) } ?? .null))
        limitsJSON.append(("tmp_size", .number(Double(limits.tmpSize))))
        limitsJSON.append(("journal_output", .number(Double(limits.journalOutput))))
        return .object([
            ("profile", .string(profile.name)),
            ("profile_path", .string(profile.path)),
            ("workspace", .string(workspace)),
            ("workdir", .string(workdir)),
            ("network", .string(network.description)),
            ("add_hosts", .array(addHosts.map { .string("\($0.0):\($0.1)") })),
            ("hostname", .string(hostname)),
            ("mounts", .array(mounts.map { $0.json })),
            ("limits", .object(limitsJSON)),
            ("strict_limits", .bool(strictLimits)),
            ("env", .array(env.map { .string($0.0) })),
            ("seccomp", profile.seccomp.map { .string($0) } ?? .null),
            ("landlock", .string(profile.landlock.rawValue)),
            ("protected", .array(protections.map {
                .object([("path", .string($0.path)), ("what", .string($0.what)), ("access", .string($0.access.rawValue))])
            })),
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
        /// Bind `target`, inside the sandbox's tree, onto itself: a mount point cannot be renamed or
        /// removed, so the path to a protected path inside a writable bind stays where the host expects it.
        case pin = 5
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
        case .pin: kindName = "pin"
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
    /// `protected` are agentbox's own paths (AgentboxPaths, binaries, profiles): no bind may expose
    /// them to writes; see `protect`.
    public static func resolve(profile: Profile, options: SandboxOptions, cwd: String, host: some HostPaths,
                               protected: [ProtectedPath] = []) throws(AgentboxError) -> SandboxPolicy {
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
        if workspace == "/" || forbiddenRoots.contains(where: { isInside(workspace, $0) }) {
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
        func checkWritable(_ c: String, _ what: String) throws(AgentboxError) {
            if c == "/" || forbiddenRoots.contains(where: { isInside(c, $0) }) {
                throw AgentboxError(stage: "policy", "\(what) \(c) is not allowed: it would expose host kernel interfaces or the whole host")
            }
        }
        for path in profile.rw {
            guard let c = host.canonical(path) else { continue }
            try checkWritable(c, "profile \(profile.path) filesystem.rw")
            add(MountEntry(.bindRW, source: c, target: c))
        }
        for path in options.ro { let c = try canonical(path, "--ro"); add(MountEntry(.bindRO, source: c, target: c)) }
        for path in options.rw {
            let c = try canonical(path, "--rw")
            try checkWritable(c, "--rw")
            add(MountEntry(.bindRW, source: c, target: c))
        }
        // Hidden paths that do not exist have nothing to hide; they are skipped.
        for path in profile.hide + options.hide.map(absolute) {
            guard let c = host.canonical(path) else { continue }
            add(MountEntry(host.isDirectory(c) ? .hideDir : .hideFile, source: "", target: c))
        }
        // A bind inside a hidden folder has nowhere to go (the cover is an empty read-only tmpfs).
        for m in mounts where m.kind == .bindRO || m.kind == .bindRW {
            if let h = mounts.first(where: { $0.kind == .hideDir && m.target != $0.target && isInside(m.target, $0.target) }) {
                throw AgentboxError(stage: "policy", "\(m.target) is inside \(h.target), which is hidden: it cannot also be bound",
                                    hint: "drop the --hide (or the profile's hide entry) or the bind inside it")
            }
        }
        let protections = try protect(protected, mounts: &mounts, host: host)
        // Parents before children: a bind inside another bind must be mounted after it.
        mounts = stableSorted(mounts) { depth($0.target) < depth($1.target) }

        var limits = profile.limits
        if let v = options.memory { limits.memory = v }
        if let v = options.pids { limits.pids = v }
        if let v = options.cpus { limits.cpus = v }
        if let v = options.timeout { limits.timeout = v }
        if let v = options.tmpSize { limits.tmpSize = v }
        if let v = options.journalOutput { limits.journalOutput = v }

        let network = options.network ?? profile.network
        if !options.addHosts.isEmpty && network.rules == nil {
            throw .usage("--add-host needs --network allow:RULES", hint: "the names it maps are for agentbox's proxy, which only allow: starts")
        }
        // agentbox's own commands (`agentbox confess`, `agentbox mcp`) and API are there in every sandbox.
        var env: [(String, String)] = [
            ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + AgentboxPaths.toolDirectory),
            ("HOME", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("TERM", "dumb"),
            ("AGENTBOX_API", "http://127.0.0.1:3129"),
        ]
        if network.rules != nil { env += proxyEnvironment }
        for (k, v) in profile.env + options.env {
            env.removeAll { $0.0 == k }
            env.append((k, v))
        }
        return SandboxPolicy(profile: profile, workspace: workspace, workdir: workdir, mounts: mounts, limits: limits,
                             env: env, network: network, addHosts: options.addHosts, strictLimits: options.strictLimits,
                             hostname: options.name.flatMap(sanitizedHostname) ?? profile.hostname, protections: protections)
    }

    /// What points programs inside at the proxy of `--network allow:` (docs/network.md); loopback
    /// itself goes direct.
    public static let proxyEnvironment: [(String, String)] = {
        let url = "http://127.0.0.1:3128"
        let noProxy = "localhost,127.0.0.1,::1"
        return [("HTTP_PROXY", url), ("HTTPS_PROXY", url), ("ALL_PROXY", url), ("NO_PROXY", noProxy),
                ("http_proxy", url), ("https_proxy", url), ("all_proxy", url), ("no_proxy", noProxy)]
    }()

    /// Whether `path` is `dir` or lies below it (both canonical).
    public static func isInside(_ path: String, _ dir: String) -> Bool {
        path == dir || path.hasPrefix(dir == "/" ? "/" : dir + "/")
    }

    /// Keeps agentbox's own paths out of every sandbox's reach, whatever the options say:
    /// - a bind inside a protected path (or equal to it) is refused, except read-only binds inside a
    ///   read-only one;
    /// - a hidden path inside any bind is covered with an empty read-only directory or file, a read-only
    ///   one inside a writable bind is bound read-only on itself;
    /// - inside a writable bind, every directory between the bind and the protected path is pinned
    ///   (bound on itself: a mount point cannot be renamed or removed), so the sandbox cannot move the
    ///   real path aside and build a forged one where the host will look for it next time;
    /// - a protected path that does not exist inside a writable bind is refused (the sandbox could
    ///   create it); the supervisor creates agentbox's own folders before resolving.
    static func protect(_ protected: [ProtectedPath], mounts: inout [MountEntry], host: some HostPaths) throws(AgentboxError) -> [ProtectedPath] {
        var applied: [ProtectedPath] = []
        let binds = mounts.filter { $0.kind == .bindRO || $0.kind == .bindRW }
        /// The deepest bind or hidden folder containing `path`: what decides how `path` looks inside.
        func innermost(_ path: String) -> MountEntry? {
            mounts.filter { $0.kind != .symlink && $0.kind != .pin && isInside(path, $0.target) }
                .max { depth($0.target) < depth($1.target) }
        }
        // The host looks these paths up by name: a symlink on the way that a sandbox can replace (it is
        // in a folder a writable bind exposes) would let it choose what the host finds there next time.
        // Where each path is, symlinks resolved as far as it exists (a missing tail kept as written).
        var resolved: [String: String] = [:]
        for p in protected {
            var parent = "/"
            let components = normalize(p.path).split(separator: "/")
            for (i, component) in components.enumerated() {
                let literal = (parent == "/" ? "" : parent) + "/" + component
                let isLink = host.symlinkText(literal) != nil
                if isLink, let w = innermost(parent), w.writable {
                    throw AgentboxError(stage: "policy", "\(literal) is a symlink inside the writable bind \(w.target), on the way to \(p.what) (\(p.path)): a sandbox could replace it",
                                        hint: "use a workspace that does not contain \(literal), or point agentbox at a real folder (AGENTBOX_HOME, XDG_CONFIG_HOME, XDG_CACHE_HOME)")
                }
                // `parent` is canonical: a folder under it that is no symlink is canonical as it is (a
                // realpath per component walked the path again for every component before it).
                if !isLink && host.isDirectory(literal) {
                    parent = literal
                    continue
                }
                guard let c = host.canonical(literal) else {
                    parent = ([literal] + components[(i + 1)...].map(String.init)).joined(separator: "/")
                    break
                }
                parent = c
            }
            resolved[p.path] = parent
        }
        // Hidden paths first: a read-only path inside a hidden one is covered already.
        for p in protected.filter({ $0.access == .hidden }) + protected.filter({ $0.access == .readOnly }) {
            let path = normalize(p.path)
            guard let c = host.canonical(path) else {
                let where_ = resolved[p.path] ?? path
                if let w = innermost(where_), w.writable {
                    throw AgentboxError(stage: "policy", "\(p.what) \(path) does not exist and lies inside the writable bind \(w.target): a sandbox could create it",
                                        hint: "create \(path) first, or use a workspace that does not contain it")
                }
                continue
            }
            for m in binds where isInside(m.target, c) && (m.writable || p.access == .hidden) {
                throw AgentboxError(stage: "policy", "\(m.target) cannot be bound into a sandbox: it is \(m.target == c ? "" : "inside ")\(p.what) (\(c))",
                                    hint: "agentbox's own files are never exposed to a sandbox; choose another directory")
            }
            guard let outer = innermost(c), outer.kind == .bindRO || outer.kind == .bindRW, outer.writable || p.access == .hidden else { continue }
            let directory = host.isDirectory(c)
            mounts.append(p.access == .hidden
                ? MountEntry(directory ? .hideDir : .hideFile, source: "", target: c, directory: directory)
                : MountEntry(.bindRO, source: c, target: c, directory: directory))
            if outer.writable {
                var ancestor = c
                while let slash = ancestor.lastIndex(of: "/") {
                    ancestor = String(ancestor[..<slash])
                    guard ancestor != outer.target, isInside(ancestor, outer.target) else { break }
                    if !mounts.contains(where: { $0.target == ancestor }) {
                        mounts.append(MountEntry(.pin, source: ancestor, target: ancestor))
                    }
                }
            }
            applied.append(ProtectedPath(c, p.what, p.access))
        }
        return applied
    }

    static func depth(_ path: String) -> Int { path.split(separator: "/").count }

    /// Removes `.` and `..` components lexically (symlinks are resolved later by the host).
    public static func normalize(_ path: String) -> String {
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
