import AgentboxCore
import CAgentboxShim
import Glibc

/// Who may write a run's journal when AGENTBOX_HOME is shared between nodes (docs/lifecycle.md,
/// "Owners, leases and fencing").
///
/// Each writer epoch is a claim file, `runs/<id>/epochs/<N>`, created with O_EXCL: of two supervisors
/// that want epoch N exactly one gets it. The claim records the node, the pid and an expiry that a
/// thread of the owner renews every third of the lease. The owner is the highest claim. On its own
/// node an owner is known by the run's lock (flock: released when the process dies); on another node
/// only by the expiry. A writer checks before each write that no higher claim exists and stops once
/// one does (`superseded`); the journal's readers ignore what an older epoch wrote after the takeover
/// point (docs/journal.md, "Fencing").
public final class Lease: @unchecked Sendable {
    public struct Claim: Sendable {
        public var epoch: Int
        public var node: String
        public var pid: Int32
        /// The process's start time (clock ticks after boot, /proc/PID/stat): a pid used again by another
        /// process is not the owner.
        public var start: UInt64
        /// Wall-clock seconds; the claim is released (0) when its writer ended normally.
        public var expires: Double
        public var released: Bool { expires == 0 }

        var json: JSON {
            .object([("epoch", .number(Double(epoch))), ("node", .string(node)), ("pid", .number(Double(pid))),
                     ("start", .number(Double(start))),
                     ("expires", .number(expires)), ("expires_at", .string(expires == 0 ? "released" : Clock.rfc3339(expires)))])
        }

        init(epoch: Int, node: String, pid: Int32, start: UInt64, expires: Double) {
            self.epoch = epoch
            self.node = node
            self.pid = pid
            self.start = start
            self.expires = expires
        }

        init?(_ bytes: [UInt8]) {
            guard let j = try? JSON.parse(bytes: bytes), let e = j["epoch"]?.intValue, let n = j["node"]?.stringValue,
                  let p = j["pid"]?.intValue, let x = j["expires"]?.numberValue else { return nil }
            self.init(epoch: e, node: n, pid: Int32(truncatingIfNeeded: p), start: UInt64(j["start"]?.intValue ?? 0), expires: x)
        }

        /// Whether the claim's writer may still be writing. On this node: its process is alive (a claim
        /// of a supervisor killed with -9 is not, at once); on another: it renewed the lease recently
        /// enough. A released claim never is.
        public func isLive(now: Double = Clock.wall()) -> Bool {
            if released { return false }
            if node == Lease.node() { return pid > 0 && Lease.startTime(pid) == start }
            return now < expires
        }

        public var description: String {
            "node \(node), pid \(pid)" + (released ? "" : ", lease until \(Clock.rfc3339(expires))")
        }
    }

    /// This node's name in claims: `AGENTBOX_NODE`, else the host name and the boot id (a rebooted node
    /// is another node: the pids of its claims mean nothing any more).
    public static func node() -> String { thisNode }
    static let thisNode: String = {
        if let n = getenv("AGENTBOX_NODE").map({ String(cString: $0) }), !n.isEmpty { return n }
        var uts = utsname()
        uname(&uts)
        let host = withUnsafeBytes(of: &uts.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let boot = FileIO.readSmall("/proc/sys/kernel/random/boot_id")?.trimmingSpaces() ?? ""
        return host + (boot.isEmpty ? "" : "/" + boot.prefix(8))
    }()

    /// A process's start time (field 22 of /proc/PID/stat), nil when there is no such process, or
    /// only its zombie (dead, not yet reaped: it writes nothing more).
    public static func startTime(_ pid: Int32) -> UInt64? {
        guard let stat = FileIO.readSmall("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, fields[0] != "Z", fields[0] != "X" else { return nil }  // field 3 is the state
        return UInt64(fields[19])  // field 22 is the 20th after the command
    }
    static let ownStart = startTime(getpid()) ?? 0

    /// `AGENTBOX_LEASE_S` (default 30 s): how long a claim holds without being renewed.
    public static func seconds() throws(AgentboxError) -> Double {
        guard let text = getenv("AGENTBOX_LEASE_S").map({ String(cString: $0) }), !text.isEmpty else { return 30 }
        guard let s = Double(text), s >= 1, s <= 86_400 else {
            throw AgentboxError(stage: "lease", "AGENTBOX_LEASE_S=\(text): must be a number of seconds from 1 to 86400", exitCode: 125)
        }
        return s
    }

    static func directory(_ runDir: String) -> String { runDir + "/epochs" }

    /// The highest claim of a run (its owner, or its last one), or nil for a run recorded before claims.
    public static func current(_ runDir: String) -> Claim? {
        let dir = directory(runDir)
        guard let d = opendir(dir) else { return nil }
        var highest = 0
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let n = Int(name), n > highest { highest = n }
        }
        closedir(d)
        guard highest > 0 else { return nil }
        // An unreadable claim (damaged) holds for a lease from its last change.
        if let claim = (try? FileIO.read(dir + "/\(highest)", limit: 4096)).flatMap({ Claim($0) }) { return claim }
        var st = stat()
        let changed = stat(dir + "/\(highest)", &st) == 0 ? Double(st.st_mtim.tv_sec) : Clock.wall()
        return Claim(epoch: highest, node: "?", pid: 0, start: 0, expires: changed + ((try? seconds()) ?? 30))
    }

    public let runDir: String
    public let epoch: Int
    public let node: String
    public let seconds: Double
    let path: String
    /// A pipe: closing its write end wakes the renewal thread to end.
    var wake: (read: Int32, write: Int32) = (-1, -1)
    var thread: pthread_t? = nil
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    var stopped = false

    init(runDir: String, epoch: Int, node: String, seconds: Double) {
        self.runDir = runDir
        self.epoch = epoch
        self.node = node
        self.seconds = seconds
        path = Lease.directory(runDir) + "/\(epoch)"
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Claims `epoch` for this process (which must be higher than every claim and journal epoch so far);
    /// fails when another supervisor claimed it first. Starts the renewal thread.
    static func claim(runDir: String, epoch: Int) throws(AgentboxError) -> Lease {
        let lease = Lease(runDir: runDir, epoch: epoch, node: node(), seconds: try seconds())
        let dir = directory(runDir)
        if mkdir(dir, 0o700) < 0 && errno != EEXIST {
            throw AgentboxError(stage: "lease", "cannot create \(dir): \(FileIO.errnoString())")
        }
        // Written beside it, then linked to its name: link fails if the name exists (atomic on NFS too),
        // and a claim is never seen empty.
        let tmp = lease.write(expires: Clock.wall() + lease.seconds, rename: false)
        guard let tmp else { throw AgentboxError(stage: "lease", "cannot write a claim in \(dir): \(FileIO.errnoString())") }
        defer { unlink(tmp) }
        if link(tmp, lease.path) < 0 {
            if errno == EEXIST {
                let other = current(runDir)
                throw AgentboxError(stage: "lease", "another supervisor took the run first (epoch \(epoch)\(other.map { ": \($0.description)" } ?? ""))",
                                    hint: "a run has one writer; `agentbox ps` shows it")
            }
            throw AgentboxError(stage: "lease", "cannot create \(lease.path): \(FileIO.errnoString())")
        }
        lease.startRenewing()
        return lease
    }

    /// Whether a newer epoch has been claimed: this writer must not add to the run any more.
    /// Also when this claim is gone (the run's folder removed or moved away: `rm` of a run whose owner
    /// had been taken over): a writer without a claim must not go on either.
    public var superseded: Bool { FileIO.exists(Lease.directory(runDir) + "/\(epoch + 1)") || !FileIO.exists(path) }

    /// Rewrites the claim with a new expiry (or released): written beside it and renamed over it, so a
    /// reader sees the old claim or the new one.
    @discardableResult
    func write(expires: Double, rename replace: Bool = true) -> String? {
        let tmp = Lease.directory(runDir) + "/.\(epoch).\(getpid()).\(RunStore.newID())"
        let bytes = Claim(epoch: epoch, node: node, pid: getpid(), start: Lease.ownStart, expires: expires).json.serializedBytes
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard n == bytes.count else { unlink(tmp); return nil }
        if replace && rename(tmp, path) < 0 { unlink(tmp); return nil }
        return tmp
    }

    func startRenewing() {
        var fds: [Int32] = [-1, -1]
        guard ab_pipe2_cloexec(&fds) == 0 else { return }
        wake = (fds[0], fds[1])
        let interval = Int32(min(seconds / 3, 3600) * 1000)
        thread = HelperThread.start { [self] in
            while true {
                var p = pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, interval) != 0 && p.revents != 0 { return }
                pthread_mutex_lock(mutex)
                // A superseded claim is not renewed: it would say nothing (the newer one owns the run),
                // and an owner that was paused must not look alive.
                if !stopped && !superseded { write(expires: Clock.wall() + seconds) }
                pthread_mutex_unlock(mutex)
            }
        }
    }

    /// Stops renewing; `release` marks the claim ended so other nodes need not wait for its expiry.
    public func stop(release: Bool) {
        pthread_mutex_lock(mutex)
        let first = !stopped
        stopped = true
        if first && release && !superseded { write(expires: 0) }
        pthread_mutex_unlock(mutex)
        guard first, wake.write >= 0 else { return }
        close(wake.write)
        if let thread { pthread_join(thread, nil) }
        close(wake.read)
    }
}
