// The agent loop of `agentbox run`, inside the sandbox (docs/agent.md). The init asks the supervisor
// for the next turn, runs each tool call here (shell as a child process, file tools itself, confined
// like every sandbox process), and reports the results. The supervisor holds the conversation, the key
// and the journal, and validates every message.
import AgentboxCore
import CAgentboxShim
import Glibc

final class AgentLoop {
    let spec: SetupSpec
    let sigfd: Int32
    var assembler = AgentWire.Assembler()
    var inbox: [JSON] = []
    var packet = [UInt8](repeating: 0, count: AgentWire.packetPayload + 1)

    init(spec: SetupSpec, sigfd: Int32) {
        self.spec = spec
        self.sigfd = sigfd
    }

    struct ChannelClosed: Error {}

    func sendJSON(_ message: JSON) throws(ChannelClosed) {
        for p in AgentWire.packets(message) {
            var n: Int
            repeat { n = p.withUnsafeBytes { Glibc.send(channel, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } } while n < 0 && errno == EINTR
            if n != p.count { throw ChannelClosed() }
        }
    }

    /// Reads the packets that are there (one poll wake-up); complete messages go to the inbox.
    func readChannel() throws(ChannelClosed) {
        while true {
            let n = packet.withUnsafeMutableBytes { recv(channel, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
            if n <= 0 { throw ChannelClosed() }
            // Control messages of the exec protocol (a forwarded signal) are not used in agent mode.
            guard packet[0] == WireTag.agentMore.rawValue || packet[0] == WireTag.agentLast.rawValue else { continue }
            do {
                if let message = try assembler.add(packet[0..<n]) { inbox.append(message) }
            } catch {
                throw ChannelClosed()
            }
        }
    }

    /// Output pipes of `shell` calls whose background processes still hold them open: drained and
    /// discarded while the loop waits, so a server started with `&` does not die of SIGPIPE on its next
    /// log line. At most `maxSinks`; beyond that the oldest is closed.
    var sinks: [Int32] = []
    static let maxSinks = 64
    var scratch = [UInt8](repeating: 0, count: 64 << 10)

    /// poll(2) on `fds` and on the sinks, which it drains; returns poll's result.
    func poll(_ fds: inout [pollfd], _ timeoutMs: Int32) -> Int32 {
        var all = fds + sinks.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let rc = Glibc.poll(&all, nfds_t(all.count), timeoutMs)
        for i in fds.indices { fds[i].revents = all[i].revents }
        if rc > 0 {
            for p in all[fds.count...] where p.revents != 0 {
                while true {
                    let n = scratch.withUnsafeMutableBytes { read(p.fd, $0.baseAddress, $0.count) }
                    if n > 0 { continue }
                    if n < 0 && errno == EINTR { continue }
                    if n == 0 || errno != EAGAIN {
                        close(p.fd)
                        sinks.removeAll { $0 == p.fd }
                    }
                    break
                }
            }
        }
        return rc
    }

    func sink(_ fd: Int32) {
        if sinks.count >= AgentLoop.maxSinks { close(sinks.removeFirst()) }
        sinks.append(fd)
    }

    /// Reaps every exited process; returns the wait status of `child` if it was among them.
    func reap(child: pid_t = -2) -> Int32? {
        while ab_signalfd_read(sigfd) > 0 {}
        var childStatus: Int32? = nil
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid <= 0 { break }
            if pid == child { childStatus = status }
        }
        return childStatus
    }

    /// The supervisor's next message, reaping orphans while waiting.
    func awaitReply() throws(ChannelClosed) -> AgentMessage {
        var fds = [pollfd(fd: channel, events: Int16(POLLIN), revents: 0), pollfd(fd: sigfd, events: Int16(POLLIN), revents: 0)]
        while inbox.isEmpty {
            let rc = poll(&fds, -1)
            if rc < 0 { if errno == EINTR { continue }; throw ChannelClosed() }
            if fds[1].revents != 0 { _ = reap() }
            if fds[0].revents & Int16(POLLIN) != 0 { try readChannel() } else if fds[0].revents != 0 { throw ChannelClosed() }
        }
        do { return try AgentMessage(json: inbox.removeFirst()) } catch { throw ChannelClosed() }
    }

    func send(_ message: AgentMessage) throws(ChannelClosed) { try sendJSON(message.json) }

    /// The loop: returns the init's exit status (0: the supervisor ended the run).
    func run() -> Int32 {
        do throws(ChannelClosed) {
            while true {
                try send(.next)
                switch try awaitReply() {
                case .end: return 0
                case let .turn(calls):
                    for call in calls {
                        try send(.toolStart(id: call.id))
                        switch try awaitReply() {
                        case .done: continue  // the supervisor answered it (confess, finish, bad arguments, stopping)
                        case let .go(args):
                            let started = monotonic()
                            let outcome = execute(call.name, args)
                            var report = AgentMessage.ToolReport(id: call.id, content: outcome.first { $0.0 == "content" }?.1.stringValue ?? "",
                                                                 isError: outcome.first { $0.0 == "is_error" }?.1.boolValue ?? false,
                                                                 facts: outcome.filter { $0.0 != "content" && $0.0 != "is_error" })
                            report.facts.append(("duration_ms", .number(((monotonic() - started) * 1e6).rounded() / 1000)))
                            try send(.toolDone(report))
                        default: return 125
                        }
                    }
                default: return 125
                }
            }
        } catch {
            return 125  // the supervisor is gone: leaving kills everything in the sandbox
        }
    }

    func execute(_ name: String, _ args: JSON) -> [(String, JSON)] {
        switch BuiltinTool(rawValue: name) {
        case .shell?: return shell(args)
        case .readFile?: return inChild(name) { readFile(args) }
        case .writeFile?: return inChild(name) { writeFile(args) }
        case .editFile?: return inChild(name) { editFile(args) }
        default: return failure("\(name) is not a tool the sandbox runs")
        }
    }

    func failure(_ message: String) -> [(String, JSON)] {
        [("content", .string(message)), ("is_error", true)]
    }

    // MARK: shell

    func shell(_ args: JSON) -> [(String, JSON)] {
        guard let command = args["command"]?.stringValue else { return failure("shell: command is required") }
        let requested = args["timeout_s"]?.intValue ?? Int(spec.shellTimeout)
        let timeout = Double(max(1, min(requested, Int(spec.shellTimeoutMax))))
        var pipe: [Int32] = [-1, -1]
        guard ab_pipe2_cloexec(&pipe) == 0 else { return failure("shell: pipe: \(FileIO.errnoString())") }
        var cArgs: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup(command), nil]
        defer { for p in cArgs { free(p) } }
        var pid: pid_t = 0
        let rc = ab_spawn_tool("/bin/sh", &cArgs, pipe[1], &pid)
        close(pipe[1])
        if rc != 0 {
            close(pipe[0])
            return failure("shell: cannot start /bin/sh: \(FileIO.errnoString(rc))")
        }
        _ = fcntl(pipe[0], F_SETFL, fcntl(pipe[0], F_GETFL) | O_NONBLOCK)

        let half = Int(spec.outputLimit) / 2
        var head: [UInt8] = []
        var tail: [UInt8] = []
        var total = 0
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        let started = monotonic()
        var status: Int32? = nil
        var timedOut = false
        var drainUntil: Double? = nil
        var fds = [pollfd(fd: pipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: sigfd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: channel, events: Int16(POLLIN), revents: 0)]
        while true {
            let now = monotonic()
            let limit = drainUntil ?? (started + timeout)
            if now >= limit {
                if drainUntil != nil { break }
                timedOut = true
                kill(-pid, SIGKILL)
                kill(pid, SIGKILL)
                drainUntil = now + 0.2
                continue
            }
            let rc = poll(&fds, Int32(((limit - now) * 1000).rounded(.up)))
            if rc < 0 && errno != EINTR { break }
            if fds[1].revents != 0, let s = reap(child: pid) {
                status = s
                drainUntil = min(drainUntil ?? .infinity, monotonic() + 0.2)
            }
            if fds[2].revents & Int16(POLLIN) != 0 { if (try? readChannel()) == nil { exit(125) } }
            if fds[2].revents & Int16(POLLHUP | POLLERR) != 0 { exit(125) }  // the supervisor is gone: PID 1 leaves, all die
            if fds[0].revents != 0 {
                var eof = false
                while true {
                    let n = buf.withUnsafeMutableBytes { read(pipe[0], $0.baseAddress, $0.count) }
                    if n > 0 {
                        total += n
                        let chunk = buf[0..<n]
                        let room = half - head.count
                        if room > 0 { head.append(contentsOf: chunk.prefix(room)) }
                        if n > room {
                            tail.append(contentsOf: chunk.dropFirst(max(0, room)))
                            if tail.count > 2 * half { tail.removeFirst(tail.count - half) }
                        }
                        continue
                    }
                    if n == 0 { eof = true }
                    if n < 0 && errno == EINTR { continue }
                    break
                }
                if eof {
                    fds[0].fd = -1
                    if status != nil { break }
                }
            }
            if status != nil && fds[0].fd < 0 { break }
        }
        if status == nil && !timedOut {
            // The output closed early or the drain ended first: wait for the shell itself.
            var s: Int32 = 0
            if waitpid(pid, &s, 0) == pid { status = s }
        }
        if timedOut { var s: Int32 = 0; _ = waitpid(pid, &s, 0) }
        // Background processes may still hold the output open: keep draining it, or close it at EOF.
        if fds[0].fd >= 0 { sink(pipe[0]) } else { close(pipe[0]) }
        if tail.count > half { tail.removeFirst(tail.count - half) }
        var text: String
        var truncated = false
        if total <= head.count + tail.count {
            text = String(decoding: head + tail, as: UTF8.self)
        } else {
            text = ToolText.join(head: head, tail: tail, cut: total - head.count - tail.count, limit: Int(spec.outputLimit))
            truncated = true
        }
        // No duration in the text: the same command with the same output is the same result to the
        // stuck-loop rule (the journal has duration_ms).
        var fields: [(String, JSON)] = []
        if timedOut {
            text = "timed out after \(Int(timeout)) s: the command's process group was killed\n" + text
            fields = [("is_error", true), ("timed_out", true)]
        } else if let s = status {
            let code = (s & 0x7f) == 0 ? (s >> 8) & 0xff : 128 + (s & 0x7f)
            let how = (s & 0x7f) == 0 ? "exit code \(code)" : "killed by signal \(s & 0x7f)"
            text = how + "\n" + text
            fields = [("is_error", false), ("exit_code", .number(Double(code)))]
        }
        fields += [("content", .string(text)), ("truncated", .bool(truncated)), ("output_bytes", .number(Double(total)))]
        return fields
    }

    // MARK: files

    /// Seconds a file tool may take (a hung filesystem must not stall the loop).
    static let fileToolTimeout = 60.0

    /// Runs a file tool in a forked child process (like every tool call, a process of the sandbox), with
    /// a timeout; the child sends its result back through a pipe. The init stays small and responsive.
    func inChild(_ tool: String, _ body: () -> [(String, JSON)]) -> [(String, JSON)] {
        var p: [Int32] = [-1, -1]
        guard ab_pipe2_cloexec(&p) == 0 else { return failure("\(tool): pipe: \(FileIO.errnoString())") }
        let pid = fork()
        if pid < 0 {
            close(p[0]); close(p[1])
            return failure("\(tool): fork: \(FileIO.errnoString())")
        }
        if pid == 0 {
            close(p[0])
            let bytes = JSON.object(body()).serializedBytes
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { write(p[1], $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { _exit(1) }
                off += n
            }
            _exit(0)
        }
        close(p[1])
        defer { close(p[0]) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        let deadline = monotonic() + AgentLoop.fileToolTimeout
        var fds = [pollfd(fd: p[0], events: Int16(POLLIN), revents: 0), pollfd(fd: channel, events: 0, revents: 0)]
        var timedOut = false
        while true {
            let left = deadline - monotonic()
            if left <= 0 { timedOut = true; break }
            let rc = poll(&fds, Int32((left * 1000).rounded(.up)))
            if rc < 0 && errno != EINTR { break }
            if fds[1].revents & Int16(POLLHUP | POLLERR) != 0 { exit(125) }  // the supervisor is gone
            if fds[0].revents == 0 { continue }
            let n = buf.withUnsafeMutableBytes { read(p[0], $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        if timedOut { kill(pid, SIGKILL) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        if timedOut { return failure("\(tool): no answer within \(Int(AgentLoop.fileToolTimeout)) s (is the filesystem hung?); the operation was killed") }
        guard let json = try? JSON.parse(bytes: out), let fields = json.objectValue else {
            let how = (status & 0x7f) == 0 ? "exited with status \((status >> 8) & 0xff)" : "was killed by signal \(status & 0x7f)"
            return failure("\(tool): the tool's process \(how) without a result" + ((status & 0x7f) == 9 ? " (out of memory?)" : ""))
        }
        return fields
    }

    static let readLimitLines = 2000
    static let readLimitBytes = 64 << 10
    static let fileLimit = 16 << 20

    /// A regular file's bytes, or a message for the model.
    func load(_ tool: String, _ path: String) -> Result<[UInt8], ToolFailure> {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return .failure(ToolFailure("\(tool): cannot open \(path): \(FileIO.errnoString())")) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return .failure(ToolFailure("\(tool): \(path): \(FileIO.errnoString())")) }
        if (st.st_mode & S_IFMT) == S_IFDIR { return .failure(ToolFailure("\(tool): \(path) is a directory (use shell with ls)")) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return .failure(ToolFailure("\(tool): \(path) is not a regular file")) }
        guard st.st_size <= AgentLoop.fileLimit else {
            return .failure(ToolFailure("\(tool): \(path) is \(st.st_size) bytes, more than \(AgentLoop.fileLimit >> 20) MiB; use shell (head, sed, grep) on it"))
        }
        var out = [UInt8](repeating: 0, count: Int(st.st_size) + 1)
        var n = 0
        while true {
            if n == out.count { out += [UInt8](repeating: 0, count: 64 << 10) }
            let r = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + n, $0.count - n) }
            if r < 0 && errno == EINTR { continue }
            if r < 0 { return .failure(ToolFailure("\(tool): reading \(path): \(FileIO.errnoString())")) }
            if r == 0 { break }
            n += r
            if n > AgentLoop.fileLimit { return .failure(ToolFailure("\(tool): \(path) grew past \(AgentLoop.fileLimit >> 20) MiB while reading")) }
        }
        out.removeLast(out.count - n)
        return .success(out)
    }

    struct ToolFailure: Error {
        let message: String
        init(_ message: String) { self.message = message }
    }

    func readFile(_ args: JSON) -> [(String, JSON)] {
        guard let path = args["path"]?.stringValue, !path.isEmpty else { return failure("read_file: path is required") }
        switch load("read_file", path) {
        case let .failure(f): return failure(f.message)
        case let .success(bytes):
            if bytes.prefix(8192).contains(0) {
                return failure("read_file: \(path) looks binary (\(bytes.count) bytes); inspect it with shell (file, xxd)")
            }
            let offset = args["offset"]?.intValue ?? 1
            let limit = args["limit"]?.intValue ?? AgentLoop.readLimitLines
            let text = ToolText.lines(bytes, offset: offset, limit: min(max(1, limit), AgentLoop.readLimitLines),
                                      maxBytes: AgentLoop.readLimitBytes)
            return [("content", .string(text)), ("is_error", false)]
        }
    }

    func store(_ tool: String, _ path: String, _ bytes: [UInt8]) -> ToolFailure? {
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            var current = path.hasPrefix("/") ? "" : "."
            for part in path[..<slash].split(separator: "/") {
                current += "/" + part
                if mkdir(current, 0o755) < 0 && errno != EEXIST {
                    return ToolFailure("\(tool): cannot create directory \(current): \(FileIO.errnoString())")
                }
            }
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK, 0o644)
        guard fd >= 0 else { return ToolFailure("\(tool): cannot write \(path): \(FileIO.errnoString())") }
        defer { close(fd) }
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return ToolFailure("\(tool): writing \(path): \(FileIO.errnoString())") }
            off += n
        }
        return nil
    }

    func writeFile(_ args: JSON) -> [(String, JSON)] {
        guard let path = args["path"]?.stringValue, !path.isEmpty else { return failure("write_file: path is required") }
        guard let content = args["content"]?.stringValue else { return failure("write_file: content is required") }
        let bytes = Array(content.utf8)
        if let f = store("write_file", path, bytes) { return failure(f.message) }
        return [("content", .string("wrote \(bytes.count) bytes to \(path)")), ("is_error", false)]
    }

    func editFile(_ args: JSON) -> [(String, JSON)] {
        guard let path = args["path"]?.stringValue, !path.isEmpty else { return failure("edit_file: path is required") }
        guard let old = args["old_text"]?.stringValue, let new = args["new_text"]?.stringValue else {
            return failure("edit_file: old_text and new_text are required")
        }
        switch load("edit_file", path) {
        case let .failure(f): return failure(f.message)
        case let .success(bytes):
            switch ToolText.replaceUnique(bytes, old: Array(old.utf8), new: Array(new.utf8)) {
            case .failure(.emptyOldText): return failure("edit_file: old_text is empty; use write_file to create or replace a whole file")
            case .failure(.notFound):
                return failure("edit_file: old_text was not found in \(path); read the file again and copy the exact text, whitespace included")
            case let .failure(.notUnique(n)):
                return failure("edit_file: old_text appears \(n) times in \(path); include more surrounding lines so it matches exactly once")
            case let .success(updated):
                if let f = store("edit_file", path, updated) { return failure(f.message) }
                return [("content", .string("replaced 1 occurrence in \(path)")), ("is_error", false)]
            }
        }
    }
}

func monotonic() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
