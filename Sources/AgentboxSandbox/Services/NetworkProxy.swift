import AgentboxCore
import CAgentboxShim
import Glibc
import Synchronization

/// The only way out of a sandbox with `--network allow:RULES` (docs/network.md): an HTTP proxy the
/// supervisor serves at 127.0.0.1:3128 inside. HTTP CONNECT for HTTPS (no TLS interception) and plain
/// HTTP forwarding of absolute-URI requests. It decides on the name the client asked for, resolves it
/// itself (there is no resolver inside), checks every address against the rules (an allowed name
/// that resolves into the host's networks is refused unless a rule names the address), and relays
/// bytes, counting them. Every decision is a `ServiceEvent` for the journal.
public final class NetworkProxy: SandboxService {
    public static let defaultPort: UInt16 = 3128
    public struct Bounds: Sendable {
        /// Connections open at once, per sandbox.
        public var connections = 64
        /// Seconds a connection may pass no byte either way.
        public var idle = 300.0
        /// Seconds to connect upstream, and for the client to send its request head.
        public var connect = 10.0
        /// Bytes of a request head.
        public var head = 16 << 10
        /// Bytes held per direction (a pipe of that size: in the kernel, not in agentbox's memory).
        public var buffer = 256 << 10
        public init() {}
    }

    public let port: UInt16
    let rules: NetworkRules
    /// `--add-host NAME:IP`: names the operator mapped; their addresses are taken as named by a rule.
    let hosts: [String: [IPAddress]]
    let inbox: ServiceInbox
    let bounds: Bounds
    let threads: ConnectionThreads
    let ids = Atomic<Int>(0)

    public init(rules: NetworkRules, hosts: [(String, IPAddress)], inbox: ServiceInbox, port: UInt16 = NetworkProxy.defaultPort,
                bounds: Bounds = Bounds()) {
        self.rules = rules
        self.hosts = Dictionary(hosts.map { ($0.0.lowercased(), [$0.1]) }, uniquingKeysWith: +)
        self.inbox = inbox
        self.port = port
        self.bounds = bounds
        threads = ConnectionThreads(limit: bounds.connections)
    }

    public func serve(connection fd: Int32) {
        if !threads.start(fd, { [self] in handle($0) }) {
            SocketIO(fd: fd, stop: threads.stopFD).write(
                NetworkProxy.response(503, "agentbox proxy: too many connections (at most \(bounds.connections) at once)"),
                until: Clock.monotonic() + 1)
            close(fd)
        }
    }

    public func stop() { threads.stop() }

    static func response(_ status: Int, _ message: String) -> [UInt8] {
        let reason = [400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"][status] ?? "Error"
        let body = message + "\n"
        return Array(("HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n"
            + "Connection: close\r\nX-Agentbox-Proxy: \(status == 403 ? "denied" : "error")\r\n\r\n" + body).utf8)
    }

    /// One connection from inside: the request head, the decision, the upstream connection, the relay.
    func handle(_ client: Int32) {
        let io = SocketIO(fd: client, stop: threads.stopFD)
        guard let (head, rest) = readHead(io) else { return }
        let id = ids.wrappingAdd(1, ordering: .relaxed).newValue
        let tunnel = head.method == "CONNECT"
        guard let target = tunnel ? HTTPAuthority.connect(head.target) : HTTPAuthority.absolute(head.target) else {
            io.write(NetworkProxy.response(400, tunnel ? "agentbox proxy: CONNECT needs HOST:PORT"
                                                 : "agentbox proxy: only CONNECT and absolute http:// requests are proxied"),
                     until: Clock.monotonic() + bounds.connect)
            return
        }
        var event = NetConnection(id: id, host: target.host, port: target.port, method: head.method, allowed: false, reason: "", address: nil)
        func deny(_ status: Int, _ why: String) {
            // 403: the rules refused it; otherwise it was allowed and failed (the rule stays the reason).
            event.allowed = status != 403
            if event.allowed { event.error = why } else { event.reason = why }
            inbox.post(.netConnect(event))
            let text = status == 403 ? "agentbox proxy: \(target.host):\(target.port) is not allowed: \(why)" : "agentbox proxy: \(why)"
            io.write(NetworkProxy.response(status, text), until: Clock.monotonic() + bounds.connect)
        }
        let decision = rules.decide(host: target.host, port: target.port)
        guard case let .allow(rule) = decision else {
            if case let .deny(why) = decision { deny(403, why) }
            return
        }
        event.reason = rule
        let addresses: [IPAddress]
        switch resolve(target.host, port: target.port) {
        case let .success(list): addresses = list
        case let .failure(why):
            deny(why.status, why.message)
            return
        }
        var upstreamFD: Int32 = -1
        var lastError = "no address"
        for address in addresses {
            let (fd, error) = connect(address, port: target.port)
            if fd >= 0 {
                upstreamFD = fd
                event.address = address.description
            } else {
                lastError = "\(address): \(error)"
            }
            if upstreamFD >= 0 { break }
        }
        guard upstreamFD >= 0 else {
            deny(502, "cannot connect to \(target.host):\(target.port): \(lastError)")
            return
        }
        defer { close(upstreamFD) }
        event.allowed = true
        inbox.post(.netConnect(event))
        let started = Clock.monotonic()
        let upstream = SocketIO(fd: upstreamFD, stop: threads.stopFD)
        var first: [UInt8]
        var upLimit: UInt64? = nil
        if tunnel {
            guard io.write(Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8), until: Clock.monotonic() + bounds.connect) else { return }
            first = Array(rest)
        } else {
            // Origin-form to the server, the Host it was decided on, one request per connection.
            let hop: Set<String> = ["proxy-connection", "proxy-authorization", "connection", "keep-alive", "host", "te", "upgrade"]
            var fields = head.fields.filter { !hop.contains($0.name.lowercased()) }
            fields.insert(HTTPHead.Field("Host", target.port == 80 ? target.host : "\(target.host):\(target.port)"), at: 0)
            fields.append(HTTPHead.Field("Connection", "close"))
            // Exactly this request's body goes up, then the connection is half-closed: a second
            // request pipelined behind it (to another Host) never reaches the server.
            guard let length = try? head.contentLength() else {
                io.write(NetworkProxy.response(400, "agentbox proxy: a plain HTTP request needs a Content-Length body (or none)"),
                         until: Clock.monotonic() + bounds.connect)
                return
            }
            let requestHead = HTTPHead(start: (head.method, target.path, head.start.2), fields: fields).bytes
            first = requestHead + rest.prefix(length)
            upLimit = UInt64(requestHead.count + length)
        }
        let (sent, received) = relay(io, upstream, first: first, upLimit: upLimit)
        inbox.post(.netClosed(id: id, sent: sent, received: received, seconds: Clock.monotonic() - started))
    }

    /// The request head and the bytes that came after it; nil (after an answer, when useful) otherwise.
    func readHead(_ io: SocketIO) -> (HTTPHead, ArraySlice<UInt8>)? {
        var bytes: [UInt8] = []
        let deadline = Clock.monotonic() + bounds.connect
        while true {
            guard let chunk = io.read(max: bounds.head + 1 - bytes.count, until: deadline), !chunk.isEmpty else { return nil }
            bytes += chunk
            if let end = HTTPHead.end(in: bytes) {
                do { return (try HTTPHead.parse(bytes[..<end]), bytes[end...]) } catch {
                    io.write(NetworkProxy.response(400, "agentbox proxy: \(error.message)"), until: deadline)
                    return nil
                }
            }
            if bytes.count > bounds.head {
                io.write(NetworkProxy.response(400, "agentbox proxy: request head over \(bounds.head) bytes"), until: deadline)
                return nil
            }
        }
    }

    struct Refusal: Error {
        var status: Int
        var message: String
    }

    /// The addresses the proxy may connect to for `host`: an IP literal as it is (the rules named it),
    /// an `--add-host` name as mapped, any other name as the host's resolver answers, each address
    /// checked by `admits` (the first refusal is the reason when none is left).
    func resolve(_ rawHost: String, port: UInt16) -> Result<[IPAddress], Refusal> {
        var host = rawHost.lowercased()
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.hasSuffix(".") { host.removeLast() }
        if let literal = IPAddress(host) { return .success([literal]) }
        if let mapped = hosts[host] { return .success(mapped) }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, nil, &hints, &list)
        guard rc == 0, let first = list else {
            return .failure(Refusal(status: 502, message: "cannot resolve \(host): \(String(cString: gai_strerror(rc)))"))
        }
        defer { freeaddrinfo(list) }
        var found: [IPAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let ai = cursor {
            if let sa = ai.pointee.ai_addr {
                if ai.pointee.ai_family == AF_INET {
                    let a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
                    found.append(IPAddress(v4: withUnsafeBytes(of: a) { Array($0) }))
                } else if ai.pointee.ai_family == AF_INET6 {
                    let a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                    found.append(IPAddress(v6: withUnsafeBytes(of: a) { Array($0) }))
                }
            }
            cursor = ai.pointee.ai_next
        }
        var admitted: [IPAddress] = []
        var refusal: String? = nil
        for a in found where !admitted.contains(a) {
            switch rules.admits(resolved: a, port: port) {
            case .allow: admitted.append(a)
            case let .deny(why): refusal = refusal ?? "\(host) resolves to \(why)"
            }
        }
        if admitted.isEmpty { return .failure(Refusal(status: 403, message: refusal ?? "\(host) has no address")) }
        return .success(admitted)
    }

    /// A non-blocking TCP connection to `address`, within the connect bound; -1 and why not.
    func connect(_ address: IPAddress, port: UInt16) -> (Int32, String) {
        let v4 = !address.isV6
        let fd = socket(v4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return (-1, FileIO.errnoString()) }
        var rc: Int32
        if v4 {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin_addr) { $0.copyBytes(from: address.bytes[12...]) }
            rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        } else {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: address.bytes) }
            rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        if rc < 0 && errno == EINPROGRESS {
            guard SocketIO(fd: fd, stop: threads.stopFD).wait(POLLOUT, until: Clock.monotonic() + bounds.connect) else {
                close(fd)
                return (-1, "timed out after \(Int(bounds.connect)) s")
            }
            var err: Int32 = 0
            var len = socklen_t(4)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            rc = err == 0 ? 0 : -1
            errno = err
        }
        guard rc == 0 else {
            let why = FileIO.errnoString()
            close(fd)
            return (-1, why)
        }
        return (fd, "")
    }

    /// Moves bytes both ways until both sides are done, a side fails, nothing moves for `idle` seconds
    /// or the sandbox ends: socket to pipe to socket with splice(2), so the bytes never enter agentbox's
    /// memory; each direction holds at most `buffer` bytes in its pipe (a slow reader slows the writer).
    /// `first` (the rewritten head of a plain HTTP request, or what the client sent after CONNECT's head)
    /// goes upstream before anything else. Returns the bytes sent upstream and received from it.
    func relay(_ client: SocketIO, _ upstream: SocketIO, first: [UInt8], upLimit: UInt64? = nil) -> (UInt64, UInt64) {
        final class Flow {
            var fds: [Int32] = [-1, -1]
            var inPipe = 0
            var eof = false
            var shut = false
            var bytes: UInt64 = 0
            var limit: UInt64? = nil
            deinit { for fd in fds where fd >= 0 { close(fd) } }
        }
        let up = Flow(), down = Flow()
        guard ab_pipe_nonblock(&up.fds, Int32(bounds.buffer)) == 0, ab_pipe_nonblock(&down.fds, Int32(bounds.buffer)) == 0 else { return (0, 0) }
        let capacity = Int(fcntl(up.fds[1], 1032 /* F_GETPIPE_SZ */))
        if !first.isEmpty {
            guard upstream.write(first, until: Clock.monotonic() + bounds.connect) else { return (0, 0) }
            up.bytes = UInt64(first.count)
        }
        // `upLimit`: the bytes the client may send upstream in all; past them its side is at its end.
        up.limit = upLimit
        if let l = upLimit, up.bytes >= l { up.eof = true }
        var fds = [pollfd](repeating: pollfd(), count: 3)
        fds[2] = pollfd(fd: client.stop, events: Int16(POLLIN), revents: 0)
        while !(up.shut && down.shut) {
            fds[0] = pollfd(fd: client.fd, events: Int16((!up.eof && up.inPipe < capacity ? POLLIN : 0) | (down.inPipe > 0 ? POLLOUT : 0)), revents: 0)
            fds[1] = pollfd(fd: upstream.fd, events: Int16((!down.eof && down.inPipe < capacity ? POLLIN : 0) | (up.inPipe > 0 ? POLLOUT : 0)), revents: 0)
            let rc = poll(&fds, 3, Int32(bounds.idle * 1000))
            if rc < 0 && errno == EINTR { continue }
            if rc <= 0 || fds[2].revents != 0 { break }
            if !move(from: client.fd, fds[0].revents, through: up, to: upstream.fd) { break }
            if !move(from: upstream.fd, fds[1].revents, through: down, to: client.fd) { break }
        }
        return (up.bytes, down.bytes)

        /// One direction: from `src` into the flow's pipe and from the pipe to `dst`, again while either
        /// moves (fewer polls per byte); false on an error.
        func move(from src: Int32, _ events: Int16, through flow: Flow, to dst: Int32) -> Bool {
            var readable = events & Int16(POLLIN | POLLHUP | POLLERR) != 0
            var progress = true
            var rounds = 0
            while progress && rounds < 16 {  // bounded: the other direction and the stop get their turn
                progress = false
                rounds += 1
                if readable && !flow.eof && flow.inPipe < capacity {
                    let room = flow.limit.map { Int(min(UInt64(capacity - flow.inPipe), $0 - flow.bytes)) } ?? capacity - flow.inPipe
                    let n = ab_splice(src, flow.fds[1], room)
                    if n > 0 {
                        flow.inPipe += n
                        flow.bytes += UInt64(n)
                        progress = true
                        if let l = flow.limit, flow.bytes >= l { flow.eof = true }
                    } else if n == 0 || errno != EAGAIN {
                        flow.eof = true
                    } else {
                        readable = false
                    }
                }
                if flow.inPipe > 0 {
                    let n = ab_splice(flow.fds[0], dst, flow.inPipe)
                    if n > 0 { flow.inPipe -= n; progress = true } else if n < 0 && errno != EAGAIN { return false }
                }
            }
            if flow.eof && flow.inPipe == 0 && !flow.shut {
                flow.shut = true
                _ = shutdown(dst, Int32(SHUT_WR))
            }
            return true
        }
    }
}
