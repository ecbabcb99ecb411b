// agentbox-fuzz: mutation fuzzing of the parsers that take untrusted bytes (`make fuzz`).
//
// Targets: JSON, the init<->supervisor wire codec (SetupSpec, InitMessage, agent packets), journal
// records, SSE with both providers' stream decoders, whole answers, profiles, seccomp policies, replay
// files, and the terminal escaper. Each input is a mutation (bit flips, byte changes, insertions,
// deletions, splices with other seeds, interesting bytes) of a seed that parses. A crash (a trap or a
// signal) writes the input to `fuzz-crash-<target>-<n>.bin` and exits 1; a property violation (a JSON
// value that does not survive a round trip) does the same. Deterministic for a given seed.
//
// Usage: agentbox-fuzz [--seconds N] [--seed N] [--target NAME]
import AgentboxCore
import AgentboxJournal
import AgentboxModels
import AgentboxSandbox
import Glibc

struct Generator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
}

struct Target {
    let name: String
    let seeds: [[UInt8]]
    let run: ([UInt8]) -> String?  // a property violation, or nil
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

let json: [[UInt8]] = [
    #"{"a":[1,2.5,-3e10,true,false,null],"b":{"c":"d\u00e9\n\"x\\"},"e":""}"#,
    #"[{"role":"assistant","content":"hi","tool_calls":[{"id":"c1","type":"function","function":{"name":"shell","arguments":"{\"command\":\"ls\"}"}}]}]"#,
    #""\ud83d\ude00 \u2028 \u0085 \u001b]52;c;AAAA\u0007""#, "12345678901234567890", "[[[[[[[[[[]]]]]]]]]]",
].map(bytes)

var spec = SetupSpec()
spec.mounts = [MountEntry(.bindRW, source: "/w", target: "/w"), MountEntry(.pin, source: "/w/a", target: "/w/a")]
spec.mountFds = [0, -1]
spec.argv = ["/bin/sh", "-c", "echo hi"]
spec.seccompPrograms = [[6, 0, 0, 0, 0, 0, 0xff, 0x7f]]
spec.rlimits = [(6, 10)]
let wire: [[UInt8]] = [spec.encode(), InitMessage.ready(landlockABI: 7).encode(), InitMessage.failed(stage: "mount", errno: 1, detail: "x").encode(),
                       InitMessage.exited(status: 256).encode(), InitMessage.execFailed(errno: 2, path: "/x").encode()]
    + AgentWire.packets(["t": "tool_done", "id": "c1", "content": "out", "is_error": false])

let journal: [[UInt8]] = [
    #"{"v":1,"seq":7,"ts":"2026-11-26T07:33:51.180Z","epoch":1,"type":"output","data":{"stream":"stdout","text":"hello\n"},"crc":"c2df0e89"}"#,
    #"{"v":1,"seq":4,"ts":"2026-11-30T08:01:39.394Z","epoch":1,"type":"output","data":{"stream":"stdout","offset":0,"length":20,"crc32c":"43327df1"},"crc":"90462923"}"#,
    #"{"v":1,"seq":1,"ts":"2026-11-26T07:33:51.180Z","epoch":1,"type":"confession","data":{"severity":"warning","category":"x","summary":"s"},"crc":"00000000"}"#,
].map(bytes)

let openAIStream = bytes("""
    : keep-alive\r\n\r\ndata: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Let me"}}]}\n\n\
    data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"shell","arguments":"{\\"comm"}}]}}]}\n\n\
    data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"and\\":\\"ls\\"}"}}]}}]}\n\n\
    data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n\
    data: {"choices":[],"usage":{"prompt_tokens":50,"completion_tokens":12}}\n\ndata: [DONE]\n\n
    """)
let anthropicStream = bytes("""
    event: message_start\ndata: {"type":"message_start","message":{"id":"m","content":[],"usage":{"input_tokens":5,"output_tokens":1}}}\n\n\
    event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t1","name":"shell","input":{}}}\n\n\
    event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"command\\": \\"ls\\"}"}}\n\n\
    event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n\
    event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}\n\n\
    event: message_stop\ndata: {"type":"message_stop"}\n\n
    """)
let answers: [[UInt8]] = [
    #"{"choices":[{"index":0,"message":{"role":"assistant","content":"plain","tool_calls":[{"id":"a","type":"function","function":{"name":"shell","arguments":"{}"}}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
    #"{"id":"m","type":"message","content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"t","name":"shell","input":{"command":"ls"}},{"type":"thinking","thinking":"x","signature":"s"}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":2}}"#,
].map(bytes)

let profiles: [[UInt8]] = [
    #"{"description":"d","filesystem":{"workspace":"rw","system":["/usr","/etc"],"ro":["/srv"],"rw":["/var/cache/x"],"hide":["/etc/ssh"]},"network":"none","limits":{"memory":"4G","pids":1024,"cpus":2,"timeout":"30m","tmp_size":"512M","journal_output":"1G"},"env":{"CI":"1"},"seccomp":"seccomp/default.json","landlock":"best-effort","hostname":"h"}"#,
].map(bytes)
let seccomp: [[UInt8]] = [
    #"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},{"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"includes":{"arches":["amd64"]}}]}"#,
].map(bytes)
let replay: [[UInt8]] = [
    #"{"turns":[{"text":"hi","tool_calls":[{"name":"shell","arguments":{"command":"ls"}}],"usage":{"input_tokens":1,"output_tokens":2}},{"tool_calls":[{"name":"finish","arguments":"{\"status\":\"success\",\"summary\":\"s\"}"}]}]}"#,
].map(bytes)

func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

let targets: [Target] = [
    Target(name: "json", seeds: json) { input in
        guard let value = try? JSON.parse(bytes: input) else { return nil }
        let again = value.serializedBytes
        guard let reparsed = try? JSON.parse(bytes: again) else { return "serialized JSON does not parse: \(text(again).prefix(200))" }
        if reparsed != value { return "JSON round trip changed the value" }
        if again.contains(0x0A) || again.contains(0x0D) { return "serialized JSON holds a raw line break" }
        return nil
    },
    Target(name: "wire", seeds: wire) { input in
        _ = try? SetupSpec.decode(input)
        _ = try? InitMessage.decode(input)
        var assembler = AgentWire.Assembler()
        _ = try? assembler.add(input[...])
        _ = try? assembler.add(input[...])
        return nil
    },
    Target(name: "journal", seeds: journal) { input in
        _ = JournalRecord.parse(line: input[...])
        // An output record's span, as readers take it from the data (no file: every span is a problem).
        if let data = try? JSON.parse(bytes: input), let span = OutputSpan(data["data"] ?? data) {
            _ = OutputReader(dir: "/nonexistent").bytes(span)
        }
        return nil
    },
    Target(name: "sse-openai", seeds: [openAIStream]) { input in
        var parser = SSEParser()
        var acc = OpenAIStreamAccumulator()
        let cut = input.count / 3
        for part in [Array(input[..<cut]), Array(input[cut...])] {
            for event in parser.feed(part) { do { try acc.handle(event) } catch { return nil } }
        }
        if let turn = try? acc.finish() { try? ResponseCaps().check(turn, host: "", provider: "openai") }
        return nil
    },
    Target(name: "sse-anthropic", seeds: [anthropicStream]) { input in
        var parser = SSEParser()
        var acc = AnthropicStreamAccumulator()
        for event in parser.feed(input) { do { try acc.handle(event) } catch { return nil } }
        _ = try? acc.finish()
        return nil
    },
    Target(name: "answers", seeds: answers) { input in
        guard let value = try? JSON.parse(bytes: input) else { return nil }
        _ = try? OpenAIProtocol.decode(response: value)
        _ = try? AnthropicProtocol.decode(response: value)
        return nil
    },
    Target(name: "profile", seeds: profiles) { input in
        _ = try? Profile.parse(text(input), name: "fuzz", file: "/fuzz/p.json")
        return nil
    },
    Target(name: "seccomp", seeds: seccomp) { input in
        _ = try? SeccompPolicy.parse(text(input), file: "/fuzz/s.json")
        return nil
    },
    Target(name: "replay", seeds: replay) { input in
        _ = try? ReplayProvider.parse(text(input))
        return nil
    },
    Target(name: "terminal", seeds: json + journal + [openAIStream]) { input in
        let line = TerminalText.line(text(input))
        if line.utf8.contains(where: { $0 < 0x20 && $0 != 0x09 }) || line.utf8.contains(0x7f) { return "a control byte survived TerminalText.line" }
        _ = TerminalText.block(bytes: input)
        return nil
    },
]

// MARK: mutation

let interesting: [UInt8] = [0, 0x0A, 0x0D, 0x1B, 0x22, 0x5C, 0x7B, 0x7D, 0x5B, 0x5D, 0x3A, 0x2C, 0x7F, 0x80, 0xC2, 0x85, 0xE2, 0xA8, 0xFF, 0x30, 0x2D]

func mutate(_ seed: [UInt8], _ all: [[UInt8]], _ g: inout Generator) -> [UInt8] {
    var b = seed
    for _ in 0..<(1 + g.below(8)) {
        switch g.below(8) {
        case 0 where !b.isEmpty: b[g.below(b.count)] ^= UInt8(1 << g.below(8))
        case 1 where !b.isEmpty: b[g.below(b.count)] = UInt8(truncatingIfNeeded: g.next())
        case 2: b.insert(interesting[g.below(interesting.count)], at: g.below(b.count + 1))
        case 3 where !b.isEmpty:
            let at = g.below(b.count), n = min(b.count - at, 1 + g.below(16))
            b.removeSubrange(at..<(at + n))
        case 4 where !b.isEmpty:  // duplicate a run (deep nesting, long strings)
            let at = g.below(b.count), n = min(b.count - at, 1 + g.below(64))
            let piece = Array(b[at..<(at + n)])
            b.insert(contentsOf: Array(repeating: piece, count: 1 + g.below(8)).flatMap { $0 }, at: at)
        case 5:  // splice with another seed
            let other = all[g.below(all.count)]
            guard !other.isEmpty else { continue }
            let from = g.below(other.count), n = min(other.count - from, 1 + g.below(128))
            b.insert(contentsOf: other[from..<(from + n)], at: g.below(b.count + 1))
        case 6 where !b.isEmpty: b.removeLast(g.below(min(b.count, 32)) + 1)  // truncation
        case 7 where !b.isEmpty: b[g.below(b.count)] = interesting[g.below(interesting.count)]
        default: break
        }
    }
    return b
}

// MARK: crash capture

nonisolated(unsafe) var currentInput: UnsafeMutableRawBufferPointer? = nil
nonisolated(unsafe) var currentLength = 0
nonisolated(unsafe) var crashPath = [CChar](repeating: 0, count: 256)

func onCrash(_ sig: Int32) {
    // Async-signal-safe only: open, write, _exit.
    let fd = open(&crashPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if fd >= 0, let buf = currentInput { _ = write(fd, buf.baseAddress, currentLength); close(fd) }
    let msg = "agentbox-fuzz: crash (signal); input written to the crash file\n"
    _ = msg.withCString { write(2, $0, strlen($0)) }
    _exit(1)
}

// MARK: main

var seconds = 10.0
var seed = UInt64(time(nil))
var only: String? = nil
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--seconds": seconds = args.popFirst().flatMap(Double.init) ?? seconds
    case "--seed": seed = args.popFirst().flatMap { UInt64($0) } ?? seed
    case "--target": only = args.popFirst()
    default:
        print("usage: agentbox-fuzz [--seconds N] [--seed N] [--target \(targets.map(\.name).joined(separator: "|"))]")
        exit(2)
    }
}
let chosen = targets.filter { only == nil || $0.name == only }
guard !chosen.isEmpty else { print("agentbox-fuzz: no target named \(only ?? "")"); exit(2) }
print("agentbox-fuzz: seed \(seed), \(Int(seconds)) s over \(chosen.count) target(s) (rerun with --seed \(seed) to repeat)")

let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 22, alignment: 8)
currentInput = scratch
for sig in [SIGSEGV, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE] { signal(sig, onCrash) }

let corpus = chosen.flatMap(\.seeds)
var g = Generator(state: seed)
var failures = 0
let perTarget = seconds / Double(chosen.count)
for target in chosen {
    var tried = 0
    let path = "fuzz-crash-\(target.name).bin"
    crashPath = Array(path.utf8CString) + [CChar](repeating: 0, count: max(0, 256 - path.utf8CString.count))
    let end = Clock.monotonic() + perTarget
    var pool = target.seeds
    while Clock.monotonic() < end {
        for _ in 0..<64 {
            let input = mutate(pool[g.below(pool.count)], corpus, &g)
            if input.count > scratch.count { continue }
            input.withUnsafeBytes { scratch.copyMemory(from: $0) }
            currentLength = input.count
            tried += 1
            if let problem = target.run(input) {
                failures += 1
                let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                if fd >= 0 { _ = input.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }; close(fd) }
                print("agentbox-fuzz: \(target.name): \(problem) (input in \(path))")
                break
            }
            // Keep a few inputs that still parse as JSON: they reach deeper code than random bytes.
            if pool.count < 256, g.below(16) == 0, (try? JSON.parse(bytes: input)) != nil { pool.append(input) }
        }
        if failures > 0 { break }
    }
    print("agentbox-fuzz: \(target.name): \(tried) inputs, \(failures > 0 ? "FAILED" : "no crash")")
    if failures > 0 { break }
}
exit(failures > 0 ? 1 : 0)
