import AgentboxCore
import Glibc

/// agentbox's own paths on this host, for PolicyResolver.protect (docs/security.md, "agentbox's own
/// files"): its state, configuration and cache (hidden from every sandbox), and its binaries, profile
/// folders and the profile in use (read-only inside writable binds).
public enum ProtectedPaths {
    /// The list for a sandbox of `profile`. Creates agentbox's own folders when they are missing, so
    /// that none can be created from inside a sandbox whose workspace contains where they would be.
    public static func current(profile: Profile) -> [ProtectedPath] {
        var out: [ProtectedPath] = []
        func state(_ path: String?, _ what: String) {
            guard let path else { return }
            try? FileIO.makeDirectories(path)  // a failure shows when the path is protected or used
            out.append(ProtectedPath(path, what, .hidden))
        }
        state(AgentboxPaths.home(), "agentbox's state (AGENTBOX_HOME: journals, locks, confessions)")
        state(AgentboxPaths.configDir(), "agentbox's configuration (profiles, prices)")
        state(AgentboxPaths.cacheDir(), "agentbox's cache")
        if let prices = AgentboxPaths.file("AGENTBOX_PRICES") {
            out.append(ProtectedPath(prices, "the prices file (AGENTBOX_PRICES)", .hidden))
        }
        // The CAs the gateway trusts for the model's HTTPS (libcurl reads the file at each connection).
        if let ca = AgentboxPaths.file("AGENTBOX_CA_BUNDLE") {
            out.append(ProtectedPath(ca, "the CA bundle the model gateway trusts (AGENTBOX_CA_BUNDLE)", .readOnly))
        }
        for dir in ProfileStore.searchCandidates() where dir.hasPrefix("/") {
            out.append(ProtectedPath(dir, "a profile folder", .readOnly))
        }
        // The folders of the binaries, not only the files: the dynamic loader and dlopen (libcurl) look
        // for libraries next to the binary ($ORIGIN), and agentbox-init is looked for there first.
        if let exe = ProfileStore.executablePath(), let slash = exe.lastIndex(of: "/") {
            out.append(ProtectedPath(String(exe[..<slash]), "the folder of agentbox's binary", .readOnly))
        }
        if let initPath = try? Sandbox.locateInit(), let slash = initPath.lastIndex(of: "/") {
            out.append(ProtectedPath(String(initPath[..<slash]), "the folder of agentbox-init", .readOnly))
        }
        for file in profile.files + [profile.path] where file.hasPrefix("/") && !out.contains(where: { $0.path == file }) {
            out.append(ProtectedPath(file, "the profile in use", .readOnly))
        }
        if let seccomp = profile.seccomp, seccomp.hasPrefix("/") {
            out.append(ProtectedPath(seccomp, "the profile's seccomp policy", .readOnly))
        }
        return out
    }
}
