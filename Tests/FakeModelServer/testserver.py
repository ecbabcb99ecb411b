"""What every test server here does around serving: it dies with the test process that started it (a
test suite's static server is never stopped, and the runner's children may have SIGTERM blocked), and it
says its port in --port-file once it listens."""
import os, shutil, signal, threading, time


def die_with_parent(remove=()):
    """Exits (removing the `remove` paths) as soon as the process that started this one is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        for path in remove:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def announce_port(port, port_file):
    """Writes the port to `port_file` whole (written beside it, then renamed)."""
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(port_file + ".tmp", port_file)
