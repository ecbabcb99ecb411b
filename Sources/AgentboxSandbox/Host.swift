import AgentboxCore
import CAgentboxShim
import Glibc

/// The real filesystem, for the policy resolver.
public struct RealHostPaths: HostPaths {
    public init() {}
    /// The path with every symlink resolved (nil when it does not exist). realpath(3) makes a readlink
    /// per component, but measured faster here than an O_PATH descriptor and a readlink of
    /// /proc/self/fd/N (1.25 against 1.8 ms for one `exec`'s policy): procfs lookups cost more.
    public func canonical(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
    public func symlinkText(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    public func isDirectory(_ path: String) -> Bool { FileIO.isDirectory(path) }
}

/// Facts about this host that decide which guarantees a sandbox gets (`agentbox doctor`).
public struct HostReport: Sendable {
    public var kernel = ""
    public var uid: UInt32 = 0
    public var userNamespaces = false
    public var userNamespacesDetail = ""
    public var apparmorRestrictsUserns = false
    public var seccomp = false
    public var landlockABI: Int32 = 0
    public var cgroupMode = CgroupMode.unavailable
    public var cgroupWritable = false
    public var cgroupDetail = ""
    public var idmappedMounts = false
    public var initPath: String? = nil
    /// A real sandbox was built and ran /bin/true (the end-to-end check), or why not.
    public var sandboxWorks = false
    public var sandboxDetail = ""
    /// The probe sandbox tried `chmod 4755` on a file of its workspace and the host's file stayed
    /// without the bit (docs/security.md, "No privilege leaves through files").
    public var fileModeGuard = false

    public static func probe() -> HostReport {
        var r = HostReport()
        var uts = utsname()
        uname(&uts)
        r.kernel = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        r.uid = getuid()
        let maxUserns = FileIO.readSmall("/proc/sys/user/max_user_namespaces").flatMap { Int($0.trimmingSpaces()) } ?? 1
        let debianKnob = FileIO.readSmall("/proc/sys/kernel/unprivileged_userns_clone")?.trimmingSpaces()
        r.apparmorRestrictsUserns = FileIO.readSmall("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")?.trimmingSpaces() == "1"
        if maxUserns == 0 {
            r.userNamespacesDetail = "user.max_user_namespaces is 0"
        } else if debianKnob == "0" && r.uid != 0 {
            r.userNamespacesDetail = "kernel.unprivileged_userns_clone is 0"
        } else {
            // The real test: create one.
            let fd = ab_make_userns_fd("0 \(getuid()) 1", "0 \(getgid()) 1")
            if fd >= 0 { close(fd) }
            r.userNamespaces = fd >= 0
            if !r.userNamespaces {
                r.userNamespacesDetail = r.apparmorRestrictsUserns
                    ? "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)"
                    : "creating a user namespace failed: \(FileIO.errnoString())"
            }
        }
        r.seccomp = ab_seccomp_available() == 1
        let abi = ab_landlock_abi()
        r.landlockABI = abi > 0 ? abi : 0
        r.cgroupMode = CgroupMode.detect()
        switch Cgroups.create(id: Cgroups.name(for: "doctor"), limits: { var l = Limits(); l.pids = 64; return l }()) {
        case let .success(handle):
            r.cgroupWritable = true
            r.cgroupDetail = handle.description
            handle.destroy()
        case let .failure(error):
            r.cgroupDetail = error.message
        }
        r.idmappedMounts = r.uid == 0 && probeIdmap()
        r.initPath = try? Sandbox.locateInit()
        (r.sandboxWorks, r.sandboxDetail, r.fileModeGuard) = probeSandbox()
        return r
    }

    /// Builds a real sandbox (default isolation, no limits, a private empty workspace) and runs a
    /// shell in it that tries to make a setuid file: the only check that catches everything (AppArmor
    /// denying capabilities inside user namespaces, a container without mount rights, a broken install),
    /// and the file-mode guard checked where it matters, on the host's copy of the file.
    static func probeSandbox() -> (works: Bool, detail: String, guardHolds: Bool) {
        var template = [CChar]("/tmp/agentbox-doctor-XXXXXX".utf8CString)
        guard let dirPtr = mkdtemp(&template) else { return (false, "mkdtemp: \(FileIO.errnoString())", false) }
        let dir = String(cString: dirPtr)
        let probe = dir + "/setuid-probe"
        defer { unlink(probe); rmdir(dir) }
        var profile = Profile(name: "doctor")
        profile.system = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"]
        profile.seccomp = try? ProfileStore.locate("workspace-write").replacingLastComponent(with: "seccomp/default.json")
        var options = SandboxOptions()
        options.workspace = dir
        do throws(AgentboxError) {
            let policy = try PolicyResolver.resolve(profile: profile, options: options, cwd: dir, host: RealHostPaths())
            let script = ": > setuid-probe && chmod 4755 setuid-probe 2>/dev/null; exit 0"
            let result = try Sandbox(policy: policy, argv: ["/bin/sh", "-c", script]) { _ in }.run()
            var st = stat()
            let exists = stat(probe, &st) == 0
            let guardHolds = exists && st.st_mode & 0o6000 == 0
            if result.exitCode == 0 && exists { return (true, "built a sandbox and ran a shell in it", guardHolds) }
            return (false, "the probe sandbox ran /bin/sh but it ended with \(result.exitCode)", false)
        } catch {
            return (false, "\(error.stage): \(error.message)", false)
        }
    }

    static func probeIdmap() -> Bool {
        let tree = ab_open_tree(AT_FDCWD, "/tmp", AB_OPEN_TREE_CLONE | AB_OPEN_TREE_CLOEXEC)
        guard tree >= 0 else { return false }
        defer { close(tree) }
        let userns = ab_make_userns_fd("0 1 1", "0 1 1")
        guard userns >= 0 else { return false }
        defer { close(userns) }
        return ab_mount_setattr(tree, "", AB_AT_EMPTY_PATH, AB_MOUNT_ATTR_IDMAP, 0, 0, userns) == 0
    }

    /// What `exec` enforces here, one line each, with the weaker modes named.
    public var guarantees: [(String, Bool, String)] {
        let rootless = uid != 0
        return [
            ("sandbox", sandboxWorks, sandboxDetail),
            ("namespaces", userNamespaces, userNamespaces ? "user, pid, mount, net, uts, ipc, cgroup" : userNamespacesDetail),
            ("seccomp", seccomp, seccomp ? "syscall filter loaded last (OCI/Docker JSON policies)" : "the kernel has no seccomp filters"),
            ("landlock", landlockABI > 0, landlockABI > 0 ? "ABI \(landlockABI): writes only in the workspace, /tmp, /dev/shm" : "unavailable: profiles with landlock=required fail, best-effort runs without it"),
            ("capabilities", true, "all dropped; no_new_privs"),
            ("no set-id files", fileModeGuard, fileModeGuard
                ? "setuid/setgid bits refused on every write path (seccomp file-mode guard in every profile); writable binds nosuid,nodev"
                : (sandboxWorks ? "a sandbox could make a setuid file on the host: do not run untrusted code here" : "not checked: no sandbox could be built")),
            ("limits", cgroupWritable, cgroupWritable ? "memory, pids, cpu enforced by \(cgroupMode.rawValue) cgroups" : "no cgroup: pids via RLIMIT_NPROC, memory via per-process RLIMIT_AS, cpus not enforced (--strict-limits fails instead)"),
            ("never host root", true, rootless ? "sandbox user is you (uid \(uid))" : (idmappedMounts ? "each sandbox maps to its own host uid in \(Sandbox.rootMappedIDs.lowerBound)-\(Sandbox.rootMappedIDs.upperBound - 1); workspace idmapped to its owner" : "each sandbox maps to its own host uid in \(Sandbox.rootMappedIDs.lowerBound)-\(Sandbox.rootMappedIDs.upperBound - 1); idmapped mounts unavailable: workspace files would be owned by that uid")),
        ]
    }

    public var json: JSON {
        .object([
            ("kernel", .string(kernel)),
            ("uid", .number(Double(uid))),
            ("user_namespaces", .bool(userNamespaces)),
            ("user_namespaces_detail", .string(userNamespacesDetail)),
            ("apparmor_restricts_userns", .bool(apparmorRestrictsUserns)),
            ("seccomp", .bool(seccomp)),
            ("landlock_abi", .number(Double(landlockABI))),
            ("cgroup_mode", .string(cgroupMode.rawValue)),
            ("cgroup_writable", .bool(cgroupWritable)),
            ("cgroup_detail", .string(cgroupDetail)),
            ("idmapped_mounts", .bool(idmappedMounts)),
            ("init", initPath.map { .string($0) } ?? .null),
            ("sandbox_works", .bool(sandboxWorks)),
            ("sandbox_detail", .string(sandboxDetail)),
            ("file_mode_guard", .bool(fileModeGuard)),
            ("guarantees", .object(guarantees.map { ($0.0, .object([("ok", .bool($0.1)), ("detail", .string($0.2))])) })),
        ])
    }
}

/// Random identifiers for runs and cgroups.
public enum RunID {
    public static func make() -> String {
        var bytes = [UInt8](repeating: 0, count: 6)
        _ = bytes.withUnsafeMutableBytes { ab_getrandom($0.baseAddress!, 6) }
        return bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

extension String {
    /// `/a/b/c.json` -> `/a/b/<name>`.
    func replacingLastComponent(with name: String) -> String {
        guard let slash = lastIndex(of: "/") else { return name }
        return String(self[...slash]) + name
    }
}
