import Glibc

/// The supervisor's helper threads (output relays, the model gateway). Each starts with every signal
/// blocked: signals are the supervision loop's (its signalfd), and a thread that did not block them
/// would take the default action for a process-directed SIGTERM and end agentbox on the spot.
public enum HelperThread {
    /// Starts `body` on a new thread; nil when the system cannot create one.
    public static func start(_ body: @escaping () -> Void) -> pthread_t? {
        let arg = Unmanaged.passRetained(Body(body)).toOpaque()
        var all = sigset_t(), old = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { p in
            Unmanaged<Body>.fromOpaque(p!).takeRetainedValue().run()
            return nil
        }, arg)
        if rc != 0 {
            Unmanaged<Body>.fromOpaque(arg).release()
            return nil
        }
        return tid
    }

    final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
}
