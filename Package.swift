// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "agentbox",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "agentbox", targets: ["agentbox"]),
        .executable(name: "agentbox-init", targets: ["AgentboxInit"]),
        .library(name: "AgentboxCore", targets: ["AgentboxCore"]),
        .library(name: "AgentboxSandbox", targets: ["AgentboxSandbox"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries, found through pkg-config (Debian: libseccomp-dev, libcap-dev, libcurl4-openssl-dev).
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CCap", pkgConfig: "libcap", providers: [.apt(["libcap-dev"])]),
        // libcurl's headers only (no pkg-config link flags): the library is loaded at first use.
        .systemLibrary(name: "CCurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // The C boundary: clone trampoline, mount API, Landlock, seccomp load, prctl. Async-signal-safe where it matters.
        .target(name: "CAgentboxShim"),
        // Pure Swift, no Foundation, no syscalls beyond reading files: JSON, profiles, policy, wire codec.
        .target(name: "AgentboxCore", dependencies: ["CAgentboxShim"]),
        // Supervisor side: host probe, cgroup drivers, seccomp compiler, spawn and supervision.
        .target(name: "AgentboxSandbox", dependencies: ["AgentboxCore", "CAgentboxShim", "CSeccomp"]),
        // The run journal: records, writer (one per run, durable by class), reader/verify, run store.
        .target(name: "AgentboxJournal", dependencies: ["AgentboxCore", "CAgentboxShim"]),
        // Model clients: provider-neutral conversation, SSE, OpenAI and Anthropic wire formats, errors and retries.
        .target(name: "CAgentboxCurl", dependencies: ["CCurl"], linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "AgentboxModels", dependencies: ["AgentboxCore", "CAgentboxCurl"]),
        // Runs: a journaled exec, and the agent run (gateway, conversation, budgets, watchdogs).
        .target(name: "AgentboxSupervisor", dependencies: ["AgentboxCore", "AgentboxSandbox", "AgentboxJournal", "AgentboxModels", "CAgentboxShim"]),
        // PID 1 inside the sandbox: single-threaded, finishes setup after exec, reaps, reports.
        // Fully static (no dynamic loader, no libstdc++ relocation): it starts in ~0.5 ms instead of ~1.8 ms,
        // and it is started once per sandbox. It needs no NSS or dlopen (no Foundation, no name lookups).
        .executableTarget(name: "AgentboxInit", dependencies: ["AgentboxCore", "CAgentboxShim", "CCap"],
                          linkerSettings: [.unsafeFlags(["-static-executable"])]),
        .executableTarget(name: "agentbox", dependencies: [
            "AgentboxCore", "AgentboxSandbox", "AgentboxJournal", "AgentboxSupervisor", "AgentboxModels", "CAgentboxShim",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // `make fuzz`: mutation fuzzing of every parser of untrusted bytes; not installed.
        .executableTarget(name: "agentbox-fuzz", dependencies: ["AgentboxCore", "AgentboxJournal", "AgentboxModels", "AgentboxSandbox"]),
        // `make bench` micro-benchmarks (journal throughput); not installed.
        .executableTarget(name: "agentbox-bench", dependencies: ["AgentboxCore", "AgentboxJournal", "AgentboxModels"]),
        .testTarget(name: "AgentboxCoreTests", dependencies: ["AgentboxCore", "AgentboxSandbox", "AgentboxJournal"]),
        .testTarget(name: "AgentboxModelsTests", dependencies: ["AgentboxCore", "AgentboxModels"]),
        .testTarget(name: "AgentboxSupervisorTests", dependencies: ["AgentboxCore", "AgentboxJournal", "AgentboxModels", "AgentboxSandbox", "AgentboxSupervisor"]),
        .testTarget(name: "AgentboxIntegrationTests", dependencies: ["AgentboxCore", "AgentboxJournal", "AgentboxModels", "AgentboxSupervisor"]),
    ],
    swiftLanguageModes: [.v6]
)
