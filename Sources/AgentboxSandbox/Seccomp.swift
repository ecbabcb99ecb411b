import AgentboxCore
import CAgentboxShim
import CSeccomp
import Glibc

/// A seccomp policy in the OCI runtime-spec / Docker JSON format (docs/profiles.md), so users can bring
/// Docker's profile. Parsed strictly; compiled in the supervisor with libseccomp to a BPF program that
/// the init loads last.
public struct SeccompPolicy: Sendable {
    public struct Arg: Sendable, Equatable {
        public var index: UInt32
        public var value: UInt64
        public var valueTwo: UInt64
        public var op: String
    }
    public struct Filter: Sendable, Equatable {
        public var caps: [String] = []
        public var arches: [String] = []
        public var minKernel: String? = nil
    }
    public struct Rule: Sendable {
        public var names: [String]
        public var action: String
        public var errnoRet: UInt32?
        public var args: [Arg]
        public var includes: Filter
        public var excludes: Filter
    }

    public var path: String
    public var defaultAction: String
    public var defaultErrnoRet: UInt32?
    public var rules: [Rule]

    static let actions = ["SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
                          "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG"]
    static let ops = ["SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
                      "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7]

    /// Parses an OCI/Docker seccomp JSON document. Errors name the file, the key and the problem.
    public static func parse(_ text: String, file: String) throws(ProfileError) -> SeccompPolicy {
        func fail(_ key: String, _ problem: String) -> ProfileError { ProfileError(file: file, key: key, problem: problem) }
        let json: JSON
        do { json = try JSON.parse(text) } catch { throw fail("", "not valid JSON: \(error)") }
        guard case let .object(top) = json else { throw fail("", "the top level must be a JSON object") }
        var policy = SeccompPolicy(path: file, defaultAction: "", defaultErrnoRet: nil, rules: [])
        func action(_ v: JSON, _ key: String) throws(ProfileError) -> String {
            guard let s = v.stringValue, actions.contains(s) else {
                throw fail(key, "\(v.serialized) is not a seccomp action (one of \(actions.joined(separator: ", ")))")
            }
            return s
        }
        func errnoValue(_ v: JSON, _ key: String) throws(ProfileError) -> UInt32 {
            guard let n = v.intValue, n >= 0, n < 4096 else { throw fail(key, "must be an errno number, not \(v.serialized)") }
            return UInt32(n)
        }
        func strings(_ v: JSON, _ key: String) throws(ProfileError) -> [String] {
            guard let a = v.arrayValue else { throw fail(key, "must be an array of strings") }
            var out: [String] = []
            for (i, s) in a.enumerated() {
                guard let s = s.stringValue else { throw fail("\(key)[\(i)]", "must be a string") }
                out.append(s)
            }
            return out
        }
        func filter(_ v: JSON, _ key: String) throws(ProfileError) -> Filter {
            guard case let .object(members) = v else { throw fail(key, "must be an object") }
            var f = Filter()
            for (k, fv) in members {
                switch k {
                case "caps": f.caps = try strings(fv, "\(key).caps")
                case "arches": f.arches = try strings(fv, "\(key).arches")
                case "minKernel":
                    guard let s = fv.stringValue else { throw fail("\(key).minKernel", "must be a string like \"4.8\"") }
                    f.minKernel = s
                default: throw fail("\(key).\(k)", "unknown key (known: caps, arches, minKernel)")
                }
            }
            return f
        }
        for (key, value) in top {
            switch key {
            case "defaultAction": policy.defaultAction = try action(value, key)
            case "defaultErrnoRet": policy.defaultErrnoRet = try errnoValue(value, key)
            case "architectures", "archMap", "flags", "listenerPath", "listenerMetadata", "comment":
                break  // accepted for compatibility; agentbox filters the native architecture only
            case "syscalls":
                guard let list = value.arrayValue else { throw fail(key, "must be an array") }
                for (i, item) in list.enumerated() {
                    let base = "syscalls[\(i)]"
                    guard case let .object(members) = item else { throw fail(base, "must be an object") }
                    var rule = Rule(names: [], action: "", errnoRet: nil, args: [], includes: Filter(), excludes: Filter())
                    for (k, v) in members {
                        switch k {
                        case "names": rule.names = try strings(v, "\(base).names")
                        case "name":
                            guard let s = v.stringValue else { throw fail("\(base).name", "must be a string") }
                            rule.names.append(s)
                        case "action": rule.action = try action(v, "\(base).action")
                        case "errnoRet": rule.errnoRet = try errnoValue(v, "\(base).errnoRet")
                        case "comment": break
                        case "includes": rule.includes = try filter(v, "\(base).includes")
                        case "excludes": rule.excludes = try filter(v, "\(base).excludes")
                        case "args":
                            if v == .null { break }
                            guard let args = v.arrayValue else { throw fail("\(base).args", "must be an array") }
                            for (j, a) in args.enumerated() {
                                let akey = "\(base).args[\(j)]"
                                guard let index = a["index"]?.intValue, (0...5).contains(index) else {
                                    throw fail("\(akey).index", "must be an argument index 0-5")
                                }
                                guard let value = a["value"]?.uint64Value else {
                                    throw fail("\(akey).value", "must be an integer from 0 to 2^64-1")
                                }
                                guard let two = a["valueTwo"].map({ $0.uint64Value }) ?? 0 else {
                                    throw fail("\(akey).valueTwo", "must be an integer from 0 to 2^64-1")
                                }
                                guard let op = a["op"]?.stringValue, ops[op] != nil else {
                                    throw fail("\(akey).op", "must be one of \(ops.keys.sorted().joined(separator: ", "))")
                                }
                                for (ak, _) in a.objectValue ?? [] where !["index", "value", "valueTwo", "op"].contains(ak) {
                                    throw fail("\(akey).\(ak)", "unknown key (known: index, value, valueTwo, op)")
                                }
                                rule.args.append(Arg(index: UInt32(index), value: value, valueTwo: two, op: op))
                            }
                        default: throw fail("\(base).\(k)", "unknown key (known: names, action, errnoRet, args, includes, excludes, comment)")
                        }
                    }
                    guard !rule.names.isEmpty else { throw fail("\(base).names", "at least one syscall name is required") }
                    guard !rule.action.isEmpty else { throw fail("\(base).action", "is required") }
                    policy.rules.append(rule)
                }
            default:
                throw fail(key, "unknown key (known: defaultAction, defaultErrnoRet, architectures, archMap, syscalls, flags)")
            }
        }
        guard !policy.defaultAction.isEmpty else { throw fail("defaultAction", "is required") }
        return policy
    }

    public static func load(_ path: String) throws(AgentboxError) -> SeccompPolicy {
        let text = try FileIO.readString(path)
        do { return try parse(text, file: path) } catch { throw error.asAgentboxError }
    }

    static func actionValue(_ name: String, errno: UInt32?) -> UInt32 {
        switch name {
        case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD": return 0
        case "SCMP_ACT_KILL_PROCESS": return 0x8000_0000
        case "SCMP_ACT_TRAP": return 0x0003_0000
        case "SCMP_ACT_ERRNO": return 0x0005_0000 | ((errno ?? UInt32(EPERM)) & 0xffff)
        case "SCMP_ACT_TRACE": return 0x7ff0_0000 | ((errno ?? UInt32(EPERM)) & 0xffff)
        case "SCMP_ACT_LOG": return 0x7ffc_0000
        default: return 0x7fff_0000  // SCMP_ACT_ALLOW
        }
    }

    /// The native architecture's name in OCI terms.
    static var nativeArch: String {
        #if arch(x86_64)
        return "SCMP_ARCH_X86_64"
        #elseif arch(arm64)
        return "SCMP_ARCH_AARCH64"
        #else
        return "SCMP_ARCH_NATIVE"
        #endif
    }

    static func kernelAtLeast(_ version: String) -> Bool {
        var uts = utsname()
        uname(&uts)
        let release = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        func parts(_ s: String) -> [Int] { s.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) } }
        return parts(release).lexicographicallyPrecedes(parts(version)) == false
    }

    /// Whether a rule applies to a sandbox with no capabilities on this architecture and kernel.
    func applies(_ rule: Rule) -> Bool {
        if !rule.includes.caps.isEmpty { return false }  // the sandbox holds no capabilities
        if !rule.includes.arches.isEmpty && !rule.includes.arches.contains(where: { SeccompPolicy.archMatches($0) }) { return false }
        if let k = rule.includes.minKernel, !SeccompPolicy.kernelAtLeast(k) { return false }
        if rule.excludes.arches.contains(where: { SeccompPolicy.archMatches($0) }) { return false }
        if let k = rule.excludes.minKernel, SeccompPolicy.kernelAtLeast(k) { return false }
        return true
    }

    static func archMatches(_ name: String) -> Bool {
        let n = name.lowercased()
        #if arch(x86_64)
        return ["amd64", "x86_64", "scmp_arch_x86_64"].contains(n)
        #elseif arch(arm64)
        return ["arm64", "aarch64", "scmp_arch_aarch64"].contains(n)
        #else
        return false
        #endif
    }

    /// System calls newer than some libseccomp releases still shipped by distributions (Ubuntu 22.04 has
    /// 2.5.3): their numbers on x86_64 and aarch64 (one table for both since Linux 5.1), so a rule naming
    /// them is never skipped as "unknown on this architecture". A guard that skipped fchmodat2 would be a hole.
    static let newerSyscalls: [String: Int32] = {
        #if arch(x86_64) || arch(arm64)
        return ["io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "openat2": 437,
                "close_range": 436, "faccessat2": 439, "epoll_pwait2": 441, "mount_setattr": 442,
                "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
                "cachestat": 451, "fchmodat2": 452]
        #else
        return [:]
        #endif
    }()

    /// The file-mode guard (docs/security.md, "No privilege leaves through files"): a second filter,
    /// loaded before the profile's in every sandbox whatever its profile says, so that no file or
    /// directory a sandbox writes can carry S_ISUID or S_ISGID on the host. The kernel runs every loaded
    /// filter and the most restrictive answer wins, so a profile cannot lift it.
    /// - chmod, fchmod, fchmodat, fchmodat2 with either bit in the mode: EPERM.
    /// - creation with either bit: open/openat with O_CREAT or O_TMPFILE, creat, mknod, mknodat: EPERM.
    ///   (mkdir/mkdirat: the kernel itself keeps only the permission and sticky bits of the mode.)
    /// - openat2: ENOSYS (its mode is in a struct a filter cannot read; libc falls back to openat).
    /// - io_uring: EPERM (its operations bypass seccomp altogether).
    public static let fileModeGuard: SeccompPolicy = {
        let setuid: UInt64 = 0o4000, setgid: UInt64 = 0o2000
        let creat: UInt64 = 0o100, tmpfile: UInt64 = 0o20000000  // O_CREAT, __O_TMPFILE (x86_64, aarch64)
        func has(_ index: UInt32, _ bit: UInt64) -> Arg { Arg(index: index, value: bit, valueTwo: bit, op: "SCMP_CMP_MASKED_EQ") }
        func deny(_ names: [String], _ args: [Arg], errno: Int32 = EPERM) -> Rule {
            Rule(names: names, action: "SCMP_ACT_ERRNO", errnoRet: UInt32(errno), args: args, includes: Filter(), excludes: Filter())
        }
        var rules: [Rule] = []
        for bit in [setuid, setgid] {
            rules.append(deny(["chmod", "fchmod", "creat", "mknod"], [has(1, bit)]))
            rules.append(deny(["fchmodat", "fchmodat2", "mknodat"], [has(2, bit)]))
            for flag in [creat, tmpfile] {
                rules.append(deny(["open"], [has(1, flag), has(2, bit)]))
                rules.append(deny(["openat"], [has(2, flag), has(3, bit)]))
            }
        }
        rules.append(deny(["openat2"], [], errno: ENOSYS))
        rules.append(deny(["io_uring_setup", "io_uring_enter", "io_uring_register"], []))
        return SeccompPolicy(path: "agentbox file-mode guard", defaultAction: "SCMP_ACT_ALLOW", defaultErrnoRet: nil, rules: rules)
    }()

    /// Compiles the policy for the native architecture to a BPF program (struct sock_filter array).
    /// Syscall names this architecture does not have are skipped, as Docker does.
    public func compile() throws(AgentboxError) -> [UInt8] {
        let defaultValue = SeccompPolicy.actionValue(defaultAction, errno: defaultErrnoRet)
        guard let ctx = seccomp_init(defaultValue) else {
            throw AgentboxError(stage: "seccomp", "libseccomp could not create a filter for \(path)")
        }
        defer { seccomp_release(ctx) }
        // Foreign-architecture syscalls (int 0x80, x32) kill the process outright.
        _ = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, 0x8000_0000)
        _ = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)
        var added = 0
        for rule in rules where applies(rule) {
            let value = SeccompPolicy.actionValue(rule.action, errno: rule.errnoRet)
            if value == defaultValue { continue }  // libseccomp rejects rules equal to the default
            let conditions = rule.args.map {
                scmp_arg_cmp(arg: $0.index, op: scmp_compare(rawValue: UInt32(SeccompPolicy.ops[$0.op]!)),
                             datum_a: $0.value, datum_b: $0.valueTwo)
            }
            // As runc does: conditions on the same argument are alternatives (one rule each).
            let indexes = conditions.map(\.arg)
            let groups: [[scmp_arg_cmp]] = Set(indexes).count == indexes.count ? [conditions] : conditions.map { [$0] }
            for name in rule.names {
                var nr = seccomp_syscall_resolve_name(name)
                if nr == __NR_SCMP_ERROR, let known = SeccompPolicy.newerSyscalls[name] { nr = known }
                if nr == __NR_SCMP_ERROR { continue }
                for group in groups {
                    let rc = group.withUnsafeBufferPointer {
                        seccomp_rule_add_array(ctx, value, nr, UInt32($0.count), $0.baseAddress)
                    }
                    if rc < 0 && rc != -EEXIST {
                        throw AgentboxError(stage: "seccomp", "\(path): rule for \(name) rejected by libseccomp: \(FileIO.errnoString(-rc))",
                                            hint: "check the rule's arguments and action")
                    }
                    if rc == 0 { added += 1 }
                }
            }
        }
        // Syscalls sorted in a binary tree: the same decisions in a few comparisons instead of hundreds.
        // It matters at every sandbox's start: the kernel runs the filter once per syscall number to
        // build its cache of always-allowed calls, which made loading Docker's allowlist cost ~0.55 ms
        // linear and ~0.19 ms as a tree (docs/benchmarks.md). Only from libseccomp 2.5.4 (before, a
        // tree without rules ignored the default action), and for more than a few rules (below that the
        // linear list is as short). The export builds the program.
        let v = seccomp_version()!.pointee
        if added > 8 && (v.major, v.minor, v.micro) >= (2, 5, 4) { _ = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2) }
        let memfd = ab_memfd("agentbox-seccomp")
        guard memfd >= 0 else { throw AgentboxError(stage: "seccomp", "memfd_create: \(FileIO.errnoString())") }
        defer { close(memfd) }
        let rc = seccomp_export_bpf(ctx, memfd)
        guard rc == 0 else { throw AgentboxError(stage: "seccomp", "exporting the BPF program failed: \(FileIO.errnoString(-rc))") }
        let size = lseek(memfd, 0, SEEK_END)
        var program = [UInt8](repeating: 0, count: Int(size))
        let n = program.withUnsafeMutableBytes { pread(memfd, $0.baseAddress, $0.count, 0) }
        guard n == size else { throw AgentboxError(stage: "seccomp", "reading the BPF program failed") }
        return program
    }
}
