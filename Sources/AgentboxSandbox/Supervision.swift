import AgentboxCore
import CAgentboxShim
import Glibc

/// The facts of how a sandbox's init ended, gathered by the supervision loop; `termination` turns them
/// into the result (a pure function: tested without a kernel).
public struct SandboxEnding: Sendable {
    /// An error that stops the sandbox: a delegate's, or a protocol violation by the init.
    public var failure: AgentboxError? = nil
    /// The init could not build the sandbox (it said where and why).
    public var setupFailure: AgentboxError? = nil
    public var landlockABI: Int32 = 0
    public var commandStarted = false
    /// The command's wait status, as the init reported it.
    public var commandStatus: Int32? = nil
    /// errno of the command's execve and the path, as the init reported them.
    public var execFailure: (errno: Int32, path: String)? = nil
    public var timedOut = false
    /// The first stop signal the supervisor received.
    public var stopSignal: Int32? = nil
    /// The init's own wait status.
    public var initStatus: Int32 = 0

    public init() {}

    /// How the command ended; throws when the sandbox never got as far as running it.
    public func termination(oomKills: Int) throws(AgentboxError) -> Termination {
        if let setupFailure { throw setupFailure }
        if timedOut { return .timedOut }
        if let (err, path) = execFailure {
            return err == ENOENT ? .notExecuted(code: 127, reason: "\(path): command not found in the sandbox")
                : .notExecuted(code: 126, reason: "\(path): cannot execute: \(FileIO.errnoString(err))")
        }
        if let status = commandStatus {
            return (status & 0x7f) == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
        }
        if let stopSignal { return .signaled(stopSignal) }
        let initSignal = initStatus & 0x7f
        guard commandStarted else {
            // The init ended without starting the command and without saying why.
            let how = initSignal == 0 ? "exited with status \((initStatus >> 8) & 0xff)" : "was killed by signal \(initSignal)"
            throw AgentboxError(stage: "sandbox setup", "agentbox-init \(how) before starting the command",
                                hint: oomKills > 0 ? "the memory limit is too low for the sandbox to start" : "run `agentbox doctor` to see what this host supports")
        }
        // The command started but its end was not reported: the init died with it.
        return .signaled(initSignal == 0 ? SIGKILL : initSignal)
    }
}

/// The supervision loop: one poll over explicit sources (the init's channel, the stop signals, the
/// init's exit, the command's output, the delegate's wake-up descriptor, the output relay's room) and
/// two deadlines (--timeout, the grace period after a stop signal). Nothing in it blocks but poll.
struct Supervision {
    /// The longest the loop sleeps when a delegate wants ticks (group commit of journal batches).
    static let tickInterval: Int32 = 200

    enum Source: Int, CaseIterable {
        case channel, signals, initExit, stdout, stderr, wake, stdoutRoom, stderrRoom, inbox
    }

    let process: SandboxProcess
    let policy: SandboxPolicy
    let mode: Sandbox.Mode
    let grace: Double
    let delegate: SandboxDelegate?
    let warn: (SandboxWarning) -> Void
    let timing: Timing
    var ending = SandboxEnding()
    /// agentbox's stdout and stderr (empty when output is not captured).
    let relays: [OutputRelay]
    var assembler = AgentWire.Assembler()
    var packet = [UInt8](repeating: 0, count: AgentWire.packetPayload + 64)
    var graceDeadline: Double? = nil
    var open: [Bool] = [true, true]  // stdout, stderr: not at EOF yet
    /// What the supervisor serves inside the sandbox, and the sockets the init handed over for them
    /// (`listening`), polled after the sources above; closed when the loop ends.
    let services: [SandboxService]
    let inbox: ServiceInbox?
    var listeners: [Int32] = []

    init(process: SandboxProcess, policy: SandboxPolicy, mode: Sandbox.Mode, grace: Double, delegate: SandboxDelegate?,
         relays: [OutputRelay], services: [SandboxService] = [], inbox: ServiceInbox? = nil,
         warn: @escaping (SandboxWarning) -> Void, timing: Timing) {
        self.services = services
        self.inbox = inbox
        self.process = process
        self.policy = policy
        self.mode = mode
        self.grace = grace
        self.delegate = delegate
        self.warn = warn
        self.timing = timing
        self.relays = relays
    }

    /// Stops the sandbox because of `error` (the first one is kept).
    mutating func fail(_ error: AgentboxError) {
        if ending.failure == nil { ending.failure = error }
        process.kill()
    }

    /// Runs `body` unless the sandbox is already failing; its error stops the sandbox.
    mutating func call(_ body: () throws(AgentboxError) -> Void) {
        guard ending.failure == nil else { return }
        do { try body() } catch { fail(error) }
    }

    /// Supervises until the init is gone; returns what happened. The init is reaped and its output
    /// read to the end (queued on the relay, not necessarily delivered yet) when this returns.
    mutating func run() -> SandboxEnding {
        let deadline = policy.limits.timeout.map { process.started + $0 }
        for fd in [process.stdout.raw, process.stderr.raw] where fd >= 0 {
            _ = fcntl(fd, 1031 /* F_SETPIPE_SZ */, 1 << 20)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        var chunk = captureBuffer()
        var fds = [pollfd](repeating: pollfd(fd: -1, events: Int16(POLLIN), revents: 0), count: Source.allCases.count)
        fds[Source.channel.rawValue].fd = process.channel.raw
        fds[Source.signals.rawValue].fd = process.signals
        fds[Source.initExit.rawValue].fd = process.pidfd.raw
        fds[Source.wake.rawValue].fd = delegate?.wakeFD ?? -1
        fds[Source.inbox.rawValue].fd = inbox?.fd ?? -1
        defer { endServices() }
        while true {
            // The listening sockets, once the init has handed them over.
            if fds.count < Source.allCases.count + listeners.count {
                fds += listeners.dropFirst(fds.count - Source.allCases.count).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            }
            // A stream is read only while its relay has room: otherwise the command waits, as under any
            // pipe, and the loop waits for room (or anything else) instead.
            for (i, (pipe, room)) in [(Source.stdout, Source.stdoutRoom), (.stderr, .stderrRoom)].enumerated() where !relays.isEmpty {
                let hasRoom = relays[i].hasRoom
                fds[pipe.rawValue].fd = hasRoom && open[i] ? (i == 0 ? process.stdout.raw : process.stderr.raw) : -1
                fds[room.rawValue].fd = hasRoom ? -1 : relays[i].wakeFD
            }
            var timeoutMs: Int32 = -1
            if let d = [deadline, graceDeadline].compactMap({ $0 }).min() {
                timeoutMs = Int32(max(0, min(Double(Int32.max), (d - Clock.monotonic()) * 1000)).rounded(.up))
            }
            if delegate != nil { timeoutMs = timeoutMs < 0 ? Supervision.tickInterval : min(timeoutMs, Supervision.tickInterval) }
            let rc = poll(&fds, nfds_t(fds.count), timeoutMs)
            if rc < 0 && errno != EINTR {
                fail(AgentboxError(stage: "supervise", "poll: \(FileIO.errnoString())"))
                break
            }
            func ready(_ s: Source) -> Bool { fds[s.rawValue].fd >= 0 && fds[s.rawValue].revents != 0 }
            for (i, room) in [Source.stdoutRoom, .stderrRoom].enumerated() where ready(room) {
                var n: UInt64 = 0
                _ = read(relays[i].wakeFD, &n, 8)
            }
            for (i, s) in [(0, Source.stdout), (1, Source.stderr)] where ready(s) {
                if !pump(fds[s.rawValue].fd, s == .stdout ? .stdout : .stderr, &chunk) { open[i] = false }
            }
            if let delegate { call { () throws(AgentboxError) in try delegate.sandboxTick() } }
            let now = Clock.monotonic()
            if let d = deadline, now >= d, !ending.timedOut {
                ending.timedOut = true
                process.kill()
            }
            if let g = graceDeadline, now >= g {
                process.kill()
                graceDeadline = nil
            }
            if ready(.signals) { stopSignals(now: now) }
            if fds[Source.channel.rawValue].revents & Int16(POLLIN) != 0 { drainChannel() }
            if ready(.wake), let delegate { call { () throws(AgentboxError) in try delegate.sandboxWake() } }
            if ready(.inbox) { deliverServiceEvents() }
            for (i, fd) in listeners.enumerated() where Source.allCases.count + i < fds.count && fds[Source.allCases.count + i].revents != 0 { acceptConnections(fd, services[i]) }
            if ready(.initExit) || fds[Source.channel.rawValue].revents & Int16(POLLHUP) != 0 { break }
        }
        drainChannel()
        process.reap()
        ending.initStatus = process.status
        // Every writer of the capture pipes is dead now: read them to the end (at most a pipe's worth
        // each), then wait for the relay to deliver it, unless a stop signal says not to wait.
        for (i, fd) in [process.stdout.raw, process.stderr.raw].enumerated() where fd >= 0 && open[i] {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            while pump(fd, i == 0 ? .stdout : .stderr, &chunk) {}
        }
        return ending
    }

    /// The capture buffer exists only when output is captured (a 1 MiB zero-fill and its page faults
    /// were a measurable part of every plain `exec`); never zero-filled, read() fills it.
    func captureBuffer() -> [UInt8] {
        process.stdout.isValid ? [UInt8](unsafeUninitializedCapacity: 1 << 20) { _, n in n = 1 << 20 } : []
    }

    /// Reads what is available on a capture pipe and passes it on; false at EOF.
    mutating func pump(_ fd: Int32, _ stream: Sandbox.OutputStream, _ chunk: inout [UInt8]) -> Bool {
        var n = 0
        var eof = false
        while n < chunk.count {
            let want = chunk.count - n
            let r = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress! + n, want) }
            if r > 0 {
                n += r
                // A pipe gives all it holds: a short read emptied it (no second read to learn EAGAIN).
                if r < want { break }
                continue
            }
            if r == 0 { eof = true }
            if r < 0 && errno == EINTR { continue }
            break
        }
        if n == 0 { return !eof }
        let bytes = Array(chunk[0..<n])
        // The delegate first: what it keeps (a journaled run's raw output files) is kept before the
        // caller can see it. A delegate's failure stops the sandbox, not the bytes already read.
        if let delegate { call { () throws(AgentboxError) in try delegate.sandboxOutput(stream, bytes) } }
        if !relays.isEmpty { relays[stream == .stdout ? 0 : 1].write(bytes) }
        return true
    }

    /// SIGINT/SIGTERM/SIGHUP/SIGQUIT: the first goes to the delegate (agent mode) or the command, and
    /// starts the grace period; a second kills the sandbox at once.
    mutating func stopSignals(now: Double) {
        while case let sig = ab_signalfd_read(process.signals), sig > 0 {
            guard ending.stopSignal == nil else {
                process.kill()
                continue
            }
            ending.stopSignal = sig
            graceDeadline = now + grace
            if delegate?.sandboxStopSignal(sig) != true {
                var w = WireWriter(.signal)
                w.i32(sig)
                _ = process.send(w.bytes)
            }
        }
    }

    /// Reads every packet waiting on the channel (with the descriptors attached to it).
    mutating func drainChannel() {
        var attached = [Int32](repeating: -1, count: 8)
        while true {
            var count: Int32 = 0
            let n = packet.withUnsafeMutableBytes { buf in
                attached.withUnsafeMutableBufferPointer { ab_recv_with_fds(process.channel.raw, buf.baseAddress!, buf.count, $0.baseAddress!, 8, &count, Int32(MSG_DONTWAIT)) }
            }
            var fds = Descriptors(Array(attached[0..<Int(count)]))
            if n <= 0 { return }
            handle(packet[0..<n], fds: &fds)
        }
    }

    /// The listening sockets the init made for `services`, checked: each a TCP socket listening on
    /// 127.0.0.1 at its service's port. Anything else stops the sandbox (it would not be served).
    mutating func takeListeners(_ count: Int32, _ fds: inout Descriptors) {
        guard listeners.isEmpty, Int(count) == services.count, fds.raw.count == services.count else {
            return protocolError("\(fds.raw.count) listening sockets for \(services.count) services")
        }
        for (fd, service) in zip(fds.raw, services) {
            var addr = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            var listening: Int32 = 0, type: Int32 = 0
            var optlen = socklen_t(4)
            let named = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
            _ = getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &optlen)
            optlen = 4
            _ = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &optlen)
            guard named == 0, addr.sin_family == sa_family_t(AF_INET), addr.sin_addr.s_addr == UInt32(0x7F00_0001).bigEndian,
                  UInt16(bigEndian: addr.sin_port) == service.port, listening == 1, type == Int32(SOCK_STREAM.rawValue) else {
                return protocolError("a socket that is not listening on 127.0.0.1:\(service.port)")
            }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        listeners = fds.releaseAll()
    }

    /// Accepts what is waiting (a bounded number per wake-up) and gives each connection to `service`.
    func acceptConnections(_ listener: Int32, _ service: SandboxService) {
        for _ in 0..<64 {
            let fd = ab_accept(listener)
            if fd < 0 { return }
            service.serve(connection: fd)
        }
    }

    mutating func deliverServiceEvents() {
        guard let inbox else { return }
        let events = inbox.take()
        guard !events.isEmpty else { return }
        if let delegate, ending.failure == nil {
            call { () throws(AgentboxError) in try delegate.sandboxServiceEvents(events) }
        } else {
            for case let .confess(_, reply) in events { reply.answer(.failure(AgentboxError(stage: "confess", "the run is ending"))) }
        }
    }

    /// The sandbox is gone: no new connections, every open one ended, their last events delivered.
    mutating func endServices() {
        for fd in listeners { close(fd) }
        listeners = []
        for service in services { service.stop() }
        deliverServiceEvents()
    }

    /// The init is inside the sandbox: anything it sends that is not a well-formed message for this
    /// mode ends the sandbox as a protocol error (recorded by the caller), never silently.
    mutating func protocolError(_ what: String) {
        fail(AgentboxError(stage: "sandbox protocol", "agentbox-init sent \(what)",
                           hint: "agentbox-init and agentbox must come from the same build; otherwise the sandbox is misbehaving"))
    }

    mutating func handle(_ bytes: ArraySlice<UInt8>, fds: inout Descriptors) {
        if let tag = bytes.first, tag == WireTag.agentMore.rawValue || tag == WireTag.agentLast.rawValue {
            guard mode == .agent, let delegate else { return protocolError("an agent message to a sandbox that runs a command") }
            guard ending.failure == nil else { return }
            let message: AgentMessage
            do throws(WireError) {
                guard let json = try assembler.add(bytes) else { return }
                message = try AgentMessage(json: json)
            } catch {
                return fail(AgentboxError(stage: "agent protocol", "the sandbox sent \(error.description)",
                                          hint: "agentbox-init and agentbox must come from the same build"))
            }
            call { () throws(AgentboxError) in try delegate.sandboxMessage(message) }
            return
        }
        let message: InitMessage
        do { message = try InitMessage.decode(Array(bytes)) } catch {
            return protocolError("a malformed message (\(bytes.count) bytes: \(error.description))")
        }
        switch message {
        case let .listening(count):
            takeListeners(count, &fds)
        case let .ready(abi):
            timing.mark("init setup")
            // Fail closed: a sandbox whose proxy or API did not arrive does not run.
            guard listeners.count == services.count else {
                return fail(AgentboxError(stage: "sandbox setup", "the sandbox's network services did not start (\(listeners.count) of \(services.count) listening sockets)"))
            }
            ending.landlockABI = abi
            if mode == .agent { ending.commandStarted = true }
            delegate?.sandboxReady(landlockABI: abi, cgroup: process.cgroup?.description)
            if abi == 0 && policy.profile.landlock == .bestEffort {
                warn(SandboxWarning("Landlock is unavailable on this kernel: running without it (the profile allows best-effort)"))
            }
        case let .failed(stage, err, detail):
            var msg = err != 0 ? FileIO.errnoString(err) : ""
            if !detail.isEmpty { msg += (msg.isEmpty ? "" : ": ") + detail }
            ending.setupFailure = AgentboxError(stage: "sandbox setup: \(stage)", msg, hint: "run `agentbox doctor` to see what this host supports")
        case .started:
            ending.commandStarted = true
            timing.mark("command exec")
        case let .execFailed(err, path):
            ending.execFailure = (err, path)
        case let .exited(status):
            timing.mark("command run")
            ending.commandStatus = status
        case let .timing(phase, micros):
            // The init's own words, shown on a terminal: escaped and cut short like anything from inside.
            timing.report("init: " + TerminalText.line(String(phase.prefix(64))), micros: Int(micros))
        }
    }
}
