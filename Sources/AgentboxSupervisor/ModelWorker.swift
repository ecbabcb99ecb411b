import AgentboxCore
import AgentboxModels
import AgentboxSandbox
import CAgentboxShim
import Glibc

/// The model gateway's thread: one blocking model call at a time, off the supervision loop, which
/// polls `fd` (an eventfd) and takes the outcome when it is readable. docs/agent.md.
final class ModelWorker: @unchecked Sendable {
    let fd: Int32
    var mutex = pthread_mutex_t()
    var outcome: ModelCallOutcome? = nil
    /// Retries announced by the call in flight, for the supervision thread to show (`notices()`).
    var pendingNotices: [RetryNotice] = []
    var thread: pthread_t? = nil
    let provider: ModelProvider

    init(provider: ModelProvider) {
        self.provider = provider
        fd = ab_eventfd()
        pthread_mutex_init(&mutex, nil)
        // Said live: the gateway thread queues the notice and wakes the supervision loop.
        provider.onRetry = { [unowned self] notice in
            pthread_mutex_lock(&mutex)
            pendingNotices.append(notice)
            pthread_mutex_unlock(&mutex)
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }
    }

    /// The retries announced since the last look.
    func notices() -> [RetryNotice] {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        let n = pendingNotices
        pendingNotices = []
        return n
    }

    deinit {
        join()
        close(fd)
        pthread_mutex_destroy(&mutex)
    }

    var busy: Bool { thread != nil }

    /// Starts `complete` on a new thread. False when no thread could be created.
    func start(_ conversation: Conversation, tools: [ToolDefinition]) -> Bool {
        join()
        let started = HelperThread.start { [self] in
            let result: Result<AssistantTurn, ModelError>
            do throws(ModelError) { result = .success(try provider.complete(conversation, tools: tools).0) } catch { result = .failure(error) }
            let done = ModelCallOutcome(result: result, attempts: provider.lastAttempts, request: provider.lastRequest)
            pthread_mutex_lock(&mutex)
            outcome = done
            pthread_mutex_unlock(&mutex)
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }
        guard let started else { return false }
        thread = started
        return true
    }

    /// The finished call's outcome, if it finished.
    func collect() -> ModelCallOutcome? {
        var count: UInt64 = 0
        _ = read(fd, &count, 8)
        pthread_mutex_lock(&mutex)
        let o = outcome
        outcome = nil
        pthread_mutex_unlock(&mutex)
        if o != nil { join() }
        return o
    }

    func cancel() { provider.cancel() }

    /// Waits for the thread (a cancelled HTTP call returns within about a second).
    func join() {
        if let t = thread {
            pthread_join(t, nil)
            thread = nil
        }
    }
}
