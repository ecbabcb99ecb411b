/// The control channel between the supervisor and agentbox-init: a SOCK_SEQPACKET socketpair, one
/// message per packet. Messages are a tag byte and fields in a fixed order (both ends are the same
/// build: the init refuses a spec whose version differs). See docs/architecture.md, "Spawn protocol".
public enum WireTag: UInt8, Sendable {
    // supervisor -> init
    case setup = 1
    case signal = 2
    // init -> supervisor
    case ready = 10
    case failed = 11
    case started = 12
    case execFailed = 13
    case exited = 14
    case listening = 15
    case timing = 16
    // agent messages, both directions (AgentWire)
    case agentMore = 30
    case agentLast = 31
}

public struct WireWriter {
    public private(set) var bytes: [UInt8] = []
    public init(_ tag: WireTag) { bytes.append(tag.rawValue) }
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    public mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    public mutating func bytes(_ b: [UInt8]) { u32(UInt32(b.count)); bytes.append(contentsOf: b) }
    public mutating func string(_ s: String) { bytes(Array(s.utf8)) }
    public mutating func strings(_ list: [String]) { u32(UInt32(list.count)); for s in list { string(s) } }
}

public struct WireError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

public struct WireReader {
    let data: [UInt8]
    var pos = 1
    public let tag: WireTag

    public init(_ data: [UInt8]) throws(WireError) {
        guard let first = data.first, let tag = WireTag(rawValue: first) else {
            throw WireError(description: "unknown control message (\(data.first.map(String.init) ?? "empty"))")
        }
        self.data = data
        self.tag = tag
    }

    mutating func take(_ n: Int) throws(WireError) -> ArraySlice<UInt8> {
        guard n >= 0, pos + n <= data.count else { throw WireError(description: "truncated control message") }
        defer { pos += n }
        return data[pos..<pos + n]
    }
    public mutating func u8() throws(WireError) -> UInt8 { try take(1).first! }
    public mutating func u32() throws(WireError) -> UInt32 {
        var v: UInt32 = 0
        for (i, b) in try take(4).enumerated() { v |= UInt32(b) << (8 * i) }
        return v
    }
    public mutating func u64() throws(WireError) -> UInt64 {
        var v: UInt64 = 0
        for (i, b) in try take(8).enumerated() { v |= UInt64(b) << (8 * i) }
        return v
    }
    public mutating func i32() throws(WireError) -> Int32 { Int32(bitPattern: try u32()) }
    public mutating func bytes() throws(WireError) -> [UInt8] { Array(try take(Int(try u32()))) }
    public mutating func string() throws(WireError) -> String { String(decoding: try bytes(), as: UTF8.self) }
    public mutating func strings() throws(WireError) -> [String] {
        let n = Int(try u32())
        guard n < 1 << 20 else { throw WireError(description: "implausible list length") }
        var out: [String] = []
        for _ in 0..<n { out.append(try string()) }
        return out
    }
}

/// A file as the kernel knows it: a path can be swapped, this cannot.
public struct FileIdentity: Equatable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }
}

/// Everything the init needs to finish building the sandbox and start the command.
public struct SetupSpec: Equatable, Sendable {
    public static let version: UInt32 = 5

    public var hostname = "agentbox"
    /// The uid/gid the command runs as, inside the sandbox.
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    /// Whether the init must call setgroups(0) (only possible when root wrote the gid map).
    public var dropGroups = false
    public var mounts: [MountEntry] = []
    /// Index in the handed-over fds (fd 3 + 1 + index) of a detached, idmapped mount for the
    /// mount at the same position in `mounts`; -1 when the mount is a plain bind.
    public var mountFds: [Int32] = []
    /// (st_dev, st_ino) of the host path of each mount (its source for a bind, its target for a hide or a
    /// pin), taken by the supervisor without following symlinks; (0, 0) for symlinks. The init checks
    /// every source and every target inside a host bind against it, so a path swapped while the sandbox
    /// is built (another sandbox renaming folders in a shared workspace) fails the setup.
    public var mountIdentities: [FileIdentity] = []
    public var tmpSize: UInt64 = 256 << 20
    public var workdir = "/"
    public var argv: [String] = []
    /// Classic BPF programs (struct sock_filter arrays) loaded last, in order: the file-mode guard, then
    /// the profile's policy (when it has one). The kernel applies all of them.
    public var seccompPrograms: [[UInt8]] = []
    /// 0 off, 1 best-effort, 2 required.
    public var landlockMode: UInt8 = 1
    /// Paths (inside) where Landlock allows writes; everything else is read/execute only.
    public var writablePaths: [String] = []
    /// (resource, limit) pairs applied with setrlimit before the command starts.
    public var rlimits: [(Int32, UInt64)] = []
    /// Agent mode (`agentbox run`): the init runs the agent loop instead of `argv` (docs/agent.md).
    public var agent = false
    /// Default and maximum per-call `shell` timeout, in seconds.
    public var shellTimeout: UInt32 = 120
    public var shellTimeoutMax: UInt32 = 3600
    /// Bytes of tool output given back to the model (head and tail halves).
    public var outputLimit: UInt32 = 32 << 10
    /// TCP ports the init listens on at 127.0.0.1 inside the sandbox's network namespace, before it
    /// confines itself; the listening sockets go to the supervisor with `ready` (SCM_RIGHTS), in this
    /// order, and serve the sandbox from outside (docs/network.md).
    public var listenPorts: [UInt16] = []
    /// AGENTBOX_TIMING: the init reports its own phases (`InitMessage.timing`) before `ready`.
    public var timing = false

    public init() {}

    public static func == (a: SetupSpec, b: SetupSpec) -> Bool {
        a.encode() == b.encode()
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(.setup)
        w.u32(SetupSpec.version)
        w.string(hostname)
        w.u32(uid)
        w.u32(gid)
        w.u8(dropGroups ? 1 : 0)
        w.u32(UInt32(mounts.count))
        for (i, m) in mounts.enumerated() {
            w.u8(m.kind.rawValue)
            w.string(m.source)
            w.string(m.target)
            w.u8(m.directory ? 1 : 0)
            w.i32(i < mountFds.count ? mountFds[i] : -1)
            let identity = i < mountIdentities.count ? mountIdentities[i] : FileIdentity(device: 0, inode: 0)
            w.u64(identity.device)
            w.u64(identity.inode)
        }
        w.u64(tmpSize)
        w.string(workdir)
        w.strings(argv)
        w.u32(UInt32(seccompPrograms.count))
        for program in seccompPrograms { w.bytes(program) }
        w.u8(landlockMode)
        w.strings(writablePaths)
        w.u32(UInt32(rlimits.count))
        for (r, v) in rlimits { w.i32(r); w.u64(v) }
        w.u8(agent ? 1 : 0)
        w.u32(shellTimeout)
        w.u32(shellTimeoutMax)
        w.u32(outputLimit)
        w.u32(UInt32(listenPorts.count))
        for p in listenPorts { w.u32(UInt32(p)) }
        w.u8(timing ? 1 : 0)
        return w.bytes
    }

    public static func decode(_ data: [UInt8]) throws(WireError) -> SetupSpec {
        var r = try WireReader(data)
        guard r.tag == .setup else { throw WireError(description: "expected a setup message") }
        let version = try r.u32()
        guard version == SetupSpec.version else {
            throw WireError(description: "setup version \(version) from the supervisor, init speaks \(SetupSpec.version): reinstall agentbox so both match")
        }
        var s = SetupSpec()
        s.hostname = try r.string()
        s.uid = try r.u32()
        s.gid = try r.u32()
        s.dropGroups = try r.u8() != 0
        let n = Int(try r.u32())
        guard n < 4096 else { throw WireError(description: "too many mounts") }
        for _ in 0..<n {
            guard let kind = MountEntry.Kind(rawValue: try r.u8()) else { throw WireError(description: "unknown mount kind") }
            let source = try r.string()
            let target = try r.string()
            s.mounts.append(MountEntry(kind, source: source, target: target, directory: try r.u8() != 0))
            s.mountFds.append(try r.i32())
            s.mountIdentities.append(FileIdentity(device: try r.u64(), inode: try r.u64()))
        }
        s.tmpSize = try r.u64()
        s.workdir = try r.string()
        s.argv = try r.strings()
        let np = Int(try r.u32())
        guard np <= 8 else { throw WireError(description: "too many seccomp programs") }
        for _ in 0..<np { s.seccompPrograms.append(try r.bytes()) }
        s.landlockMode = try r.u8()
        s.writablePaths = try r.strings()
        let nr = Int(try r.u32())
        guard nr < 64 else { throw WireError(description: "too many rlimits") }
        for _ in 0..<nr { s.rlimits.append((try r.i32(), try r.u64())) }
        s.agent = try r.u8() != 0
        s.shellTimeout = try r.u32()
        s.shellTimeoutMax = try r.u32()
        s.outputLimit = try r.u32()
        let nl = Int(try r.u32())
        guard nl <= 4 else { throw WireError(description: "too many listening ports") }
        for _ in 0..<nl {
            guard let p = UInt16(exactly: try r.u32()), p > 0 else { throw WireError(description: "a listening port out of range") }
            s.listenPorts.append(p)
        }
        s.timing = try r.u8() != 0
        return s
    }
}

/// Messages from the init to the supervisor.
public enum InitMessage: Equatable, Sendable {
    /// The sandbox is built and confined; the command is about to start.
    case ready(landlockABI: Int32)
    /// Setup failed at `stage` with `errno` (0 when not an OS error) and a detail.
    case failed(stage: String, errno: Int32, detail: String)
    /// The command's execve succeeded.
    case started(pid: Int32)
    /// The command could not be executed (ENOENT -> 127, EACCES/ENOEXEC -> 126).
    case execFailed(errno: Int32, path: String)
    /// The command ended: the raw wait status.
    case exited(status: Int32)
    /// The listening sockets of `SetupSpec.listenPorts` are attached (SCM_RIGHTS), in that order.
    case listening(count: Int32)
    /// AGENTBOX_TIMING (`SetupSpec.timing`): microseconds the init spent in one phase of its setup.
    case timing(phase: String, micros: UInt32)

    public func encode() -> [UInt8] {
        switch self {
        case let .ready(abi): var w = WireWriter(.ready); w.i32(abi); return w.bytes
        case let .failed(stage, err, detail):
            var w = WireWriter(.failed); w.string(stage); w.i32(err); w.string(detail); return w.bytes
        case let .started(pid): var w = WireWriter(.started); w.i32(pid); return w.bytes
        case let .execFailed(err, path): var w = WireWriter(.execFailed); w.i32(err); w.string(path); return w.bytes
        case let .exited(status): var w = WireWriter(.exited); w.i32(status); return w.bytes
        case let .listening(count): var w = WireWriter(.listening); w.i32(count); return w.bytes
        case let .timing(phase, micros): var w = WireWriter(.timing); w.string(phase); w.u32(micros); return w.bytes
        }
    }

    public static func decode(_ data: [UInt8]) throws(WireError) -> InitMessage {
        var r = try WireReader(data)
        switch r.tag {
        case .ready: return .ready(landlockABI: try r.i32())
        case .failed: return .failed(stage: try r.string(), errno: try r.i32(), detail: try r.string())
        case .started: return .started(pid: try r.i32())
        case .execFailed: return .execFailed(errno: try r.i32(), path: try r.string())
        case .exited: return .exited(status: try r.i32())
        case .listening: return .listening(count: try r.i32())
        case .timing: return .timing(phase: try r.string(), micros: try r.u32())
        default: throw WireError(description: "unexpected message \(r.tag) from init")
        }
    }
}
