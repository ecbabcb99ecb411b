import AgentboxCore
import CAgentboxShim
import Glibc

/// Writes to one of agentbox's own descriptors (stdout or stderr) from a thread of its own, so that a
/// reader that stalls (a pipe nobody reads, a paused terminal) never stalls the supervision loop:
/// timeouts, signals and the journal go on, and the other stream still flows. At most `capacity` bytes
/// wait; what happens past that is the relay's `Overflow`.
/// A reader that went away (EPIPE) is not an error: what was meant for it is dropped (the journal has it).
public final class OutputRelay: @unchecked Sendable {
    public enum Overflow: Sendable {
        /// The producer waits: `hasRoom` is false until the queue drains to half (a sandbox's output
        /// pipes are not read meanwhile, so the command blocks on write as under any pipe; nothing is lost).
        case backpressure
        /// What does not fit is dropped and counted (`dropped`): progress lines, `run --json` records,
        /// all of which the journal keeps.
        case drop
    }

    public let fd: Int32
    public let capacity: Int
    public let overflow: Overflow
    /// Readable (an eventfd) when the queue has drained below half after being full, and when the
    /// writer thread ended: the supervision loop polls it while it waits for room.
    public let wakeFD: Int32

    var mutex = pthread_mutex_t()
    var cond = pthread_cond_t()
    var queue: [[UInt8]] = []
    var head = 0
    var queued = 0
    var full = false
    var closing = false
    var finished = false
    var broken = false
    var thread: pthread_t? = nil
    var droppedBytes = 0

    public init(fd: Int32, capacity: Int = 4 << 20, overflow: Overflow) {
        self.fd = fd
        self.capacity = capacity
        self.overflow = overflow
        wakeFD = ab_eventfd()
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    /// The writer thread holds the relay until it ends (after `finish`), so this runs after it.
    deinit {
        close(wakeFD)
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    var isFinished: Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return finished || thread == nil
    }

    /// Whether the producer may add more (always true for `.drop`).
    public var hasRoom: Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return !full
    }

    /// Bytes dropped because the queue was full (`.drop` only).
    public var dropped: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return droppedBytes
    }

    /// Queues `bytes`. Never blocks.
    public func write(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if broken || closing { return }
        if overflow == .drop && queued + bytes.count > capacity {
            droppedBytes += bytes.count
            return
        }
        if thread == nil && !startThread() {
            // No thread: write here (the only way left to deliver it).
            pthread_mutex_unlock(&mutex)
            Sandbox.writeAll(fd, bytes)
            pthread_mutex_lock(&mutex)
            return
        }
        queue.append(bytes)
        queued += bytes.count
        if queued >= capacity { full = true }
        pthread_cond_signal(&cond)
    }

    /// Waits until everything queued is written or `interrupt` (a signalfd, -1: none) is readable; the
    /// owner must call it once (the writer thread ends then). Returns false when it gave up: what was
    /// not written stays undelivered (it is in the journal) and the thread ends when its write does.
    @discardableResult
    public func finish(interrupt: Int32 = -1) -> Bool {
        pthread_mutex_lock(&mutex)
        closing = true
        let started = thread != nil
        pthread_cond_signal(&cond)
        pthread_mutex_unlock(&mutex)
        guard started else { return true }
        var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0), pollfd(fd: interrupt, events: Int16(POLLIN), revents: 0)]
        while !isFinished {
            let rc = poll(&fds, 2, wakeFD >= 0 ? -1 : 50)  // no eventfd (EMFILE): look again every 50 ms
            if rc < 0 && errno != EINTR { return false }
            if fds[1].revents != 0 { return false }
            var n: UInt64 = 0
            _ = read(wakeFD, &n, 8)
        }
        return true
    }

    /// `finish`, interrupted by SIGINT/SIGTERM/SIGHUP/SIGQUIT (consumed, not re-raised) when the caller
    /// has no signalfd of its own: the end of a run whose output a slow reader is still taking.
    @discardableResult
    public func finishUnlessSignalled() -> Bool {
        guard !isFinished else { return finish() }
        var sigs = sigset_t()
        sigemptyset(&sigs)
        for s in [SIGINT, SIGTERM, SIGHUP, SIGQUIT] { sigaddset(&sigs, s) }
        var old = sigset_t()
        pthread_sigmask(SIG_BLOCK, &sigs, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let fd = Descriptor(ab_signalfd(&sigs))
        let done = finish(interrupt: fd.raw)
        while ab_signalfd_read(fd.raw) > 0 {}
        return done
    }

    func startThread() -> Bool {
        guard let tid = HelperThread.start({ [self] in writeLoop() }) else { return false }
        pthread_detach(tid)
        thread = tid
        return true
    }

    func writeLoop() {
        pthread_mutex_lock(&mutex)
        while true {
            while head == queue.count && !closing { pthread_cond_wait(&cond, &mutex) }
            if head == queue.count { break }
            let bytes = queue[head]
            queue[head] = []
            head += 1
            if head > 1024 && head * 2 > queue.count {
                queue.removeFirst(head)
                head = 0
            }
            pthread_mutex_unlock(&mutex)
            let ok = Sandbox.writeAll(fd, bytes)
            pthread_mutex_lock(&mutex)
            if !ok { broken = true }
            queued -= bytes.count
            if full && queued <= capacity / 2 {
                full = false
                wake()
            }
        }
        finished = true
        pthread_mutex_unlock(&mutex)
        wake()
    }

    func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }
}
