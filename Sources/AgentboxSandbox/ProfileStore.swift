import AgentboxCore
import CSeccomp
import Glibc

/// Finds and loads profiles by name or path (docs/profiles.md, "Where profiles are found").
public enum ProfileStore {
    /// Folders searched for NAME.json, in order.
    public static func searchPath() -> [String] {
        var dirs: [String] = []
        if let env = getenv("AGENTBOX_PROFILES") {
            dirs += String(cString: env).split(separator: ":").map(String.init)
        }
        if let config = configHome() { dirs.append(config + "/agentbox/profiles") }
        if let exeDir = executableDirectory() {
            dirs.append(exeDir + "/../share/agentbox/sandbox-profiles")
            dirs.append(exeDir + "/sandbox-profiles")
            // A build tree: .build/<triple>/<config>/agentbox -> the repository's sandbox-profiles/.
            var dir = exeDir
            for _ in 0..<(exeDir.split(separator: "/").contains(".build") ? 4 : 0) {
                dir = String(dir[..<(dir.lastIndex(of: "/") ?? dir.startIndex)])
                if dir.isEmpty { break }
                dirs.append(dir + "/sandbox-profiles")
            }
        }
        return dirs.filter { FileIO.isDirectory($0) }.map { RealHostPaths().canonical($0) ?? $0 }
            .reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
    }

    static func configHome() -> String? {
        if let x = getenv("XDG_CONFIG_HOME"), x.pointee != 0 { return String(cString: x) }
        if let h = getenv("HOME"), h.pointee != 0 { return String(cString: h) + "/.config" }
        return nil
    }

    static func executableDirectory() -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
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

/// Compiled seccomp programs cached by content (policy bytes, kernel, libseccomp): compiling a
/// 300-rule allowlist costs milliseconds, loading a cached one microseconds.
enum SeccompCache {
    static func cacheDir() -> String? {
        if geteuid() == 0 { return "/var/cache/agentbox" }
        if let x = getenv("XDG_CACHE_HOME"), x.pointee != 0 { return String(cString: x) + "/agentbox" }
        if let h = getenv("HOME"), h.pointee != 0 { return String(cString: h) + "/.cache/agentbox" }
        return nil
    }

    static func fnv1a(_ bytes: [UInt8], seed: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
        var h = seed
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    static func program(for path: String) throws(AgentboxError) -> [UInt8] {
        let source = try FileIO.read(path)
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: &uts.release) { Array($0.prefix { $0 != 0 }) }
        let lib = seccomp_version()!.pointee
        let key = fnv1a(source + kernel + Array("\(lib.major).\(lib.minor).\(lib.micro)/v1".utf8))
        let hex = String(key, radix: 16)
        if let dir = cacheDir() {
            let file = dir + "/seccomp-\(hex).bpf"
            if let cached = try? FileIO.read(file), !cached.isEmpty, cached.count % 8 == 0 { return cached }
            let program = try compile(source, path: path)
            store(program, dir: dir, file: file)
            return program
        }
        return try compile(source, path: path)
    }

    static func compile(_ source: [UInt8], path: String) throws(AgentboxError) -> [UInt8] {
        let policy: SeccompPolicy
        do { policy = try SeccompPolicy.parse(String(decoding: source, as: UTF8.self), file: path) } catch {
            throw error.asAgentboxError
        }
        return try policy.compile()
    }

    /// Best effort: write to a temporary file and rename, so readers never see half a program.
    static func store(_ program: [UInt8], dir: String, file: String) {
        var path = ""
        for part in dir.split(separator: "/") {
            path += "/" + part
            mkdir(path, 0o755)
        }
        let tmp = file + ".\(getpid()).tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        let n = program.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        if n == program.count { rename(tmp, file) } else { unlink(tmp) }
    }
}
