import AgentboxCore
import Glibc
import Synchronization

/// Requests the agentbox API passes on (the model gateway of a bring-your-own-agent run).
public protocol HTTPRequestHandler: AnyObject, Sendable {
    /// Whether this handler serves `head`'s method and path.
    func accepts(_ head: HTTPHead) -> Bool
    /// Answers one request; `client` is closed after it returns.
    func handle(_ head: HTTPHead, body: [UInt8], client: SocketIO)
    /// The sandbox is gone: end the requests in flight (called before their threads are joined).
    func stop()
}

/// agentbox's own endpoint inside every sandbox, `http://127.0.0.1:3129` (`AGENTBOX_API`): `POST
/// /agentbox/v1/confess` files a confession with the run (what `agentbox confess` and `agentbox mcp`
/// inside use), and, in a bring-your-own-agent run, the model gateway's paths. One request per
/// connection; every answer is JSON.
public final class AgentboxAPI: SandboxService {
    public static let defaultPort: UInt16 = 3129
    public static let confessPath = "/agentbox/v1/confess"
    /// Confessions one sandbox may file through the API (each is a critical journal record and a line
    /// of the node's feed: the sandbox must not be able to grow them without bound).
    public static let maxConfessions = 1000
    /// Bytes of a confession request's body.
    public static let maxConfessionBody = 64 << 10
    /// Bytes of request bodies all connections of one sandbox may be reading at once.
    public static let bodyBudget = 64 << 20

    public let port: UInt16
    let inbox: ServiceInbox
    let threads: ConnectionThreads
    let handler: HTTPRequestHandler?
    let maxBody: Int
    let confessions = Atomic<Int>(0)
    let bodyBytes = Atomic<Int>(0)

    public init(inbox: ServiceInbox, handler: HTTPRequestHandler? = nil, port: UInt16 = AgentboxAPI.defaultPort,
                connections: Int = 64, maxBody: Int = 32 << 20) {
        self.inbox = inbox
        self.handler = handler
        self.port = port
        self.maxBody = maxBody
        threads = ConnectionThreads(limit: connections)
    }

    public func serve(connection fd: Int32) {
        if !threads.start(fd, { [self] in handle($0) }) {
            SocketIO(fd: fd, stop: threads.stopFD).write(AgentboxAPI.json(503, AgentboxAPI.error("too many connections to the agentbox API")),
                                                         until: Clock.monotonic() + 1)
            close(fd)
        }
    }

    public func stop() {
        handler?.stop()
        threads.stop()
    }

    public static func error(_ message: String, type: String = "agentbox_error") -> JSON {
        .object([("error", .object([("message", .string(message)), ("type", .string(type))]))])
    }

    /// A whole JSON response (the connection closes after it).
    public static func json(_ status: Int, _ body: JSON, extra: [HTTPHead.Field] = []) -> [UInt8] {
        let text = body.serializedBytes + [0x0A]
        var fields = [HTTPHead.Field("Content-Type", "application/json"), HTTPHead.Field("Content-Length", "\(text.count)"),
                      HTTPHead.Field("Connection", "close")]
        fields += extra
        return HTTPHead(start: ("HTTP/1.1", "\(status)", reason(status)), fields: fields).bytes + text
    }

    public static func reason(_ status: Int) -> String {
        [200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
         408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
         502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"][status] ?? "Status"
    }

    func handle(_ fd: Int32) {
        let io = SocketIO(fd: fd, stop: threads.stopFD)
        let deadline = Clock.monotonic() + 30
        var bytes: [UInt8] = []
        var end: Int? = nil
        while end == nil {
            guard bytes.count <= 64 << 10, let chunk = io.read(max: 64 << 10, until: deadline), !chunk.isEmpty else {
                if bytes.count > 64 << 10 { io.write(AgentboxAPI.json(400, AgentboxAPI.error("request head too large")), until: deadline) }
                return
            }
            bytes += chunk
            end = HTTPHead.end(in: bytes)
        }
        let head: HTTPHead
        let length: Int
        do {
            head = try HTTPHead.parse(bytes[..<end!])
            length = try head.contentLength()
        } catch {
            io.write(AgentboxAPI.json(400, AgentboxAPI.error(error.message)), until: deadline)
            return
        }
        // The route first, from the head: a body is read only for a path that takes one, within that
        // path's bound, and all bodies being read at once share one budget (the supervisor's memory is
        // outside the sandbox's cgroup).
        let path = String(head.target.split(separator: "?", maxSplits: 1).first ?? "")
        let confessing = path == AgentboxAPI.confessPath
        let handled = !confessing && handler?.accepts(head) == true
        guard confessing || handled else {
            io.write(AgentboxAPI.json(404, AgentboxAPI.error("no such endpoint: \(head.method) \(path)", type: "not_found_error")), until: deadline)
            return
        }
        if confessing && head.method != "POST" {
            io.write(AgentboxAPI.json(405, AgentboxAPI.error("use POST")), until: deadline)
            return
        }
        let bound = confessing ? AgentboxAPI.maxConfessionBody : maxBody
        guard length <= bound else {
            io.write(AgentboxAPI.json(413, AgentboxAPI.error("request body over \(bound) bytes")), until: deadline)
            return
        }
        guard bodyBytes.wrappingAdd(length, ordering: .relaxed).newValue <= AgentboxAPI.bodyBudget else {
            bodyBytes.wrappingSubtract(length, ordering: .relaxed)
            io.write(AgentboxAPI.json(503, AgentboxAPI.error("too many large requests at once; try again")), until: deadline)
            return
        }
        defer { bodyBytes.wrappingSubtract(length, ordering: .relaxed) }
        var body = Array(bytes[end!...].prefix(length))
        while body.count < length {
            guard let chunk = io.read(max: min(1 << 20, length - body.count), until: deadline), !chunk.isEmpty else { return }
            body += chunk
        }
        if confessing {
            io.write(confess(body), until: deadline)
        } else {
            handler?.handle(head, body: body, client: io)
        }
    }

    /// Files a confession through the supervision thread and answers with its journal sequence number.
    func confess(_ body: [UInt8]) -> [UInt8] {
        let request: ConfessionRequest
        do throws(AgentboxError) {
            guard let json = try? JSON.parse(bytes: body) else { throw .usage("the body is not JSON") }
            request = try ConfessionRequest(json: json)
        } catch {
            return AgentboxAPI.json(400, AgentboxAPI.error(error.message))
        }
        guard confessions.wrappingAdd(1, ordering: .relaxed).newValue <= AgentboxAPI.maxConfessions else {
            return AgentboxAPI.json(429, AgentboxAPI.error("this sandbox already filed \(AgentboxAPI.maxConfessions) confessions"))
        }
        let reply = ServiceReply()
        inbox.post(.confess(request, reply: reply))
        switch reply.wait(timeout: 30, stop: threads.stopFD) {
        case let .success(answer)?: return AgentboxAPI.json(200, answer)
        case let .failure(error)?: return AgentboxAPI.json(500, AgentboxAPI.error("\(error.stage): \(error.message)"))
        case nil: return AgentboxAPI.json(503, AgentboxAPI.error("the supervisor did not record the confession in time"))
        }
    }
}
