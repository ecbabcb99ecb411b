import AgentboxCore

/// One journal record: one line of `journal.jsonl` (docs/journal.md).
///
/// `{"v":1,"seq":7,"ts":"2026-11-26T07:31:05.123Z","epoch":1,"type":"output","data":{...},"crc":"1a2b3c4d"}`
///
/// `crc` is the CRC-32C of every byte of the line before `,"crc":"`, so any damaged byte is detected.
/// Fields are never renamed or given new meanings; new record types and new `data` keys may appear.
public struct JournalRecord: Sendable {
    public static let version = 1

    public var seq: UInt64
    public var ts: String
    public var epoch: Int
    public var type: String
    public var data: JSON
    /// Byte offset of the line in the file (set by the reader).
    public var offset: Int = 0
    /// The line as stored, without the newline (set by the reader).
    public var raw: String = ""

    public init(seq: UInt64, ts: String = Clock.rfc3339(), epoch: Int, type: String, data: JSON) {
        self.seq = seq
        self.ts = ts
        self.epoch = epoch
        self.type = type
        self.data = data
    }

    /// The line to append, newline included.
    public func line() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(128)
        bytes.append(contentsOf: "{\"v\":\(JournalRecord.version),\"seq\":\(seq),\"ts\":".utf8)
        JSON.quote(ts, into: &bytes)
        bytes.append(contentsOf: ",\"epoch\":\(epoch),\"type\":".utf8)
        JSON.quote(type, into: &bytes)
        bytes.append(contentsOf: ",\"data\":".utf8)
        data.write(to: &bytes, indent: nil, level: 0)
        let crc = CRC32C.checksum(bytes)
        bytes.append(contentsOf: ",\"crc\":\"\(CRC32C.hex(crc))\"}\n".utf8)
        return bytes
    }

    /// Parses and verifies one line (without its newline). The error says what is wrong.
    public static func parse(line: ArraySlice<UInt8>) -> Result<JournalRecord, RecordProblem> {
        let suffixLength = 18  // ,"crc":"xxxxxxxx"}
        guard line.count > suffixLength else { return .failure("line too short to be a record") }
        let suffixStart = line.endIndex - suffixLength
        let suffix = line[suffixStart...]
        guard suffix.starts(with: Array(",\"crc\":\"".utf8)), suffix.last == UInt8(ascii: "}"),
              suffix[suffix.endIndex - 2] == UInt8(ascii: "\"") else {
            return .failure("no checksum at the end of the line")
        }
        let hex = String(decoding: line[(suffixStart + 8)..<(line.endIndex - 2)], as: UTF8.self)
        guard let stored = UInt32(hex, radix: 16) else { return .failure("malformed checksum") }
        let actual = CRC32C.checksum(line[line.startIndex..<suffixStart])
        guard stored == actual else { return .failure(RecordProblem("checksum mismatch (stored \(hex), computed \(CRC32C.hex(actual)))")) }
        let json: JSON
        do { json = try JSON.parse(bytes: Array(line)) } catch { return .failure(RecordProblem("not valid JSON: \(error)")) }
        guard let v = json["v"]?.intValue, v >= 1 else { return .failure("missing version") }
        guard let seq = json["seq"]?.uint64Value ?? json["seq"]?.intValue.map({ UInt64($0) }) else { return .failure("missing seq") }
        guard let ts = json["ts"]?.stringValue, let type = json["type"]?.stringValue else { return .failure("missing ts or type") }
        var record = JournalRecord(seq: seq, ts: ts, epoch: json["epoch"]?.intValue ?? 0, type: type, data: json["data"] ?? .null)
        record.raw = String(decoding: line, as: UTF8.self)
        return .success(record)
    }
}

/// Every record type agentbox writes (docs/journal.md). A record's `type` stays a string when read: a
/// journal written by a later version may hold types this one does not know (`kind` is nil for them).
public enum RecordType: String, CaseIterable, Sendable {
    case journalOpened = "journal.opened"
    case journalRecovered = "journal.recovered"
    case runStarted = "run.started"
    case sandboxReady = "sandbox.ready"
    case output
    /// Output passed through but not stored (the run's cap, or the disk's floor): bytes per stream.
    case outputDropped = "output.dropped"
    case warning
    case limit
    case confession
    case exit
    case usage
    case runEnded = "run.ended"
    /// `resume` continues the run (a new writer epoch): what it answered and the totals it continues from.
    case runResumed = "run.resumed"
    /// `export` wrote the run to a file: it continues where it is imported (`file`, `host`).
    case runExported = "run.exported"
    /// `import` registered the run here: `from` (`host`, `workspace`) and the new `workspace`.
    case runImported = "run.imported"
    // Agent runs (docs/agent.md).
    case modelRequest = "model.request"
    case modelAttempt = "model.attempt"
    case modelResponse = "model.response"
    case modelError = "model.error"
    case modelCancelled = "model.cancelled"
    case toolCall = "tool.call"
    case toolDone = "tool.done"
    case toolInterrupted = "tool.interrupted"
    case reminder
    case budget
    case contextCompacted = "context.compacted"
    /// The workspace after a step: what changed since the last checkpoint (docs/lifecycle.md).
    case checkpoint
    /// `fork` made this run from another's history up to a step, with a copy of that step's workspace.
    case runForked = "run.forked"
    // The proxy of `--network allow:` (docs/network.md).
    /// A connection through the proxy: host, port, allowed or denied and why, the address used.
    case netConnect = "net.connect"
    /// An allowed connection ended: bytes each way, seconds.
    case netClosed = "net.closed"
}

extension JournalRecord {
    /// The record's type when this version knows it.
    public var kind: RecordType? { RecordType(rawValue: type) }
}

extension JSON {
    /// Output bytes in the record itself, lossless: `{"stream":..., "text":...}` when they are UTF-8, else
    /// `{"stream":..., "b64":...}`. Output records had this form before the raw output files (OutputSpan);
    /// readers still read it (`OutputReader`), nothing writes it any more but tests and benchmarks.
    public static func output(stream: String, bytes: [UInt8]) -> JSON {
        if let text = String(validating: bytes, as: UTF8.self) {
            return .object([("stream", .string(stream)), ("text", .string(text))])
        }
        return .object([("stream", .string(stream)), ("b64", .string(Base64.encode(bytes)))])
    }

    /// The bytes of an output record's data of that older form (`OutputReader.bytes` reads both forms).
    public var outputBytes: [UInt8] {
        if let t = self["text"]?.stringValue { return Array(t.utf8) }
        if let b = self["b64"]?.stringValue { return Base64.decode(b) ?? [] }
        return []
    }
}

/// Why a journal line is not a valid record.
public struct RecordProblem: Error, CustomStringConvertible, Sendable, ExpressibleByStringLiteral, ExpressibleByStringInterpolation {
    public let description: String
    public init(stringLiteral value: String) { description = value }
    public init(_ value: String) { description = value }
}
