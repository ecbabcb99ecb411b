import AgentboxCore
import CAgentboxShim
import Glibc

/// How a sandboxed command ended, from the supervisor's point of view.
public enum Termination: Equatable, Sendable {
    case exited(Int32)
    case signaled(Int32)
    /// Killed because --timeout expired.
    case timedOut
    /// The command could not be executed (127 not found, 126 not executable).
    case notExecuted(code: Int32, reason: String)
}

public struct SandboxResult: Sendable {
    public var termination: Termination
    public var report: CgroupReport
    /// True when the memory cgroup OOM-killed a process and the command died of SIGKILL.
    public var oomKilled: Bool
    public var landlockABI: Int32
    public var elapsed: Double

    /// The exit code of `agentbox exec` (docs/cli.md).
    public var exitCode: Int32 {
        switch termination {
        case let .exited(code): return code
        case let .signaled(sig): return 128 + sig
        case .timedOut: return 124
        case let .notExecuted(code, _): return code
        }
    }
}

/// Something the user must hear about while a sandbox runs: a weaker mode, a limit event.
public struct SandboxWarning: Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
}

/// One sandbox: resolve identity and limits, build it, run one command, tear it down.
/// The supervisor side never runs Swift between clone() and execve(): see ab_spawn.
public final class Sandbox {
    /// The unprivileged host uids/gids that uid 0 of a sandbox maps to when agentbox runs as root: one
    /// picked at random per sandbox (it also owns the sandbox's user namespace), so that what the host
    /// counts per user (epoll watches, pipe buffers, inotify instances, pending signals) is counted per
    /// sandbox, not for all root-run sandboxes together, nor for root.
    public static let rootMappedIDs: Range<UInt32> = 2_147_400_000 ..< 2_147_400_000 + 65_536

    /// Seconds between a forwarded SIGTERM/SIGINT and SIGKILL of the whole sandbox.
    public static let gracePeriod = 10.0

    public let id: String
    public let policy: SandboxPolicy
    public let argv: [String]
    var warn: (SandboxWarning) -> Void

    public enum OutputStream: String, Sendable { case stdout, stderr }
    /// When set, the command's stdout/stderr are pipes: every chunk is passed through to agentbox's own
    /// stdout/stderr and given to this closure (the journal). An error stops the sandbox and is rethrown.
    public var output: ((OutputStream, [UInt8]) throws(AgentboxError) -> Void)? = nil
    /// Called after every wake-up of the supervision loop, and at least every 200 ms (group commit of
    /// batched records; the callee decides what is due).
    public var tick: (() throws(AgentboxError) -> Void)? = nil
    /// Called when the sandbox is built and confined: the Landlock ABI in force (0: none) and the cgroup.
    public var onReady: ((Int32, String?) -> Void)? = nil

    /// Agent mode (`agentbox run`, docs/agent.md): the init runs the agent loop; each message it sends
    /// is given here (on the supervision thread). An error stops the sandbox and is rethrown.
    public var agentMessage: ((JSON) throws(AgentboxError) -> Void)? = nil
    /// Agent mode: a descriptor to poll besides the channel (the model gateway's completions) and what
    /// to do when it is readable.
    public var wakeFD: Int32 = -1
    public var onWake: (() throws(AgentboxError) -> Void)? = nil
    /// Agent mode: the first SIGTERM/SIGINT/SIGHUP/SIGQUIT. The run ends itself; after the grace period
    /// the sandbox is killed.
    public var onStopSignal: ((Int32) -> Void)? = nil
    /// Seconds between the first stop signal and SIGKILL of the sandbox.
    public var grace = Sandbox.gracePeriod
    var channelFD: Int32 = -1
    var cgroupHandle: CgroupHandle? = nil

    /// The sandbox's cgroup counters now (OOM kills, pids-limit hits), nil without a cgroup.
    public func cgroupReport() -> CgroupReport? { cgroupHandle?.report() }

    /// Agent mode: sends a message to the loop in the sandbox. False when the channel is gone.
    @discardableResult
    public func sendAgent(_ message: JSON) -> Bool { sendAgent(encoded: message.serializedBytes) }

    /// Agent mode: sends a message already encoded (`JSON.serializedBytes`).
    @discardableResult
    public func sendAgent(encoded: [UInt8]) -> Bool {
        for p in AgentWire.packets(encoded: encoded) {
            var n: Int
            repeat { n = p.withUnsafeBytes { send(channelFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } } while n < 0 && errno == EINTR
            if n != p.count { return false }
        }
        return true
    }

    public init(id: String = RunID.make(), policy: SandboxPolicy, argv: [String], warn: @escaping (SandboxWarning) -> Void) {
        self.id = id
        self.policy = policy
        self.argv = argv
        self.warn = warn
    }

    /// Finds agentbox-init: $AGENTBOX_INIT, next to this executable, or in ../libexec/agentbox/.
    public static func locateInit() throws(AgentboxError) -> String {
        if let path = AgentboxPaths.file("AGENTBOX_INIT") { return path }
        guard let exe = ProfileStore.executablePath() else { throw AgentboxError(stage: "locate agentbox-init", "cannot read /proc/self/exe") }
        let dir = String(exe[..<exe.lastIndex(of: "/")!])
        for candidate in [dir + "/agentbox-init", dir + "/../libexec/agentbox/agentbox-init"] where access(candidate, X_OK) == 0 {
            return RealHostPaths().canonical(candidate) ?? candidate
        }
        throw AgentboxError(stage: "locate agentbox-init", "agentbox-init is not next to \(exe) nor in ../libexec/agentbox/",
                            hint: "reinstall with `make install`, or set AGENTBOX_INIT to its path")
    }

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
    func idmappedMounts(_ id: Identity, identities: [FileIdentity]) throws(AgentboxError) -> [Int32] {
        guard geteuid() == 0 else { return [] }
        var fds: [Int32] = []
        var helpers: [String: Int32] = [:]
        defer { for fd in helpers.values { close(fd) } }
        func fail(_ error: AgentboxError) -> AgentboxError {
            for fd in fds { close(fd) }
            return error
        }
        for (i, m) in policy.mounts.enumerated() where m.kind == .bindRW {
            // One descriptor, opened without following symlinks, for the owner, the identity check and
            // the clone: the folder checked is the folder bound.
            let source: Int32
            do { source = try Sandbox.openNoSymlinks(m.source) } catch { throw fail(error) }
            defer { close(source) }
            var st = stat()
            guard fstat(source, &st) == 0 else { throw fail(AgentboxError(stage: "idmap \(m.source)", FileIO.errnoString())) }
            if i < identities.count, identities[i] != FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) {
                throw fail(AgentboxError(stage: "idmap \(m.source)", "it changed while the sandbox was being built (renamed?)", hint: "try again"))
            }
            let key = "\(st.st_uid):\(st.st_gid)"
            var userns = helpers[key] ?? -1
            if userns < 0 {
                userns = ab_make_userns_fd("\(st.st_uid) \(id.hostUID) 1", "\(st.st_gid) \(id.hostGID) 1")
                guard userns >= 0 else {
                    throw fail(AgentboxError(stage: "idmap \(m.source)", "creating the mapping namespace failed: \(FileIO.errnoString())"))
                }
                helpers[key] = userns
            }
            let tree = ab_open_tree(source, "", AB_OPEN_TREE_CLONE | AB_OPEN_TREE_CLOEXEC | AB_AT_RECURSIVE | AB_AT_EMPTY_PATH)
            guard tree >= 0 else {
                throw fail(AgentboxError(stage: "idmap \(m.source)", "open_tree: \(FileIO.errnoString())",
                                         hint: "idmapped mounts need Linux 5.12+; `agentbox doctor` checks this host"))
            }
            if ab_mount_setattr(tree, "", AB_AT_EMPTY_PATH | AB_AT_RECURSIVE,
                                AB_MOUNT_ATTR_IDMAP | AB_MOUNT_ATTR_NOSUID | AB_MOUNT_ATTR_NODEV, 0, 0, userns) < 0 {
                let err = errno
                close(tree)
                throw fail(AgentboxError(stage: "idmap \(m.source)", "mount_setattr(MOUNT_ATTR_IDMAP): \(FileIO.errnoString(err))",
                                         hint: "the filesystem of \(m.source) may not support idmapped mounts; run agentbox as the directory's owner instead of root"))
            }
            fds.append(tree)
        }
        return fds
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
    func mountIdentities() throws(AgentboxError) -> [FileIdentity] {
        var out: [FileIdentity] = []
        for m in policy.mounts {
            guard m.kind != .symlink else { out.append(FileIdentity(device: 0, inode: 0)); continue }
            let fd = try Sandbox.openNoSymlinks(m.kind == .bindRO || m.kind == .bindRW ? m.source : m.target)
            var st = stat()
            let ok = fstat(fd, &st) == 0
            close(fd)
            out.append(ok ? FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) : FileIdentity(device: 0, inode: 0))
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

    /// Builds the sandbox, runs the command, and returns how it ended. Errors are agentbox's own (125).
    public func run() throws(AgentboxError) -> SandboxResult {
        let started = Sandbox.now()
        // AGENTBOX_TIMING=1 prints where the time goes (for `make bench` and profiling).
        let timing = getenv("AGENTBOX_TIMING") != nil
        var last = started
        func mark(_ phase: String) {
            guard timing else { return }
            let now = Sandbox.now()
            warn(SandboxWarning("timing: \(phase) \(Int(((now - last) * 1_000_000).rounded())) us"))
            last = now
        }
        defer { mark("teardown") }
        let initPath = try Sandbox.locateInit()
        let ident = identity()

        var spec = SetupSpec()
        spec.hostname = policy.hostname
        spec.uid = ident.uid
        spec.gid = ident.gid
        spec.dropGroups = !ident.denySetgroups
        spec.mounts = policy.mounts
        spec.mountIdentities = try mountIdentities()
        spec.tmpSize = policy.limits.tmpSize
        spec.workdir = policy.workdir
        spec.argv = argv
        spec.agent = agentMessage != nil
        if let t = policy.limits.timeout { spec.shellTimeoutMax = UInt32(min(Double(UInt32.max), max(1, t.rounded(.up)))) }
        spec.landlockMode = policy.profile.landlock == .off ? 0 : (policy.profile.landlock == .required ? 2 : 1)
        spec.writablePaths = ["/tmp", "/dev/shm"] + policy.mounts.filter(\.writable).map(\.target)
        spec.seccompPrograms = [try SeccompCache.guardProgram()]
        if let path = policy.profile.seccomp {
            spec.seccompPrograms.append(try SeccompCache.program(for: path))
        }

        mark("seccomp program")
        // Limits: a cgroup when this host and user allow one, otherwise rlimits (named on stderr).
        var cgroup: CgroupHandle? = nil
        let needsCgroup = policy.limits.memory != nil || policy.limits.pids != nil || policy.limits.cpus != nil
        if needsCgroup {
            switch Cgroups.create(id: Cgroups.name(for: id), limits: policy.limits) {
            case let .success(handle): cgroup = handle
            case let .failure(reason): spec.rlimits = try fallbackLimits(reason)
            }
        }
        mark("cgroup create")
        cgroupHandle = cgroup
        defer { cgroup?.destroy(); cgroupHandle = nil }

        let mountFds = try idmappedMounts(ident, identities: spec.mountIdentities)
        var fdIndex: Int32 = 0
        spec.mountFds = policy.mounts.map { m in
            guard m.kind == .bindRW, geteuid() == 0 else { return -1 }
            defer { fdIndex += 1 }
            return fdIndex
        }

        mark("idmapped mounts")
        let specBytes = spec.encode()
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        if output != nil {
            guard ab_pipe2_cloexec(&outPipe) == 0, ab_pipe2_cloexec(&errPipe) == 0 else {
                throw AgentboxError(stage: "spawn", "pipe: \(FileIO.errnoString())")
            }
        }
        defer { for fd in [outPipe[0], errPipe[0]] where fd >= 0 { close(fd) } }
        var sp: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sp) == 0 else {
            throw AgentboxError(stage: "control channel", "socketpair: \(FileIO.errnoString())")
        }
        var sync: [Int32] = [-1, -1]
        guard ab_pipe2_cloexec(&sync) == 0 else { throw AgentboxError(stage: "spawn", "pipe: \(FileIO.errnoString())") }
        let channel = sp[0]
        channelFD = channel
        defer { close(channel); channelFD = -1 }
        var devNull: Int32 = -1
        if agentMessage != nil {
            // `run --json` owns stdout: the init's goes to /dev/null (tools have their own pipes); its stderr
            // stays agentbox's, where a crash of the init would be seen.
            devNull = open("/dev/null", O_WRONLY | O_CLOEXEC)
            for fd in [channel, sp[1]] {
                var size: Int32 = 1 << 20
                _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        defer { if devNull >= 0 { close(devNull) } }

        // Block the signals we handle through a signalfd (the child's mask is reset by init).
        var sigs = sigset_t()
        sigemptyset(&sigs)
        for s in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] { sigaddset(&sigs, s) }
        var oldMask = sigset_t()
        var blocked = sigs
        sigaddset(&blocked, SIGPIPE)  // a closed stdout must not kill the supervisor (init resets the mask)
        pthread_sigmask(SIG_BLOCK, &blocked, &oldMask)
        let sigfd = ab_signalfd(&sigs)
        defer {
            close(sigfd)
            pthread_sigmask(SIG_SETMASK, &oldMask, nil)
        }

        // Spawn: C only from here until the child's execve.
        let cArgv: [UnsafeMutablePointer<CChar>?] = [strdup("agentbox-init"), nil]
        let cEnv: [UnsafeMutablePointer<CChar>?] = policy.env.map { strdup("\($0.0)=\($0.1)") } + [nil]
        defer { for p in cArgv + cEnv { free(p) } }
        // The init is executed through a descriptor opened here, by the supervisor: the sandbox user
        // needs no search permission on the folders above it (a clone under /root, a 0700 folder).
        let initFD = open(initPath, AB_O_PATH | O_CLOEXEC)
        guard initFD >= 0 else {
            throw AgentboxError(stage: "spawn", "cannot open agentbox-init at \(initPath): \(FileIO.errnoString())",
                                hint: "reinstall with `make install`, or set AGENTBOX_INIT to its path")
        }
        defer { close(initFD) }
        let handover: [Int32] = [sp[1]] + mountFds
        var pidfd: Int32 = -1
        let flags = AB_CLONE_NEWUSER | AB_CLONE_NEWPID | AB_CLONE_NEWNS | AB_CLONE_NEWNET | AB_CLONE_NEWUTS | AB_CLONE_NEWIPC
        let pid: pid_t = initPath.withCString { path in
            cArgv.withUnsafeBufferPointer { argvBuf in
                cEnv.withUnsafeBufferPointer { envBuf in
                    handover.withUnsafeBufferPointer { fdsBuf in
                        var args = ab_spawn_args(clone_flags: Int32(flags), path: path, argv: argvBuf.baseAddress!,
                                                 envp: envBuf.baseAddress!, fds: fdsBuf.baseAddress, nfds: Int32(fdsBuf.count),
                                                 sync_fd: sync[0], keep_caps: ident.keepCaps ? 1 : 0,
                                                 cgroup_fd: cgroup?.cloneFd ?? -1, uid: ident.uid, gid: ident.gid,
                                                 drop_groups: ident.denySetgroups ? 0 : 1, stdout_fd: devNull >= 0 ? devNull : outPipe[1],
                                                 stderr_fd: errPipe[1], owner_uid: geteuid() == 0 ? ident.hostUID : uid_t.max,
                                                 exec_fd: initFD)
                        return ab_spawn(&args, &pidfd)
                    }
                }
            }
        }
        let spawnErrno = errno
        mark("clone")
        close(sp[1])
        for fd in [outPipe[1], errPipe[1]] where fd >= 0 { close(fd) }
        close(sync[0])
        for fd in mountFds { close(fd) }
        guard pid > 0 else {
            close(sync[1])
            throw AgentboxError(stage: "clone", "creating the namespaces failed: \(FileIO.errnoString(spawnErrno))",
                                hint: spawnErrno == EPERM || spawnErrno == ENOSPC || spawnErrno == EACCES
                                    ? "user namespaces may be disabled or restricted here (AppArmor, a container); run `agentbox doctor`" : "")
        }
        var reaped = false
        var initStatus: Int32 = 0
        var usage = rusage()
        func reap() {
            if reaped { return }
            // wait4's rusage covers the init and every descendant it reaped (the whole command tree).
            while wait4(pid, &initStatus, 0, &usage) < 0 && errno == EINTR {}
            reaped = true
        }
        func abort(_ error: AgentboxError) -> AgentboxError {
            kill(pid, SIGKILL)
            close(sync[1])
            reap()
            if pidfd >= 0 { close(pidfd) }
            return error
        }

        // Parent side of the handshake: maps, cgroup, then "go".
        do throws(AgentboxError) {
            try FileIO.write("/proc/\(pid)/uid_map", ident.uidMap)
            if ident.denySetgroups { try FileIO.write("/proc/\(pid)/setgroups", "deny") }
            try FileIO.write("/proc/\(pid)/gid_map", ident.gidMap)
            try cgroup?.attach(pid: pid)
        } catch {
            throw abort(AgentboxError(stage: "spawn", error.description))
        }
        mark("maps and cgroup join")
        var go: UInt8 = 1
        _ = write(sync[1], &go, 1)
        close(sync[1])
        let sent = specBytes.withUnsafeBytes { send(channel, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent != specBytes.count {
            throw abort(AgentboxError(stage: "control channel", "sending the setup to agentbox-init failed: \(FileIO.errnoString())"))
        }

        // Supervise: messages from init, the init's exit, our signals, the deadline.
        var setupFailure: AgentboxError? = nil
        var commandStatus: Int32? = nil
        var notExecuted: Termination? = nil
        var landlockABI: Int32 = 0
        var commandStarted = false
        var timedOut = false
        var killedBySignal: Int32? = nil
        let deadline = policy.limits.timeout.map { started + $0 }
        var graceDeadline: Double? = nil
        var buffer = [UInt8](repeating: 0, count: AgentWire.packetPayload + 64)
        var assembler = AgentWire.Assembler()
        var captureFailure: AgentboxError? = nil

        /// The init is inside the sandbox: anything it sends that is not a well-formed message for this
        /// mode ends the sandbox as a protocol error (recorded by the caller), never silently.
        func protocolError(_ what: String) {
            guard captureFailure == nil else { return }
            captureFailure = AgentboxError(stage: "sandbox protocol", "agentbox-init sent \(what)",
                                           hint: "agentbox-init and agentbox must come from the same build; otherwise the sandbox is misbehaving")
            kill(pid, SIGKILL)
        }
        func handle(_ bytes: [UInt8]) {
            if let tag = bytes.first, tag == WireTag.agentMore.rawValue || tag == WireTag.agentLast.rawValue {
                guard let agentMessage else { return protocolError("an agent message to a sandbox that runs a command") }
                guard captureFailure == nil else { return }
                do throws(AgentboxError) {
                    let message: JSON?
                    do { message = try assembler.add(bytes[...]) } catch {
                        throw AgentboxError(stage: "agent protocol", "bad message from the sandbox: \(error.description)")
                    }
                    if let message { try agentMessage(message) }
                } catch {
                    captureFailure = error
                    kill(pid, SIGKILL)
                }
                return
            }
            let message: InitMessage
            do { message = try InitMessage.decode(bytes) } catch {
                return protocolError("a malformed message (\(bytes.count) bytes: \(error.description))")
            }
            switch message {
            case let .ready(abi):
                mark("init setup")
                landlockABI = abi
                if agentMessage != nil { commandStarted = true }
                onReady?(abi, cgroup?.description)
                if abi == 0 && policy.profile.landlock == .bestEffort {
                    warn(SandboxWarning("Landlock is unavailable on this kernel: running without it (the profile allows best-effort)"))
                }
            case let .failed(stage, err, detail):
                var msg = err != 0 ? FileIO.errnoString(err) : ""
                if !detail.isEmpty { msg += (msg.isEmpty ? "" : ": ") + detail }
                setupFailure = AgentboxError(stage: "sandbox setup: \(stage)", msg, hint: "run `agentbox doctor` to see what this host supports")
            case .started:
                commandStarted = true
                mark("command exec")
            case let .execFailed(err, path):
                notExecuted = err == ENOENT
                    ? .notExecuted(code: 127, reason: "\(path): command not found in the sandbox")
                    : .notExecuted(code: 126, reason: "\(path): cannot execute: \(FileIO.errnoString(err))")
            case let .exited(status):
                mark("command run")
                commandStatus = status
            }
        }
        func drain() {
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(channel, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n <= 0 { return }
                handle(Array(buffer[0..<n]))
            }
        }

        // The capture buffer exists only when output is captured (a 1 MiB zero-fill and its page faults
        // were a measurable part of every plain `exec`); never zero-filled, read() fills it.
        var chunk: [UInt8] = output == nil ? [] : [UInt8](unsafeUninitializedCapacity: 1 << 20) { _, n in n = 1 << 20 }
        for fd in [outPipe[0], errPipe[0]] where fd >= 0 {
            _ = fcntl(fd, 1031 /* F_SETPIPE_SZ */, 1 << 20)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        /// Reads what is available on a capture pipe; false at EOF.
        func pump(_ fd: Int32, _ stream: OutputStream) -> Bool {
            // Read what is there (the fds are non-blocking), up to the buffer's size.
            var n = 0
            var eof = false
            while n < chunk.count {
                let r = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress! + n, $0.count - n) }
                if r > 0 { n += r; continue }
                if r == 0 { eof = true }
                if r < 0 && errno == EINTR { continue }
                break
            }
            if n == 0 { return !eof }
            let bytes = Array(chunk[0..<n])
            Sandbox.writeAll(stream == .stdout ? 1 : 2, bytes)
            if captureFailure == nil {
                do throws(AgentboxError) { try output?(stream, bytes) } catch {
                    captureFailure = error
                    kill(pid, SIGKILL)
                }
            }
            return true
        }

        var fds = [pollfd(fd: channel, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: sigfd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0),
                   pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        loop: while true {
            var timeoutMs: Int32 = -1
            let nextDeadline = [deadline, graceDeadline].compactMap { $0 }.min()
            if let d = nextDeadline { timeoutMs = Int32(max(0, min(Double(Int32.max), (d - Sandbox.now()) * 1000)).rounded(.up)) }
            if tick != nil { timeoutMs = timeoutMs < 0 ? 200 : min(timeoutMs, 200) }
            let rc = poll(&fds, 6, timeoutMs)
            for (i, stream) in [(3, OutputStream.stdout), (4, OutputStream.stderr)] where fds[i].fd >= 0 && fds[i].revents != 0 {
                if !pump(fds[i].fd, stream) { fds[i].fd = -1 }
            }
            if captureFailure == nil, let tick {
                do throws(AgentboxError) { try tick() } catch {
                    captureFailure = error
                    kill(pid, SIGKILL)
                }
            }
            if rc < 0 && errno != EINTR { break }
            let now = Sandbox.now()
            if let d = deadline, now >= d, !timedOut {
                timedOut = true
                kill(pid, SIGKILL)  // PID 1 dies, and with it every process of the namespace
            }
            if let g = graceDeadline, now >= g { kill(pid, SIGKILL); graceDeadline = nil }
            if fds[1].revents & Int16(POLLIN) != 0 {
                while case let sig = ab_signalfd_read(sigfd), sig > 0 {
                    if killedBySignal == nil, let onStopSignal {
                        killedBySignal = sig
                        onStopSignal(sig)
                        graceDeadline = now + grace
                    } else if killedBySignal == nil {
                        killedBySignal = sig
                        var w = WireWriter(.signal)
                        w.i32(sig)
                        _ = w.bytes.withUnsafeBytes { send(channel, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                        graceDeadline = now + grace
                    } else {
                        kill(pid, SIGKILL)  // a second signal: stop waiting
                    }
                }
            }
            if fds[0].revents & Int16(POLLIN) != 0 { drain() }
            if fds[5].revents != 0, captureFailure == nil, let onWake {
                do throws(AgentboxError) { try onWake() } catch {
                    captureFailure = error
                    kill(pid, SIGKILL)
                }
            }
            let initGone = (pidfd >= 0 && fds[2].revents != 0) || (fds[0].revents & Int16(POLLHUP) != 0)
            if initGone { break loop }
        }
        drain()
        reap()
        // Every writer of the capture pipes is dead now: read them to EOF.
        for (i, stream) in [(3, OutputStream.stdout), (4, OutputStream.stderr)] where fds[i].fd >= 0 {
            _ = fcntl(fds[i].fd, F_SETFL, fcntl(fds[i].fd, F_GETFL) & ~O_NONBLOCK)
            while pump(fds[i].fd, stream) {}
        }
        mark("init exit")
        if let failure = captureFailure { throw failure }
        if pidfd >= 0 { close(pidfd) }

        var report = cgroup?.report() ?? CgroupReport()
        if report.cpuSeconds == nil {
            report.cpuSeconds = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
                + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        }
        if report.peakMemory == nil { report.peakMemory = UInt64(max(0, usage.ru_maxrss)) * 1024 }  // largest process
        if report.pidsLimitHits > 0, let pids = policy.limits.pids {
            warn(SandboxWarning("the pids limit (\(pids)) was hit \(report.pidsLimitHits) time(s): fork/clone failed inside the sandbox"))
        }
        if let failure = setupFailure { throw failure }
        let termination: Termination
        if timedOut {
            termination = .timedOut
        } else if let n = notExecuted {
            termination = n
        } else if let status = commandStatus {
            termination = (status & 0x7f) == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
        } else if let sig = killedBySignal {
            termination = .signaled(sig)
        } else if !commandStarted {
            // The init ended without starting the command and without saying why.
            let how = (initStatus & 0x7f) == 0 ? "exited with status \((initStatus >> 8) & 0xff)" : "was killed by signal \(initStatus & 0x7f)"
            throw AgentboxError(stage: "sandbox setup", "agentbox-init \(how) before starting the command",
                                hint: report.oomKills > 0 ? "the memory limit is too low for the sandbox to start" : "run `agentbox doctor` to see what this host supports")
        } else {
            // The command started but its end was not reported: the init died with it.
            termination = .signaled((initStatus & 0x7f) == 0 ? SIGKILL : initStatus & 0x7f)
        }
        let oom = report.oomKills > 0 && termination == .signaled(SIGKILL)
        return SandboxResult(termination: termination, report: report, oomKilled: oom, landlockABI: landlockABI,
                             elapsed: Sandbox.now() - started)
    }

    /// Writes all of `bytes` to `fd`, giving up silently when the reader is gone (EPIPE).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            off += n
        }
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
