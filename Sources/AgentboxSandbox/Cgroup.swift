import AgentboxCore
import CAgentboxShim
import Glibc

/// How the host mounts cgroups, detected like crun does (statfs magic of /sys/fs/cgroup).
public enum CgroupMode: String, Sendable {
    /// cgroup v2 only (most current distributions).
    case unified
    /// v1 controllers plus a cgroup2 mount at /sys/fs/cgroup/unified (this project's development hosts).
    case hybrid
    /// v1 only.
    case legacy
    case unavailable

    public static func detect(root: String = "/sys/fs/cgroup") -> CgroupMode {
        let type = ab_statfs_type(root)
        if type == AB_CGROUP2_SUPER_MAGIC { return .unified }
        if type == AB_TMPFS_MAGIC {
            return ab_statfs_type(root + "/unified") == AB_CGROUP2_SUPER_MAGIC ? .hybrid : .legacy
        }
        return .unavailable
    }
}

/// What a sandbox's cgroup reports after the run.
public struct CgroupReport: Sendable {
    public var oomKills = 0
    public var pidsLimitHits = 0
    public var peakMemory: UInt64? = nil
    public var cpuSeconds: Double? = nil
    public init() {}
}

/// One sandbox's cgroup (one directory per controller on v1). Created before the spawn; the child is
/// attached before it execs the init, so every process of the sandbox is accounted and limited.
public protocol CgroupHandle: AnyObject {
    /// An O_DIRECTORY fd for clone3's CLONE_INTO_CGROUP (v2), or -1.
    var cloneFd: Int32 { get }
    var description: String { get }
    /// Files the child itself writes "0" to, joining the cgroup without the parent's attach (cgroup v1:
    /// each controller's `tasks`); empty when CLONE_INTO_CGROUP or `attach` places it.
    var selfJoinFiles: [String] { get }
    /// Places `pid` in the cgroup, unless it joined by itself (`joined`) or by CLONE_INTO_CGROUP.
    func attach(pid: pid_t, joined: Bool) throws(AgentboxError)
    func report() -> CgroupReport
    /// Kills what is left and removes the directories.
    func destroy()
}

public enum Cgroups {
    /// Creates the cgroup for sandbox `id` with `limits`, or returns nil with the reason when this
    /// host/user cannot (no cgroupfs, no write access, no delegation).
    public static func create(id: String, limits: Limits, mode: CgroupMode = .detect(),
                              root: String = "/sys/fs/cgroup") -> Result<CgroupHandle, AgentboxError> {
        do throws(AgentboxError) {
            switch mode {
            case .unified: return .success(try CgroupV2.create(id: id, limits: limits, mount: root))
            case .hybrid, .legacy: return .success(try CgroupV1.create(id: id, limits: limits, root: root))
            case .unavailable:
                throw AgentboxError(stage: "cgroup", "no cgroup filesystem is mounted at \(root)")
            }
        } catch {
            return .failure(error)
        }
    }

    /// The directory name of a sandbox's cgroup: `ab-<supervisor pid>-<id>`, so that leftovers of a
    /// supervisor that was killed (SIGKILL leaves no time to clean up) can be recognised and removed.
    public static func name(for id: String) -> String { "ab-\(getpid())-\(id)" }

    /// Removes cgroups under `parent` whose supervisor is gone. rmdir only succeeds on empty cgroups,
    /// so a live sandbox is never touched.
    static func removeStale(in parent: String) {
        guard let d = opendir(parent) else { return }
        var stale: [String] = []
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let parts = name.split(separator: "-")
            guard parts.count >= 3, parts[0] == "ab", let pid = Int32(parts[1]), pid != getpid() else { continue }
            if kill(pid, 0) < 0 && errno == ESRCH { stale.append(parent + "/" + name) }
        }
        closedir(d)
        for dir in stale { _ = rmdir(dir) }
    }

    static func mkdirOwned(_ path: String) throws(AgentboxError) {
        if mkdir(path, 0o755) < 0 && errno != EEXIST {
            let err = errno
            throw AgentboxError(stage: "cgroup", "cannot create \(path): \(FileIO.errnoString(err))",
                                hint: err == EACCES || err == EPERM || err == EROFS
                                    ? "this user has no delegated cgroup; run as root, or give agentbox a delegated cgroup v2 (AGENTBOX_CGROUP, e.g. from `systemd-run --user --scope -p Delegate=yes`)"
                                    : "")
        }
    }

    /// Removes a cgroup directory, retrying while the kernel finishes tearing it down.
    static func remove(_ path: String) {
        for attempt in 0..<200 {
            if rmdir(path) == 0 || errno == ENOENT { return }
            if errno != EBUSY { return }
            usleep(attempt < 20 ? 500 : 5000)
        }
    }

    /// Reads `key value` lines (memory.events, pids.events, cpu.stat) into a dictionary.
    static func keyed(_ text: String?) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for line in (text ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = UInt64(parts[1]) { out[String(parts[0])] = v }
        }
        return out
    }
}

/// cgroup v2: one directory under `<mount>/agentbox/` (or under AGENTBOX_CGROUP, a delegated cgroup).
final class CgroupV2: CgroupHandle {
    let path: String
    let cloneFd: Int32
    var description: String { "cgroup v2 \(path)" }

    init(path: String, fd: Int32) {
        self.path = path
        self.cloneFd = fd
    }

    static func create(id: String, limits: Limits, mount: String) throws(AgentboxError) -> CgroupV2 {
        let parent: String
        if let delegated = getenv("AGENTBOX_CGROUP").map({ String(cString: $0) }), !delegated.isEmpty {
            parent = delegated.hasPrefix("/sys/") ? delegated : mount + delegated
        } else {
            guard geteuid() == 0 else {
                throw AgentboxError(stage: "cgroup", "cgroup v2 needs root or a delegated cgroup",
                                    hint: "set AGENTBOX_CGROUP to a delegated cgroup (e.g. one made by `systemd-run --user --scope -p Delegate=yes`)")
            }
            parent = mount + "/agentbox"
            try Cgroups.mkdirOwned(parent)
            enableControllers(mount)
        }
        enableControllers(parent)
        Cgroups.removeStale(in: parent)
        let dir = parent + "/" + id
        try Cgroups.mkdirOwned(dir)
        let handle = CgroupV2(path: dir, fd: open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC))
        do throws(AgentboxError) {
            if let memory = limits.memory {
                try FileIO.write(dir + "/memory.max", "\(memory)")
                try? FileIO.write(dir + "/memory.swap.max", "0")
            }
            if let pids = limits.pids { try FileIO.write(dir + "/pids.max", "\(pids)") }
            if let cpus = limits.cpus { try FileIO.write(dir + "/cpu.max", "\(max(1000, Int(cpus * 100_000))) 100000") }
        } catch {
            handle.destroy()
            throw AgentboxError(stage: "cgroup", error.description,
                                hint: "the controller may not be enabled for \(parent) (see cgroup.subtree_control)")
        }
        return handle
    }

    static func enableControllers(_ dir: String) {
        let available = FileIO.readSmall(dir + "/cgroup.controllers") ?? ""
        // The kernel ends the list with a newline: split on any whitespace, or the last one is missed.
        let names = available.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        let wanted = ["memory", "pids", "cpu"].filter { names.contains($0) }
            .map { "+" + $0 }
        if !wanted.isEmpty { try? FileIO.write(dir + "/cgroup.subtree_control", wanted.joined(separator: " ")) }
    }

    var selfJoinFiles: [String] { [] }

    func attach(pid: pid_t, joined: Bool) throws(AgentboxError) {
        if cloneFd >= 0 { return }  // placed by CLONE_INTO_CGROUP
        try FileIO.write(path + "/cgroup.procs", "\(pid)")
    }

    func report() -> CgroupReport {
        var r = CgroupReport()
        r.oomKills = Int(Cgroups.keyed(FileIO.readSmall(path + "/memory.events"))["oom_kill"] ?? 0)
        r.pidsLimitHits = Int(Cgroups.keyed(FileIO.readSmall(path + "/pids.events"))["max"] ?? 0)
        r.peakMemory = FileIO.readSmall(path + "/memory.peak").flatMap { UInt64($0.trimmingSpaces()) }
        r.cpuSeconds = Cgroups.keyed(FileIO.readSmall(path + "/cpu.stat"))["usage_usec"].map { Double($0) / 1e6 }
        return r
    }

    func destroy() {
        try? FileIO.write(path + "/cgroup.kill", "1")
        if cloneFd >= 0 { close(cloneFd) }
        Cgroups.remove(path)
    }
}

/// cgroup v1 (legacy and hybrid hosts): a directory per controller, created under the supervisor's own
/// cgroup in each hierarchy so the host's limits on agentbox still apply to its sandboxes.
final class CgroupV1: CgroupHandle {
    /// controller name -> directory
    var dirs: [(String, String)] = []
    /// Where cpuacct is mounted: the cpu directory has cpuacct.usage when the two are co-mounted.
    var cpuacctMount: String? = nil
    var cloneFd: Int32 { -1 }
    var description: String { "cgroup v1 " + dirs.map { $0.1 }.joined(separator: ", ") }

    /// `mountinfo` and `procCgroup` are the texts of /proc/self/mountinfo and /proc/self/cgroup (read
    /// when nil; given by the fixture tests).
    static func create(id: String, limits: Limits, root: String, mountinfo: String? = nil,
                       procCgroup: String? = nil) throws(AgentboxError) -> CgroupV1 {
        let handle = CgroupV1()
        let mountinfo = mountinfo ?? FileIO.readSmall("/proc/self/mountinfo") ?? ""
        handle.cpuacctMount = controllerMount("cpuacct", root: root, mountinfo: mountinfo)
        let own = ownCgroups(procCgroup ?? FileIO.readSmall("/proc/self/cgroup") ?? "")
        // Only the controllers a limit needs, plus cpuacct/memory for the usage report.
        var wanted: [String] = []
        if limits.memory != nil { wanted.append("memory") }
        if limits.pids != nil { wanted.append("pids") }
        if limits.cpus != nil { wanted.append("cpu") }
        do throws(AgentboxError) {
            for controller in wanted {
                guard let mountDir = controllerMount(controller, root: root, mountinfo: mountinfo) else {
                    throw AgentboxError(stage: "cgroup", "the \(controller) controller is not mounted under \(root)")
                }
                let base = mountDir + (own[controller] ?? "")
                let parent = (base.hasSuffix("/") ? String(base.dropLast()) : base) + "/agentbox"
                try Cgroups.mkdirOwned(parent)
                Cgroups.removeStale(in: parent)
                let dir = parent + "/" + id
                try Cgroups.mkdirOwned(dir)
                handle.dirs.append((controller, dir))
                switch controller {
                case "memory":
                    try FileIO.write(dir + "/memory.limit_in_bytes", "\(limits.memory!)")
                    if FileIO.exists(dir + "/memory.memsw.limit_in_bytes") {
                        try? FileIO.write(dir + "/memory.memsw.limit_in_bytes", "\(limits.memory!)")
                    }
                case "pids":
                    try FileIO.write(dir + "/pids.max", "\(limits.pids!)")
                case "cpu":
                    try FileIO.write(dir + "/cpu.cfs_period_us", "100000")
                    try FileIO.write(dir + "/cpu.cfs_quota_us", "\(max(1000, Int(limits.cpus! * 100_000)))")
                default: break
                }
            }
        } catch {
            handle.destroy()
            throw error
        }
        return handle
    }

    /// The mount point of a v1 controller (from /proc/self/mountinfo; "cpu" may be co-mounted as "cpu,cpuacct").
    /// Read as bytes: splitting the whole file into Characters cost ~0.15 ms per call, twice per sandbox.
    static func controllerMount(_ controller: String, root: String, mountinfo: String) -> String? {
        let text = Array(mountinfo.utf8), wanted = Array(controller.utf8)
        var lineStart = 0
        while lineStart < text.count {
            let lineEnd = text[lineStart...].firstIndex(of: UInt8(ascii: "\n")) ?? text.count
            defer { lineStart = lineEnd + 1 }
            // The line's space-separated fields, as (start, end) offsets.
            var starts: [Int] = [], ends: [Int] = []
            var i = lineStart
            while i < lineEnd {
                while i < lineEnd && text[i] == UInt8(ascii: " ") { i += 1 }
                if i == lineEnd { break }
                starts.append(i)
                while i < lineEnd && text[i] != UInt8(ascii: " ") { i += 1 }
                ends.append(i)
            }
            func field(_ k: Int) -> ArraySlice<UInt8> { text[starts[k]..<ends[k]] }
            guard let dash = (0..<starts.count).first(where: { field($0).elementsEqual("-".utf8) }), dash + 3 < starts.count, starts.count > 4,
                  field(dash + 1).elementsEqual("cgroup".utf8) else { continue }
            let options = field(dash + 3)
            var o = options.startIndex, found = false
            while o <= options.endIndex && !found {
                let e = options[o...].firstIndex(of: UInt8(ascii: ",")) ?? options.endIndex
                found = options[o..<e].elementsEqual(wanted)
                o = e + 1
            }
            let point = String(decoding: field(4), as: UTF8.self)
            if found, point.hasPrefix(root) { return point }
        }
        return nil
    }

    /// The supervisor's own cgroup path per v1 controller, from /proc/self/cgroup.
    static func ownCgroups(_ procCgroup: String) -> [String: String] {
        var out: [String: String] = [:]
        for line in procCgroup.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            for c in parts[1].split(separator: ",") { out[String(c)] = String(parts[2]) }
        }
        return out
    }

    var selfJoinFiles: [String] { dirs.map { $0.1 + "/tasks" } }

    func attach(pid: pid_t, joined: Bool) throws(AgentboxError) {
        if joined { return }
        // The parent's write takes the global threadgroup lock (an RCU grace period: often 8-11 ms).
        for (_, dir) in dirs { try FileIO.write(dir + "/cgroup.procs", "\(pid)") }
    }

    func report() -> CgroupReport {
        var r = CgroupReport()
        for (controller, dir) in dirs {
            switch controller {
            case "memory":
                r.oomKills = Int(Cgroups.keyed(FileIO.readSmall(dir + "/memory.oom_control"))["oom_kill"] ?? 0)
                r.peakMemory = FileIO.readSmall(dir + "/memory.max_usage_in_bytes").flatMap { UInt64($0.trimmingSpaces()) }
            case "pids":
                r.pidsLimitHits = Int(Cgroups.keyed(FileIO.readSmall(dir + "/pids.events"))["max"] ?? 0)
            case "cpu":
                if let acct = cpuacctMount, dir.hasPrefix(acct),
                   let ns = FileIO.readSmall(dir + "/cpuacct.usage").flatMap({ UInt64($0.trimmingSpaces()) }) {
                    r.cpuSeconds = Double(ns) / 1e9
                }
            default: break
            }
        }
        return r
    }

    func destroy() {
        for (_, dir) in dirs.reversed() {
            // Normally empty already: the PID namespace died with its init.
            for pid in (FileIO.readSmall(dir + "/cgroup.procs") ?? "").split(separator: "\n").compactMap({ Int32($0) }) {
                kill(pid, SIGKILL)
            }
            Cgroups.remove(dir)
        }
        dirs = []
    }
}
