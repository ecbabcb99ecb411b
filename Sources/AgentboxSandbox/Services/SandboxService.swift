import AgentboxCore
import CAgentboxShim
import Glibc
import Synchronization

/// Something the supervisor serves a sandbox on a loopback port inside it: the network proxy, the
/// agentbox API (confess, the model gateway). docs/network.md, "How the proxy is reachable inside".
///
/// The init listens on `127.0.0.1:port` in the sandbox's network namespace and hands the socket over;
/// the supervision loop accepts on it and gives each connection to the service, which serves it on a
/// thread of its own. Connections come from inside the sandbox: everything read from them is hostile.
public protocol SandboxService: AnyObject, Sendable {
    /// The port inside the sandbox (on 127.0.0.1).
    var port: UInt16 { get }
    /// A connection from inside the sandbox (close-on-exec, non-blocking); the service owns it now.
    func serve(connection fd: Int32)
    /// The sandbox is gone: end every connection and wait for their threads.
    func stop()
}

/// What services tell the run (on the supervision thread, through `SandboxDelegate.sandboxServiceEvents`):
/// the proxy's decisions, and confessions filed from inside.
public enum ServiceEvent: Sendable {
    /// The proxy decided on a connection (`id` pairs it with its `netClosed`).
    case netConnect(NetConnection)
    /// A connection the proxy allowed ended.
    case netClosed(id: Int, sent: UInt64, received: UInt64, seconds: Double)
    /// `agentbox confess` (or `agentbox mcp`) inside the sandbox; answer through `reply`.
    case confess(ConfessionRequest, reply: ServiceReply)
}

public struct NetConnection: Sendable, Equatable {
    public var id: Int
    public var host: String
    public var port: UInt16
    /// CONNECT (a tunnel) or the method of a forwarded plain HTTP request.
    public var method: String
    public var allowed: Bool
    /// The allowing rule, or why it was denied.
    public var reason: String
    /// The address connected to (allowed connections).
    public var address: String?
    /// Why an allowed connection could not be made (the name did not resolve, the host did not answer).
    public var error: String? = nil
}

public struct ConfessionRequest: Sendable, Equatable {
    public var severity: String
    public var category: String
    public var summary: String
    public var details: String?
    public static let severities = ["info", "warning", "blocker"]

    /// Checks a request body (`{"severity","category","summary","details"}`); the error says what is wrong.
    public init(json: JSON) throws(AgentboxError) {
        guard json.objectValue != nil else { throw .usage("the body must be a JSON object") }
        guard let s = json["severity"]?.stringValue, ConfessionRequest.severities.contains(s) else {
            throw .usage("severity must be one of info, warning, blocker")
        }
        guard let c = json["category"]?.stringValue, !c.trimmingSpaces().isEmpty, c.utf8.count <= 64 else {
            throw .usage("category must be a non-empty string of at most 64 bytes")
        }
        guard let m = json["summary"]?.stringValue, !m.trimmingSpaces().isEmpty, m.utf8.count <= 1024 else {
            throw .usage("summary must be a non-empty string of at most 1024 bytes")
        }
        if let d = json["details"], d != .null {
            guard let text = d.stringValue, text.utf8.count <= 16 << 10 else { throw .usage("details must be a string of at most 16 KiB") }
            details = text
        }
        severity = s
        category = c
        summary = m
    }
}

/// A one-shot answer from the supervision thread to a service thread waiting for it.
public final class ServiceReply: Sendable {
    let fd: Int32
    let value = Mutex<Result<JSON, AgentboxError>?>(nil)

    public init() { fd = ab_eventfd() }
    deinit { if fd >= 0 { close(fd) } }

    public func answer(_ result: Result<JSON, AgentboxError>) {
        value.withLock { $0 = result }
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// The answer, or nil after `timeout` seconds or when `stop` becomes readable.
    func wait(timeout: Double, stop: Int32) -> Result<JSON, AgentboxError>? {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        let deadline = Clock.monotonic() + timeout
        while value.withLock({ $0 }) == nil {
            let left = deadline - Clock.monotonic()
            if left <= 0 || fds[1].revents != 0 { return nil }
            _ = poll(&fds, 2, Int32((left * 1000).rounded(.up)))
        }
        return value.withLock { $0 }
    }
}

/// Events from other threads to the supervision thread: a queue and an eventfd the loop polls.
public final class EventQueue<Event: Sendable>: Sendable {
    public let fd: Int32
    let queue = Mutex<[Event]>([])

    public init() { fd = ab_eventfd() }
    deinit { if fd >= 0 { close(fd) } }

    public func post(_ event: Event) {
        queue.withLock { $0.append(event) }
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Everything posted since the last call.
    public func take() -> [Event] {
        var n: UInt64 = 0
        _ = read(fd, &n, 8)
        return queue.withLock { q in
            defer { q = [] }
            return q
        }
    }
}

/// What services tell the supervision thread.
public typealias ServiceInbox = EventQueue<ServiceEvent>

/// The threads serving one service's connections: at most `limit` at once (one more is refused), each
/// ended when `stop` is called (every blocking wait also polls `stopFD`). Threads are detached: nothing
/// ever joins one while holding the lock it takes to finish (that deadlocked the supervision loop).
public final class ConnectionThreads: Sendable {
    public let limit: Int
    /// Readable once the sandbox is gone.
    public let stopFD: Int32
    /// Written by each thread as it finishes (`stop` waits on it).
    let doneFD: Int32
    let state = Mutex<(live: Int, stopped: Bool)>((0, false))

    public init(limit: Int) {
        self.limit = limit
        stopFD = ab_eventfd()
        doneFD = ab_eventfd()
    }

    deinit {
        if stopFD >= 0 { close(stopFD) }
        if doneFD >= 0 { close(doneFD) }
    }

    /// Serves `fd` with `body` on a new thread; false (and `fd` is the caller's) at the limit or when
    /// no thread can be made.
    public func start(_ fd: Int32, _ body: @escaping @Sendable (Int32) -> Void) -> Bool {
        let admitted = state.withLock { s -> Bool in
            guard !s.stopped, s.live < limit else { return false }
            s.live += 1
            return true
        }
        guard admitted else { return false }
        let tid = HelperThread.start { [self] in
            body(fd)
            close(fd)
            state.withLock { $0.live -= 1 }
            var one: UInt64 = 1
            _ = write(doneFD, &one, 8)
        }
        guard let tid else {
            state.withLock { $0.live -= 1 }
            return false
        }
        pthread_detach(tid)
        return true
    }

    public var live: Int { state.withLock { $0.live } }

    /// Ends every connection (their waits see `stopFD`) and waits, at most `timeout` seconds, for their
    /// threads to finish (a thread still running then holds only its own connection and this object).
    public func stop(timeout: Double = 15) {
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
        state.withLock { $0.stopped = true }
        let deadline = Clock.monotonic() + timeout
        while live > 0 {
            let left = deadline - Clock.monotonic()
            if left <= 0 { return }
            var p = pollfd(fd: doneFD, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(min(left, 1) * 1000)) > 0 {
                var n: UInt64 = 0
                _ = read(doneFD, &n, 8)
            }
        }
    }
}

/// Blocking I/O on a non-blocking socket, bounded by a deadline and the sandbox's end.
public struct SocketIO {
    public let fd: Int32
    public let stop: Int32

    public init(fd: Int32, stop: Int32) {
        self.fd = fd
        self.stop = stop
    }

    /// Waits until `fd` is ready for `events`; false at the deadline, at the stop, or on an error.
    public func wait(_ events: Int32, until deadline: Double) -> Bool {
        var fds = [pollfd(fd: fd, events: Int16(events), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        while true {
            let left = deadline - Clock.monotonic()
            if left <= 0 { return false }
            let rc = poll(&fds, 2, Int32(min(left * 1000, 60_000).rounded(.up)))
            if rc < 0 && errno != EINTR { return false }
            if fds[1].revents != 0 { return false }
            if fds[0].revents != 0 { return true }
        }
    }

    /// Up to `max` bytes; [] at EOF; nil on an error, the deadline or the stop.
    public func read(max: Int, until deadline: Double) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: max)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, max) }
            if n >= 0 { return Array(buffer[0..<n]) }
            if errno == EINTR { continue }
            guard errno == EAGAIN, wait(POLLIN, until: deadline) else { return nil }
        }
    }

    /// All of `bytes`; false on an error, the deadline or the stop.
    @discardableResult
    public func write<C: Collection<UInt8>>(_ bytes: C, until deadline: Double) -> Bool {
        var rest = Array(bytes)[...]
        while !rest.isEmpty {
            let n = rest.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { rest = rest.dropFirst(n); continue }
            if n < 0 && errno == EINTR { continue }
            guard n < 0, errno == EAGAIN, wait(POLLOUT, until: deadline) else { return false }
        }
        return true
    }
}
