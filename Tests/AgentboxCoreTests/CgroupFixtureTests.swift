import Glibc
import Testing
@testable import AgentboxCore
@testable import AgentboxSandbox

/// The cgroup v1 (legacy, hybrid) and v2 code on fixture trees: what it reads from /proc and the
/// controller files, what it writes, and what it reports, without a cgroup filesystem.
@Suite struct CgroupFixtureTests {
    func tree() -> String {
        var t = Array("/tmp/ab-cgfx-XXXXXX".utf8CString)
        return t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }
    func put(_ path: String, _ text: String) {
        _ = try? FileIO.makeDirectories(String(path[..<path.lastIndex(of: "/")!]))
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }
    func read(_ path: String) -> String { FileIO.readSmall(path)?.trimmingSpaces() ?? "<missing>" }

    /// A hybrid host's mountinfo: v1 controllers (cpu co-mounted with cpuacct), a cgroup2 mount at
    /// unified that must not be taken for a v1 controller, and unrelated mounts.
    func mountinfo(_ root: String) -> String {
        """
        22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
        25 22 0:22 / \(root) ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
        26 25 0:23 / \(root)/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
        30 25 0:27 / \(root)/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
        31 25 0:28 / \(root)/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
        32 25 0:29 / \(root)/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
        33 25 0:30 / /elsewhere/memory rw - cgroup cgroup rw,memory
        """
    }
    let procCgroup = "12:pids:/user.slice/session-1.scope\n4:memory:/user.slice\n3:cpu,cpuacct:/\n1:name=systemd:/user.slice/session-1.scope\n0::/user.slice/session-1.scope\n"

    @Test func v1ParsersFindEachControllerAndTheSupervisorsOwnCgroup() {
        let root = "/sys/fs/cgroup"
        #expect(CgroupV1.controllerMount("memory", root: root, mountinfo: mountinfo(root)) == root + "/memory")
        #expect(CgroupV1.controllerMount("cpu", root: root, mountinfo: mountinfo(root)) == root + "/cpu,cpuacct")
        #expect(CgroupV1.controllerMount("cpuacct", root: root, mountinfo: mountinfo(root)) == root + "/cpu,cpuacct")
        #expect(CgroupV1.controllerMount("blkio", root: root, mountinfo: mountinfo(root)) == nil)
        #expect(CgroupV1.controllerMount("memory", root: root, mountinfo: "garbage\n- -\n") == nil)
        let own = CgroupV1.ownCgroups(procCgroup)
        #expect(own["memory"] == "/user.slice" && own["pids"] == "/user.slice/session-1.scope" && own["cpuacct"] == "/")
        #expect(own["name=systemd"] == "/user.slice/session-1.scope" && own.count == 5, "\(own)")
    }

    @Test func v1CreateWritesLimitsUnderTheOwnCgroupAndReportsFromTheControllerFiles() throws {
        let root = tree()
        let id = "ab-1-fixture"
        // The kernel makes the control files; the fixture makes them ahead (mkdir tolerates EEXIST).
        for f in ["memory/user.slice/agentbox/\(id)/memory.limit_in_bytes", "pids/user.slice/session-1.scope/agentbox/\(id)/pids.max",
                  "cpu,cpuacct/agentbox/\(id)/cpu.cfs_period_us", "cpu,cpuacct/agentbox/\(id)/cpu.cfs_quota_us"] { put(root + "/" + f, "") }
        var limits = Limits()
        limits.memory = 512 << 20
        limits.pids = 64
        limits.cpus = 1.5
        let cg = try CgroupV1.create(id: id, limits: limits, root: root, mountinfo: mountinfo(root), procCgroup: procCgroup)
        let mem = root + "/memory/user.slice/agentbox/\(id)"
        #expect(read(mem + "/memory.limit_in_bytes") == "\(512 << 20)")
        #expect(read(root + "/pids/user.slice/session-1.scope/agentbox/\(id)/pids.max") == "64")
        #expect(read(root + "/cpu,cpuacct/agentbox/\(id)/cpu.cfs_quota_us") == "150000")
        put(mem + "/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
        put(mem + "/memory.max_usage_in_bytes", "1048576\n")
        put(root + "/pids/user.slice/session-1.scope/agentbox/\(id)/pids.events", "max 3\n")
        put(root + "/cpu,cpuacct/agentbox/\(id)/cpuacct.usage", "2500000000\n")
        let r = cg.report()
        #expect(r.oomKills == 2 && r.peakMemory == 1 << 20 && r.pidsLimitHits == 3 && r.cpuSeconds == 2.5)
        #expect(cg.description.contains(mem))
    }

    @Test func v1CreateFailsClearlyWhenAControllerIsMissingAndLeavesNothing() {
        let root = tree()
        var limits = Limits()
        limits.pids = 10
        let info = "30 25 0:27 / \(root)/memory rw - cgroup cgroup rw,memory\n"
        #expect {
            _ = try CgroupV1.create(id: "ab-1-x", limits: limits, root: root, mountinfo: info, procCgroup: procCgroup)
        } throws: { ($0 as? AgentboxError)?.message.contains("the pids controller is not mounted") == true }
    }

    @Test func v2CreateWritesLimitsAndReportsFromTheUnifiedFiles() throws {
        guard geteuid() == 0, getenv("AGENTBOX_CGROUP") == nil else { return }  // v2 without delegation needs root
        let mount = tree()
        let id = "ab-2-fixture"
        put(mount + "/cgroup.controllers", "cpuset cpu io memory pids\n")
        put(mount + "/cgroup.subtree_control", "")
        put(mount + "/agentbox/cgroup.controllers", "cpu memory pids\n")
        put(mount + "/agentbox/cgroup.subtree_control", "")
        for f in ["memory.max", "memory.swap.max", "pids.max", "cpu.max"] { put(mount + "/agentbox/\(id)/" + f, "") }
        var limits = Limits()
        limits.memory = 1 << 30
        limits.pids = 100
        limits.cpus = 0.5
        let cg = try CgroupV2.create(id: id, limits: limits, mount: mount)
        let dir = mount + "/agentbox/\(id)"
        #expect(read(mount + "/cgroup.subtree_control") == "+memory +pids +cpu")
        #expect(read(dir + "/memory.max") == "\(1 << 30)" && read(dir + "/memory.swap.max") == "0")
        #expect(read(dir + "/pids.max") == "100" && read(dir + "/cpu.max") == "50000 100000")
        #expect(cg.cloneFd >= 0)
        put(dir + "/memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
        put(dir + "/pids.events", "max 7\n")
        put(dir + "/memory.peak", "4096\n")
        put(dir + "/cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
        let r = cg.report()
        #expect(r.oomKills == 1 && r.pidsLimitHits == 7 && r.peakMemory == 4096 && r.cpuSeconds == 1.5)
        cg.destroy()
    }

    @Test func v2CreateFailsWithAHintWhenALimitCannotBeWrittenAndRemovesItsCgroup() {
        guard geteuid() == 0, getenv("AGENTBOX_CGROUP") == nil else { return }
        let mount = tree()
        var limits = Limits()
        limits.pids = 5
        #expect {
            _ = try CgroupV2.create(id: "ab-2-nopids", limits: limits, mount: mount)
        } throws: { ($0 as? AgentboxError)?.hint.contains("subtree_control") == true }
        #expect(access(mount + "/agentbox/ab-2-nopids", F_OK) != 0, "the half-made cgroup must be removed")
    }

    @Test func keyedFilesIgnoreWhatIsNotAKeyAndANumber() {
        #expect(Cgroups.keyed("oom_kill 3\nbad line here\nmax x\n\nmax 9") == ["oom_kill": 3, "max": 9])
        #expect(Cgroups.keyed(nil).isEmpty)
    }
}
