// Micro-benchmarks for `make bench`: journal append/verify throughput, the output path. Prints one line per metric.
import AgentboxCore
import AgentboxJournal
import AgentboxModels
import Glibc

func dir(_ tag: String) -> String {
    let d = "/var/tmp/agentbox-bench-\(tag)-\(getpid())"
    mkdir(d, 0o755)
    return d
}

func cleanup(_ d: String) {
    unlink(d + "/journal.jsonl")
    unlink(d + "/lock")
    rmdir(d)
}

let chunk = Array(String(repeating: "compiling module 42 of 97: ok\n", count: 140).utf8)  // ~4 KiB of text

// 1. Batched records of 4 KiB of text each (group commit; output records held their text like this
// before the raw files): the general encoder's throughput, and verify's.
do {
    let d = dir("batched")
    let w = try JournalWriter.create(dir: d)
    let n = 50_000
    let t0 = Clock.monotonic()
    for _ in 0..<n { try w.append(RecordType.output, JSON.output(stream: "stdout", bytes: chunk), critical: false) }
    try w.finish()
    let dt = Clock.monotonic() - t0
    print("journal append, batched records of 4 KiB text each (general encoder): \(Int(Double(n) / dt)) records/s, \(Int(Double(n * chunk.count) / dt / 1e6)) MB/s of output")
    let t1 = Clock.monotonic()
    let bytes = try FileIO.read(w.path, limit: 1 << 40)
    let readTime = Clock.monotonic() - t1
    let scan = JournalReader.scan(bytes: bytes)
    let vt = Clock.monotonic() - t1
    print("  (of which reading the file: \(Int(readTime * 1000)) ms)")
    print("journal verify (read + checksum + parse every record): \(Int(Double(scan.fileSize) / vt / 1e6)) MB/s (\(scan.records.count) records, \(scan.fileSize / 1_000_000) MB)")
    cleanup(d)
} catch { print("batched: \(error)") }

// 2. Durable (critical) records: each fdatasync'ed before append returns.
do {
    let d = dir("durable")
    let w = try JournalWriter.create(dir: d)
    let n = 500
    let t0 = Clock.monotonic()
    for i in 0..<n { try w.append(RecordType.limit, ["kind": "oom", "n": .number(Double(i))], critical: true) }
    let dt = Clock.monotonic() - t0
    print("journal append, durable record (fdatasync each): \(String(format1(dt / Double(n) * 1000))) ms per record, \(Int(Double(n) / dt)) records/s")
    cleanup(d)
} catch { print("durable: \(error)") }

func format1(_ v: Double) -> String { String((v * 1000).rounded() / 1000) }

// 3. The journaled-output hot path (as OutputGatherer does it): each 64 KiB chunk appended to the raw
// stdout file and checksummed incrementally, one record per 256 KiB, the file synced before the records
// are written (page cache, then one fdatasync at the end); and CRC-32C alone.
do {
    let big = Array(String(repeating: "building target 17 of 240: compiler output line\n", count: 1366).utf8)  // ~64 KiB
    let d = dir("output")
    let w = try JournalWriter.create(dir: d)
    let file = OutputFile(dir: d, stream: .stdout)
    w.beforeWrite = { () throws(AgentboxError) in try file.sync() }
    let n = 1600
    let t0 = Clock.monotonic()
    var span = OutputSpan(stream: .stdout, offset: 0, length: 0, crc32c: 0)
    for _ in 0..<n {
        try file.append(big[...])
        span.length += UInt64(big.count)
        span.crc32c = CRC32C.checksum(big, seed: span.crc32c)
        if span.length >= 256 << 10 {
            try w.append(RecordType.output, span.json, critical: false)
            span = OutputSpan(stream: .stdout, offset: file.size, length: 0, crc32c: 0)
        }
    }
    let written = Clock.monotonic() - t0
    try w.finish()
    let dt = Clock.monotonic() - t0
    print("journal output to the raw file (64 KiB chunks, 256 KiB records): \(Int(Double(n * big.count) / written / 1e6)) MB/s to the page cache, \(Int(Double(n * big.count) / dt / 1e6)) MB/s with the final fdatasync (\(n * big.count / 1_000_000) MB)")
    let t1 = Clock.monotonic()
    var c: UInt32 = 0
    for _ in 0..<n { c ^= CRC32C.checksum(big) }
    let ct = Clock.monotonic() - t1
    print("CRC-32C: \(Int(Double(n * big.count) / ct / 1e6)) MB/s (\(c & 1))")
    unlink(d + "/stdout")
    cleanup(d)
} catch { print("output: \(error)") }

// 4. The SSE parser on an Anthropic-style stream (target: at least 200 MB/s).
do {
    var one = ""
    for i in 0..<200 {
        one += "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"token \(i) of a longer streamed answer\"}}\n\n"
    }
    let bytes = Array(String(repeating: one, count: 200).utf8)
    var parser = SSEParser()
    var events = 0
    let t0 = Clock.monotonic()
    var i = 0
    while i < bytes.count {  // arrives in 16 KiB reads, as from a socket
        events += parser.feed(Array(bytes[i..<min(bytes.count, i + 16384)])).count
        i += 16384
    }
    let dt = Clock.monotonic() - t0
    print("SSE parser: \(Int(Double(bytes.count) / dt / 1e6)) MB/s (\(events) events, \(bytes.count / 1_000_000) MB)")
}
