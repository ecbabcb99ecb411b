import AgentboxCore
import CAgentboxShim
import Glibc

/// A launched sandbox: its init's pid and every descriptor that belongs to it, owned here. When the
/// handle goes away (normally, or on an error path) a sandbox still running is killed and reaped, the
/// descriptors are closed and the cgroup removed: nothing is left behind.
final class SandboxProcess {
    let pid: pid_t
    /// Readable when the init exits (-1 before Linux 5.3: the channel's hang-up says it instead).
    let pidfd: Descriptor
    /// The control channel (SOCK_SEQPACKET) to the init.
    let channel: Descriptor
    /// The read ends of the command's stdout and stderr when output is captured (else -1).
    let stdout: Descriptor
    let stderr: Descriptor
    /// The stop signals' descriptor (`StopSignals`, owned by the Sandbox: they stay blocked until the
    /// run is journaled).
    let signals: Int32
    let cgroup: CgroupHandle?
    let started: Double
    private(set) var reaped = false
    /// The init's wait status and its rusage (the whole command tree it reaped), once reaped.
    private(set) var status: Int32 = 0
    private(set) var usage = rusage()

    init(pid: pid_t, pidfd: consuming Descriptor, channel: consuming Descriptor, stdout: consuming Descriptor, stderr: consuming Descriptor,
         signals: Int32, cgroup: CgroupHandle?, started: Double) {
        self.pid = pid
        self.pidfd = pidfd
        self.channel = channel
        self.stdout = stdout
        self.stderr = stderr
        self.signals = signals
        self.cgroup = cgroup
        self.started = started
    }

    deinit {
        if !reaped { kill() }
        reap()
        cgroup?.destroy()
    }

    /// SIGKILL to the init: PID 1 of the namespace dies, and with it every process of the sandbox.
    func kill() { if !reaped { Glibc.kill(pid, SIGKILL) } }

    /// Waits for the init (once).
    func reap() {
        if reaped { return }
        while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
        reaped = true
    }

    /// Sends one packet on the channel; false when the init is gone.
    func send(_ packet: [UInt8]) -> Bool {
        var n: Int
        repeat { n = packet.withUnsafeBytes { Glibc.send(channel.raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } } while n < 0 && errno == EINTR
        return n == packet.count
    }
}

/// Builds a sandbox: identity, cgroup, idmapped mounts, the clone, the parent side of the handshake.
/// Returns the running init as a `SandboxProcess`; every failure before that undoes what was done.
struct SandboxLauncher {
    let signals: StopSignals
    let id: String
    let policy: SandboxPolicy
    let argv: [String]
    let mode: Sandbox.Mode
    let captureOutput: Bool
    /// Loopback ports the init listens on for the supervisor's services.
    let ports: [UInt16]
    let warn: (SandboxWarning) -> Void
    let timing: Timing

    /// The identity plan: who the sandbox user is inside and outside.
    struct Identity {
        var uid: UInt32
        var gid: UInt32
        var uidMap: String
        var gidMap: String
        var denySetgroups: Bool
        var keepCaps: Bool
        var hostUID: UInt32
        var hostGID: UInt32
    }

    func identity() -> Identity {
        if geteuid() == 0 {
            var random: UInt32 = 0
            _ = withUnsafeMutableBytes(of: &random) { ab_getrandom($0.baseAddress!, 4) }
            let h = Sandbox.rootMappedIDs.lowerBound + random % UInt32(Sandbox.rootMappedIDs.count)
            return Identity(uid: 0, gid: 0, uidMap: "0 \(h) 1\n", gidMap: "0 \(h) 1\n", denySetgroups: false,
                            keepCaps: false, hostUID: h, hostGID: h)
        }
        let u = getuid(), g = getgid()
        return Identity(uid: u, gid: g, uidMap: "\(u) \(u) 1\n", gidMap: "\(g) \(g) 1\n", denySetgroups: true,
                        keepCaps: true, hostUID: u, hostGID: g)
    }

    /// For root: each writable bind becomes a detached mount idmapped so that the sandbox's host uid
    /// reads and writes as the directory's owner (files created there belong to that owner).
    func idmappedMounts(_ id: Identity, identities: [FileIdentity]) throws(AgentboxError) -> Descriptors {
        var trees = Descriptors()
        guard geteuid() == 0 else { return trees }
        var helpers: [String: Int32] = [:]
        defer { for fd in helpers.values { close(fd) } }
        for (i, m) in policy.mounts.enumerated() where m.kind == .bindRW {
            // One descriptor, opened without following symlinks, for the owner, the identity check and
            // the clone: the folder checked is the folder bound.
            let source = try Descriptor(SandboxLauncher.openNoSymlinks(m.source))
            var st = stat()
            guard fstat(source.raw, &st) == 0 else { throw AgentboxError(stage: "idmap \(m.source)", FileIO.errnoString()) }
            if i < identities.count, identities[i] != FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) {
                throw AgentboxError(stage: "idmap \(m.source)", "it changed while the sandbox was being built (renamed?)", hint: "try again")
            }
            let key = "\(st.st_uid):\(st.st_gid)"
            var userns = helpers[key] ?? -1
            if userns < 0 {
                userns = ab_make_userns_fd("\(st.st_uid) \(id.hostUID) 1", "\(st.st_gid) \(id.hostGID) 1")
                guard userns >= 0 else {
                    throw AgentboxError(stage: "idmap \(m.source)", "creating the mapping namespace failed: \(FileIO.errnoString())")
                }
                helpers[key] = userns
            }
            let tree = Descriptor(ab_open_tree(source.raw, "", AB_OPEN_TREE_CLONE | AB_OPEN_TREE_CLOEXEC | AB_AT_RECURSIVE | AB_AT_EMPTY_PATH))
            guard tree.isValid else {
                throw AgentboxError(stage: "idmap \(m.source)", "open_tree: \(FileIO.errnoString())",
                                    hint: "idmapped mounts need Linux 5.12+; `agentbox doctor` checks this host")
            }
            if ab_mount_setattr(tree.raw, "", AB_AT_EMPTY_PATH | AB_AT_RECURSIVE,
                                AB_MOUNT_ATTR_IDMAP | AB_MOUNT_ATTR_NOSUID | AB_MOUNT_ATTR_NODEV, 0, 0, userns) < 0 {
                throw AgentboxError(stage: "idmap \(m.source)", "mount_setattr(MOUNT_ATTR_IDMAP): \(FileIO.errnoString())",
                                    hint: "the filesystem of \(m.source) may not support idmapped mounts; run agentbox as the directory's owner instead of root")
            }
            trees.append(tree)
        }
        return trees
    }

    /// `path` opened (O_PATH) with no symlink anywhere on the way; plain O_PATH before Linux 5.6.
    static func openNoSymlinks(_ path: String) throws(AgentboxError) -> Int32 {
        var fd = ab_open_path_nofollow(AT_FDCWD, path)
        if fd < 0 && errno == ENOSYS { fd = open(path, AB_O_PATH | O_CLOEXEC) }
        guard fd >= 0 else {
            throw AgentboxError(stage: "policy", "\(path): \(errno == ELOOP ? "a symlink appeared on the way to it after the policy was resolved" : FileIO.errnoString())",
                                hint: errno == ELOOP ? "something renamed folders in the workspace while the sandbox was built; try again" : "")
        }
        return fd
    }

    /// The identity of each mount's host path (FileIdentity), for the init's checks.
    func mountIdentities(_ mounts: [MountEntry]) throws(AgentboxError) -> [FileIdentity] {
        var out: [FileIdentity] = []
        for m in mounts {
            guard m.kind != .symlink else { out.append(FileIdentity(device: 0, inode: 0)); continue }
            let fd = try Descriptor(SandboxLauncher.openNoSymlinks(m.kind == .bindRO || m.kind == .bindRW ? m.source : m.target))
            var st = stat()
            out.append(fstat(fd.raw, &st) == 0 ? FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) : FileIdentity(device: 0, inode: 0))
        }
        return out
    }

    /// What the cgroup cannot enforce here, replaced by rlimits where possible.
    func fallbackLimits(_ reason: AgentboxError) throws(AgentboxError) -> [(Int32, UInt64)] {
        let l = policy.limits
        var missing: [String] = []
        if l.memory != nil { missing.append("--memory") }
        if l.pids != nil { missing.append("--pids") }
        if l.cpus != nil { missing.append("--cpus") }
        if missing.isEmpty { return [] }
        if policy.strictLimits {
            throw AgentboxError(stage: "limits", "\(missing.joined(separator: ", ")) cannot be enforced: \(reason.message)",
                                hint: reason.hint.isEmpty ? "run as root or drop --strict-limits to accept rlimit fallbacks" : reason.hint)
        }
        var rlimits: [(Int32, UInt64)] = []
        var notes: [String] = []
        if let pids = l.pids {
            rlimits.append((6 /* RLIMIT_NPROC */, UInt64(pids)))
            notes.append("pids via RLIMIT_NPROC")
        }
        if let memory = l.memory {
            rlimits.append((9 /* RLIMIT_AS */, memory))
            notes.append("memory via RLIMIT_AS (per process, virtual memory)")
        }
        if l.cpus != nil { notes.append("cpus NOT enforced") }
        warn(SandboxWarning("limits degraded (no cgroup: \(reason.message)): \(notes.joined(separator: "; ")); use --strict-limits to fail instead"))
        return rlimits
    }

    /// Builds the sandbox and starts its init; returns once the init has its setup.
    func launch() throws(AgentboxError) -> SandboxProcess {
        let started = Clock.monotonic()
        let initPath = try Sandbox.locateInit()
        let ident = identity()

        var spec = SetupSpec()
        spec.hostname = policy.hostname
        spec.uid = ident.uid
        spec.gid = ident.gid
        spec.dropGroups = !ident.denySetgroups
        spec.mounts = policy.mounts
        // agentbox-init, bound read-only as `agentbox` (its client commands) where PATH finds it; not
        // when a bind of the profile covers that folder (the mount point would be the host's).
        let tool = AgentboxPaths.toolDirectory + "/agentbox"
        let withTool = !policy.mounts.contains { PolicyResolver.isInside(tool, $0.target) }
        if withTool { spec.mounts.append(MountEntry(.bindRO, source: initPath, target: tool, directory: false)) }
        spec.mountIdentities = try mountIdentities(spec.mounts)
        spec.listenPorts = ports
        spec.tmpSize = policy.limits.tmpSize
        spec.workdir = policy.workdir
        spec.argv = argv
        spec.agent = mode == .agent
        if let t = policy.limits.timeout { spec.shellTimeoutMax = UInt32(min(Double(UInt32.max), max(1, t.rounded(.up)))) }
        spec.landlockMode = policy.profile.landlock == .off ? 0 : (policy.profile.landlock == .required ? 2 : 1)
        spec.writablePaths = ["/tmp", "/dev/shm"] + policy.mounts.filter(\.writable).map(\.target)
        spec.timing = timing.enabled
        spec.seccompPrograms = [try SeccompCache.guardProgram()]
        if let path = policy.profile.seccomp {
            spec.seccompPrograms.append(try SeccompCache.program(for: path))
        }
        timing.mark("seccomp program")

        // Limits: a cgroup when this host and user allow one, otherwise rlimits (named on stderr).
        // Destroyed on every path: by the SandboxProcess once launched, by this guard before.
        var cgroup: CgroupHandle? = nil
        if policy.limits.memory != nil || policy.limits.pids != nil || policy.limits.cpus != nil {
            switch Cgroups.create(id: Cgroups.name(for: id), limits: policy.limits) {
            case let .success(handle): cgroup = handle
            case let .failure(reason): spec.rlimits = try fallbackLimits(reason)
            }
        }
        var launched = false
        defer { if !launched { cgroup?.destroy() } }
        // cgroup v1: the child moves itself (docs/architecture.md, "Spawn protocol"); if a file cannot
        // be opened, the parent attaches it as before.
        var joinFds = Descriptors()
        for file in cgroup?.selfJoinFiles ?? [] {
            let fd = open(file, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { joinFds.closeAll(); break }
            joinFds.append(Descriptor(fd))
        }
        let selfJoin = !joinFds.raw.isEmpty
        timing.mark("cgroup create")

        var mountTrees = try idmappedMounts(ident, identities: spec.mountIdentities)
        var treeIndex: Int32 = 0
        spec.mountFds = policy.mounts.map { m in
            guard m.kind == .bindRW, geteuid() == 0 else { return -1 }
            defer { treeIndex += 1 }
            return treeIndex
        }
        if withTool {
            // As root the sandbox's user may not search the folders above agentbox-init (a 0700
            // clone): the supervisor clones the bind. Rootless, the user is the binary's owner.
            if geteuid() == 0 {
                let tree = Descriptor(ab_open_tree(AT_FDCWD, initPath, AB_OPEN_TREE_CLONE | AB_OPEN_TREE_CLOEXEC))
                guard tree.isValid else { throw AgentboxError(stage: "bind agentbox into the sandbox", "open_tree \(initPath): \(FileIO.errnoString())") }
                mountTrees.append(tree)
                spec.mountFds.append(treeIndex)
            } else {
                spec.mountFds.append(-1)
            }
        }
        timing.mark("idmapped mounts")
        let specBytes = spec.encode()

        // Descriptors: ours are owned here until handed to the SandboxProcess; the child's ends are
        // owned until the clone has copied them.
        var out: [Int32] = [-1, -1], err: [Int32] = [-1, -1]
        if captureOutput {
            guard ab_pipe2_cloexec(&out) == 0 else { throw AgentboxError(stage: "spawn", "pipe: \(FileIO.errnoString())") }
            guard ab_pipe2_cloexec(&err) == 0 else {
                _ = Descriptors(out)
                throw AgentboxError(stage: "spawn", "pipe: \(FileIO.errnoString())")
            }
        }
        // Captured output crosses the supervisor: bigger pipes (1 MiB, the unprivileged maximum by
        // default; a smaller one is kept if refused) mean fewer wake-ups and reads for a chatty command.
        for fd in [out[1], err[1]] where fd >= 0 { _ = fcntl(fd, 1031 /* F_SETPIPE_SZ */, Int32(1 << 20)) }
        let stdoutRead = Descriptor(out[0]), stderrRead = Descriptor(err[0])
        var childEnds = Descriptors([out[1], err[1]])
        var sp: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sp) == 0 else {
            throw AgentboxError(stage: "control channel", "socketpair: \(FileIO.errnoString())")
        }
        let channel = Descriptor(sp[0]), childChannel = Descriptor(sp[1])
        var sync: [Int32] = [-1, -1]
        guard ab_pipe2_cloexec(&sync) == 0 else { throw AgentboxError(stage: "spawn", "pipe: \(FileIO.errnoString())") }
        let syncWrite = Descriptor(sync[1])
        var syncRead = Descriptor(sync[0])
        var devNull = Descriptor(-1)
        if mode == .agent {
            // `run --json` owns stdout: the init's goes to /dev/null (tools have their own pipes); its stderr
            // stays agentbox's, where a crash of the init would be seen.
            devNull = Descriptor(open("/dev/null", O_WRONLY | O_CLOEXEC))
            for fd in [channel.raw, childChannel.raw] {
                var size: Int32 = 1 << 20
                _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
        }

        // The init is executed through a descriptor opened here, by the supervisor: the sandbox user
        // needs no search permission on the folders above it (a clone under /root, a 0700 folder).
        let initFD = Descriptor(open(initPath, AB_O_PATH | O_CLOEXEC))
        guard initFD.isValid else {
            throw AgentboxError(stage: "spawn", "cannot open agentbox-init at \(initPath): \(FileIO.errnoString())",
                                hint: "reinstall with `make install`, or set AGENTBOX_INIT to its path")
        }

        // Spawn: C only from here until the child's execve.
        let cArgv: [UnsafeMutablePointer<CChar>?] = [strdup("agentbox-init"), nil]
        let cEnv: [UnsafeMutablePointer<CChar>?] = policy.env.map { strdup("\($0.0)=\($0.1)") } + [nil]
        defer { for p in cArgv + cEnv { free(p) } }
        let handover: [Int32] = [childChannel.raw] + mountTrees.raw
        let parentEnds: [Int32] = [syncWrite.raw, channel.raw, stdoutRead.raw, stderrRead.raw].filter { $0 >= 0 }
        var pidfd: Int32 = -1
        let flags = AB_CLONE_NEWUSER | AB_CLONE_NEWPID | AB_CLONE_NEWNS | AB_CLONE_NEWNET | AB_CLONE_NEWUTS | AB_CLONE_NEWIPC
        let stdoutFD = devNull.isValid ? devNull.raw : out[1]  // -1: agentbox's own
        let stderrFD = err[1]
        let pid: pid_t = initPath.withCString { path in
            cArgv.withUnsafeBufferPointer { argvBuf in
                cEnv.withUnsafeBufferPointer { envBuf in
                    handover.withUnsafeBufferPointer { fdsBuf in parentEnds.withUnsafeBufferPointer { parentBuf in joinFds.raw.withUnsafeBufferPointer { joinBuf in
                        var args = ab_spawn_args(clone_flags: Int32(flags), path: path, argv: argvBuf.baseAddress!,
                                                 envp: envBuf.baseAddress!, fds: fdsBuf.baseAddress, nfds: Int32(fdsBuf.count),
                                                 sync_fd: syncRead.raw, keep_caps: ident.keepCaps ? 1 : 0,
                                                 cgroup_fd: cgroup?.cloneFd ?? -1, uid: ident.uid, gid: ident.gid,
                                                 drop_groups: ident.denySetgroups ? 0 : 1, stdout_fd: stdoutFD,
                                                 stderr_fd: stderrFD, owner_uid: geteuid() == 0 ? ident.hostUID : uid_t.max,
                                                 exec_fd: initFD.raw, parent_fds: parentBuf.baseAddress,
                                                 nparent_fds: Int32(parentBuf.count), join_fds: joinBuf.baseAddress,
                                                 njoin_fds: Int32(joinBuf.count))
                        return ab_spawn(&args, &pidfd)
                    } } }
                }
            }
        }
        let spawnErrno = errno
        timing.mark("clone")
        // The child has its copies: the parent's are closed now.
        _ = consume childChannel
        childEnds.closeAll()
        syncRead = Descriptor(-1)
        mountTrees.closeAll()
        joinFds.closeAll()
        devNull = Descriptor(-1)
        guard pid > 0 else {
            throw AgentboxError(stage: "clone", "creating the namespaces failed: \(FileIO.errnoString(spawnErrno))",
                                hint: spawnErrno == EPERM || spawnErrno == ENOSPC || spawnErrno == EACCES
                                    ? "user namespaces may be disabled or restricted here (AppArmor, a container); run `agentbox doctor`" : "")
        }
        // From here the process owns the sandbox: any failure below kills and reaps it.
        launched = true
        let process = SandboxProcess(pid: pid, pidfd: Descriptor(pidfd), channel: channel, stdout: stdoutRead, stderr: stderrRead,
                                     signals: signals.fd, cgroup: cgroup, started: started)

        // Parent side of the handshake: maps, cgroup, then "go" and the setup.
        do throws(AgentboxError) {
            try FileIO.write("/proc/\(pid)/uid_map", ident.uidMap)
            if ident.denySetgroups { try FileIO.write("/proc/\(pid)/setgroups", "deny") }
            try FileIO.write("/proc/\(pid)/gid_map", ident.gidMap)
            try cgroup?.attach(pid: pid, joined: selfJoin)
        } catch {
            throw AgentboxError(stage: "spawn", error.description)
        }
        timing.mark("maps and cgroup join")
        var go: UInt8 = 1
        _ = write(syncWrite.raw, &go, 1)
        _ = consume syncWrite
        guard process.send(specBytes) else {
            throw AgentboxError(stage: "control channel", "sending the setup to agentbox-init failed: \(FileIO.errnoString())")
        }
        return process
    }
}

/// AGENTBOX_TIMING=1 prints where a sandbox's time goes (for `make bench` and profiling).
/// SIGINT, SIGTERM, SIGHUP and SIGQUIT blocked (with SIGPIPE: a closed stdout must not kill the
/// supervisor) and read from a signalfd, for as long as a Sandbox needs them: from before the clone
/// (the threads started meanwhile inherit the mask; the clone child resets it) until the run is
/// journaled and its output delivered. Then what is pending is consumed and the mask restored, so a
/// signal that came late never cuts the journal short.
public final class StopSignals {
    public let fd: Int32
    var oldMask = sigset_t()

    public init() {
        var sigs = sigset_t()
        sigemptyset(&sigs)
        for s in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] { sigaddset(&sigs, s) }
        var blocked = sigs
        sigaddset(&blocked, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &blocked, &oldMask)
        fd = ab_signalfd(&sigs)
    }

    deinit {
        if fd >= 0 {
            while ab_signalfd_read(fd) > 0 {}
            close(fd)
        }
        pthread_sigmask(SIG_SETMASK, &oldMask, nil)
    }
}

/// `AGENTBOX_TIMING`: where a sandbox's start-up time goes, one line per phase on stderr. A developer's
/// measurement, not a warning: it is neither shown as one nor journaled.
final class Timing {
    let enabled = getenv("AGENTBOX_TIMING") != nil
    var last = Clock.monotonic()

    func mark(_ phase: String) {
        guard enabled else { return }
        let now = Clock.monotonic()
        report(phase, micros: Int(((now - last) * 1_000_000).rounded()))
        last = now
    }

    /// A phase measured elsewhere (the init's own, within "init setup").
    func report(_ phase: String, micros: Int) {
        guard enabled else { return }
        let line = Array("agentbox: timing: \(phase) \(micros) us\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}
