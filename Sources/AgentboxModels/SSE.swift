/// One server-sent event: the `event:` name (nil when absent, "message" by the spec's default) and
/// its `data:` lines joined with "\n".
public struct SSEEvent: Equatable, Sendable {
    public var event: String?
    public var data: String
    public init(event: String? = nil, data: String) {
        self.event = event
        self.data = data
    }
}

/// An incremental SSE parser (WHATWG "event stream" rules): feed it bytes as they arrive, in any
/// split; it returns the events completed so far. Handles `\r\n`, `\r` and `\n` line ends, `:`
/// comments (keep-alives), multi-line `data:`, `event:` names, and ignores `id:`/`retry:` and unknown
/// fields. Works on bytes, so a UTF-8 character split across reads is never damaged.
public struct SSEParser: Sendable {
    var line: [UInt8] = []
    var data: [UInt8] = []
    var hasData = false
    var eventName: String? = nil
    var lastWasCR = false

    public init() {}

    public mutating func feed(_ bytes: [UInt8]) -> [SSEEvent] {
        var events: [SSEEvent] = []
        bytes.withUnsafeBufferPointer { buf in
            var start = 0
            var i = 0
            while i < buf.count {
                let b = buf[i]
                if b > 0x0D {  // the common case: not a line end
                    lastWasCR = false
                    i += 1
                    continue
                }
                if b == 0x0A || b == 0x0D {
                    if b == 0x0A && lastWasCR && start == i {
                        // The \n of a \r\n pair: the line already ended at the \r.
                        lastWasCR = false
                        i += 1
                        start = i
                        continue
                    }
                    line.append(contentsOf: UnsafeBufferPointer(rebasing: buf[start..<i]))
                    if let e = endLine() { events.append(e) }
                    lastWasCR = b == 0x0D
                    i += 1
                    start = i
                    continue
                }
                lastWasCR = false
                i += 1
            }
            if start < buf.count { line.append(contentsOf: UnsafeBufferPointer(rebasing: buf[start..<buf.count])) }
        }
        return events
    }

    /// At the end of the stream: the event whose blank line never came (the body ended after its last
    /// line, with or without a line end) is dispatched, as the official OpenAI and Anthropic SDKs do
    /// (the WHATWG rules would drop it). The parser is then empty, ready for another stream.
    public mutating func finish() -> [SSEEvent] {
        if !line.isEmpty { _ = endLine() }  // a last line without its line end
        let last = endLine()  // the blank line that never came
        lastWasCR = false
        return last.map { [$0] } ?? []
    }

    mutating func endLine() -> SSEEvent? {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty {
            // Blank line: dispatch.
            guard hasData else { eventName = nil; return nil }
            let event = SSEEvent(event: eventName, data: String(decoding: data, as: UTF8.self))
            data.removeAll(keepingCapacity: true)
            hasData = false
            eventName = nil
            return event
        }
        if line[0] == UInt8(ascii: ":") { return nil }  // comment / keep-alive
        var field: ArraySlice<UInt8>
        var value: ArraySlice<UInt8>
        if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            field = line[..<colon]
            value = line[(colon + 1)...]
            if value.first == 0x20 { value = value.dropFirst() }
        } else {
            field = line[...]
            value = []
        }
        if field.elementsEqual("data".utf8) {
            if hasData { data.append(0x0A) }
            data.append(contentsOf: value)
            hasData = true
        } else if field.elementsEqual("event".utf8) {
            eventName = String(decoding: value, as: UTF8.self)
        }
        // id, retry and unknown fields do not matter here.
        return nil
    }
}
