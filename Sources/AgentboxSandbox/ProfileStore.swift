import AgentboxCore
import CSeccomp
import Glibc

/// Finds and loads profiles by name or path (docs/profiles.md, "Where profiles are found").
public enum ProfileStore {
    /// Folders searched for NAME.json, in order (the candidates that exist).
    public static func searchPath() -> [String] {
        searchCandidates().filter { FileIO.isDirectory($0) }.map { RealHostPaths().canonical($0) ?? $0 }
            .reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
    }

    /// Every folder that would be searched if it existed: each is protected from sandboxes (a run that
    /// could create one could plant the next run's profile).
    static func searchCandidates() -> [String] {
        var dirs: [String] = []
        if let env = AgentboxPaths.env("AGENTBOX_PROFILES") {
            // Relative entries are taken from the current directory, as the lookup does.
            dirs += env.split(separator: ":").map { AgentboxPaths.absolute(String($0)) }
        }
        if let config = AgentboxPaths.configDir() { dirs.append(config + "/profiles") }
        // The built-in profiles: one folder, decided by where the binary is (so that no other folder a
        // sandbox could create can shadow it).
        if let exeDir = executableDirectory() {
            let parts = exeDir.split(separator: "/", omittingEmptySubsequences: false)
            if exeDir.hasSuffix("/bin") {
                dirs.append(exeDir + "/../share/agentbox/sandbox-profiles")  // <prefix>/bin/agentbox (make install)
            } else if let build = parts.firstIndex(of: ".build") {
                dirs.append(parts[..<build].joined(separator: "/") + "/sandbox-profiles")  // <repo>/.build/<triple>/<config>/agentbox
            } else {
                dirs.append(exeDir + "/sandbox-profiles")  // an unpacked folder: agentbox, agentbox-init, sandbox-profiles/
            }
        }
        return dirs.map { $0.hasPrefix("/") ? PolicyResolver.normalize($0) : $0 }
    }

    static func executablePath() -> String? { ownExecutable }

    /// Read once: the binary does not move while it runs.
    static let ownExecutable: String? = {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }()

    static func executableDirectory() -> String? {
        guard let exe = executablePath() else { return nil }
        return String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)])
    }

    /// The file a profile name or path refers to.
    public static func locate(_ nameOrPath: String) throws(AgentboxError) -> String {
        if nameOrPath.utf8.contains(UInt8(ascii: "/")) || nameOrPath.hasSuffix(".json") {
            guard FileIO.exists(nameOrPath) else {
                throw AgentboxError(stage: "profile", "\(nameOrPath): no such file")
            }
            return RealHostPaths().canonical(nameOrPath) ?? nameOrPath
        }
        let dirs = searchPath()
        for dir in dirs where FileIO.exists(dir + "/" + nameOrPath + ".json") {
            return dir + "/" + nameOrPath + ".json"
        }
        let known = list().map(\.name)
        throw AgentboxError(stage: "profile", "no profile named \"\(nameOrPath)\"",
                            hint: known.isEmpty
                                ? "no profile folder found (searched: \(dirs.joined(separator: ", "))); reinstall with `make install` or set AGENTBOX_PROFILES"
                                : "known profiles: \(known.joined(separator: ", ")); or pass a path to a .json file")
    }

    /// Loads a profile (following `extends`, at most 8 levels).
    public static func load(_ nameOrPath: String, depth: Int = 0) throws(AgentboxError) -> Profile {
        guard depth < 8 else { throw AgentboxError(stage: "profile", "\(nameOrPath): `extends` nests too deep (a cycle?)") }
        let path = try locate(nameOrPath)
        let text = try FileIO.readString(path)
        var base: Profile? = nil
        if let parent = Profile.extendsName(text) {
            do { base = try load(parent, depth: depth + 1) } catch {
                throw AgentboxError(stage: "profile", "\(path): extends: \(error.message)", hint: error.hint)
            }
        }
        let name = nameOrPath.utf8.contains(UInt8(ascii: "/")) || nameOrPath.hasSuffix(".json")
            ? String(path.split(separator: "/").last!.dropLast(path.hasSuffix(".json") ? 5 : 0)) : nameOrPath
        do {
            var profile = try Profile.parse(text, name: name, file: path, base: base)
            profile.files = [path] + (base?.files ?? [])
            if let seccomp = profile.seccomp, !seccomp.hasPrefix("/") {
                profile.seccomp = (RealHostPaths().canonical(seccomp) ?? seccomp)
            }
            return profile
        } catch {
            throw error.asAgentboxError
        }
    }

    /// Every profile on the search path (the first of each name wins), with the file it came from.
    public static func list() -> [(name: String, path: String)] {
        var out: [(String, String)] = []
        for dir in searchPath() {
            guard let d = opendir(dir) else { continue }
            defer { closedir(d) }
            var names: [String] = []
            while let entry = readdir(d) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasSuffix(".json") { names.append(String(name.dropLast(5))) }
            }
            for name in names.sorted() where !out.contains(where: { $0.0 == name }) {
                out.append((name, dir + "/" + name + ".json"))
            }
        }
        return out
    }

    /// Loads and validates a profile and its seccomp policy; used by `profile check`.
    public static func check(_ path: String) throws(AgentboxError) -> Profile {
        let profile = try load(path)
        if let seccomp = profile.seccomp { _ = try SeccompPolicy.load(seccomp).compile() }
        return profile
    }
}

/// Compiled seccomp programs cached by content (policy bytes, kernel, libseccomp, agentbox's version):
/// compiling a 300-rule allowlist costs milliseconds, loading a cached one microseconds.
///
/// The cache decides what the sandbox's filter is, so it is trusted only when nobody else could have
/// written it: its folder and file must belong to this user and not be writable by group or others
/// (opened without following symlinks), and the file must carry the full cache key and a CRC-32C of the
/// program. Anything else is ignored and the program compiled again. (A sandbox never sees the cache:
/// docs/security.md, "agentbox's own files".)
public enum SeccompCache {
    static let magic = Array("agentbox-seccomp-cache\n".utf8)

    public static func cacheDir() -> String? { AgentboxPaths.cacheDir() }

    static func fnv1a(_ bytes: [UInt8], seed: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
        var h = seed
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// The program for a policy file.
    static func program(for path: String) throws(AgentboxError) -> [UInt8] {
        let source = try FileIO.read(path)
        return try program(source: source) { () throws(AgentboxError) -> [UInt8] in try compile(source, path: path) }
    }

    static func compile(_ source: [UInt8], path: String) throws(AgentboxError) -> [UInt8] {
        let policy: SeccompPolicy
        do { policy = try SeccompPolicy.parse(String(decoding: source, as: UTF8.self), file: path) } catch {
            throw error.asAgentboxError
        }
        return try policy.compile()
    }

    /// The guard's rules as text, for its cache key (built once; string interpolation of the rule
    /// structs goes through reflection and cost milliseconds per sandbox).
    static let guardSource: [UInt8] = {
        let p = SeccompPolicy.fileModeGuard
        var text = "file-mode guard: \(p.defaultAction)"
        for r in p.rules {
            text += "\n\(r.names.joined(separator: ",")) \(r.action) \(r.errnoRet ?? 0)"
            for a in r.args { text += " \(a.index):\(a.op):\(a.value):\(a.valueTwo)" }
        }
        return Array(text.utf8)
    }()

    /// The file-mode guard's program (SeccompPolicy.fileModeGuard).
    static func guardProgram() throws(AgentboxError) -> [UInt8] {
        let guardPolicy = SeccompPolicy.fileModeGuard
        return try program(source: SeccompCache.guardSource) { () throws(AgentboxError) -> [UInt8] in
            try guardPolicy.compile()
        }
    }

    /// How `SeccompPolicy.compile` lays programs out: part of the key, so that a program cached by a
    /// build that compiled differently is compiled again.
    static let layout = "binary tree"

    /// The key names everything the program depends on.
    static func key(_ source: [UInt8]) -> [UInt8] {
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let lib = seccomp_version()!.pointee
        return Array("agentbox \(AgentboxVersion.string); \(SeccompCache.layout); libseccomp \(lib.major).\(lib.minor).\(lib.micro); kernel \(kernel); source \(source.count) bytes, crc32c \(CRC32C.hex(CRC32C.checksum(source))), fnv1a \(String(fnv1a(source), radix: 16))".utf8)
    }

    static func program(source: [UInt8], dir: String? = cacheDir(), compile: () throws(AgentboxError) -> [UInt8]) throws(AgentboxError) -> [UInt8] {
        guard let dir else { return try compile() }
        let key = key(source)
        let name = "seccomp-\(String(fnv1a(key), radix: 16)).bpf"
        if let cached = load(dir: dir, name: name, key: key) { return cached }
        let program = try compile()
        store(program, key: key, dir: dir, name: name)
        return program
    }

    /// The cached program, or nil when there is none or it is not trustworthy.
    static func load(dir: String, name: String, key: [UInt8]) -> [UInt8]? {
        let dirFD = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard dirFD >= 0 else { return nil }
        defer { close(dirFD) }
        guard ownedAndPrivate(dirFD) else { return nil }
        let fd = openat(dirFD, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard ownedAndPrivate(fd, stat: &st), (st.st_mode & S_IFMT) == S_IFREG, st.st_size < 1 << 20 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        guard bytes.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, $0.count, 0) }) == bytes.count else { return nil }
        return decode(bytes, key: key)
    }

    /// File layout: magic, key length (u32 LE), key, CRC-32C of the program (u32 LE), program.
    static func encode(_ program: [UInt8], key: [UInt8]) -> [UInt8] {
        func le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        return magic + le(UInt32(key.count)) + key + le(CRC32C.checksum(program)) + program
    }

    static func decode(_ bytes: [UInt8], key: [UInt8]) -> [UInt8]? {
        func le(_ at: Int) -> UInt32? {
            guard at + 4 <= bytes.count else { return nil }
            return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[at + $1]) << (8 * $1) }
        }
        guard bytes.starts(with: magic), let keyLength = le(magic.count) else { return nil }
        let keyStart = magic.count + 4, keyEnd = keyStart + Int(keyLength)
        guard keyEnd + 4 <= bytes.count, Array(bytes[keyStart..<keyEnd]) == key, let crc = le(keyEnd) else { return nil }
        let program = Array(bytes[(keyEnd + 4)...])
        guard !program.isEmpty, program.count % 8 == 0, CRC32C.checksum(program) == crc else { return nil }
        return program
    }

    static func ownedAndPrivate(_ fd: Int32) -> Bool {
        var st = stat()
        return ownedAndPrivate(fd, stat: &st)
    }

    static func ownedAndPrivate(_ fd: Int32, stat st: inout stat) -> Bool {
        fstat(fd, &st) == 0 && st.st_uid == geteuid() && st.st_mode & 0o022 == 0
    }

    /// Best effort: a private folder, then a temporary file renamed into place, so readers never see
    /// half a program.
    static func store(_ program: [UInt8], key: [UInt8], dir: String, name: String) {
        try? FileIO.makeDirectories(dir)
        let tmp = dir + "/" + name + ".\(getpid()).tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let bytes = encode(program, key: key)
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        if n == bytes.count { rename(tmp, dir + "/" + name) } else { unlink(tmp) }
    }
}
