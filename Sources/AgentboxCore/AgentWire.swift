/// Agent messages between the in-sandbox loop and the supervisor (docs/agent.md): JSON documents split
/// into SOCK_SEQPACKET packets of at most `packetPayload` bytes. Tag `agentMore` says more packets of
/// the same message follow; `agentLast` ends it. Both ends are the same build.
public enum AgentWire {
    public static let packetPayload = 32 << 10
    /// A message larger than this is a protocol violation (the sandbox is not trusted).
    public static let maxMessage = 16 << 20

    /// The packets of one message.
    public static func packets(_ message: JSON) -> [[UInt8]] { packets(encoded: message.serializedBytes) }

    /// The packets of one message already encoded (`JSON.serializedBytes`).
    public static func packets(encoded bytes: [UInt8]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var offset = 0
        repeat {
            let end = min(bytes.count, offset + packetPayload)
            var p: [UInt8] = [end == bytes.count ? WireTag.agentLast.rawValue : WireTag.agentMore.rawValue]
            p.append(contentsOf: bytes[offset..<end])
            out.append(p)
            offset = end
        } while offset < bytes.count
        return out
    }

    /// Reassembles messages from packets; `add` returns a message when its last packet arrives.
    public struct Assembler {
        var buffer: [UInt8] = []
        public init() {}

        public mutating func add(_ packet: ArraySlice<UInt8>) throws(WireError) -> JSON? {
            guard let tag = packet.first, tag == WireTag.agentMore.rawValue || tag == WireTag.agentLast.rawValue else {
                throw WireError(description: "not an agent message packet")
            }
            guard buffer.count + packet.count - 1 <= AgentWire.maxMessage else {
                buffer = []
                throw WireError(description: "agent message larger than \(AgentWire.maxMessage >> 20) MiB")
            }
            buffer.append(contentsOf: packet.dropFirst())
            guard tag == WireTag.agentLast.rawValue else { return nil }
            defer { buffer = [] }
            do { return try JSON.parse(bytes: buffer) } catch {
                throw WireError(description: "agent message is not valid JSON: \(error)")
            }
        }
    }
}

/// Text helpers of the built-in tools, shared by the init (which runs them) and the tests.
public enum ToolText {
    /// At most `maxBytes` of `text` (cut on a character boundary) and a note of how much was cut.
    public static func clip(_ text: String, maxBytes: Int) -> String {
        let utf8 = Array(text.utf8)
        guard utf8.count > maxBytes else { return text }
        var end = maxBytes
        while end > 0 && utf8[end] & 0xC0 == 0x80 { end -= 1 }
        return String(decoding: utf8[..<end], as: UTF8.self) + " [... \(utf8.count - end) bytes cut by agentbox]"
    }

    /// Keeps the first and last `limit / 2` bytes of `bytes` with a marker between them saying how many
    /// bytes were cut; cuts fall on UTF-8 character boundaries. Returns the text and whether it was cut.
    public static func headTail(_ bytes: [UInt8], limit: Int) -> (String, Bool) {
        if bytes.count <= limit { return (String(decoding: bytes, as: UTF8.self), false) }
        return (join(head: Array(bytes[..<(limit / 2)]), tail: Array(bytes[(bytes.count - limit / 2)...]),
                     cut: bytes.count - 2 * (limit / 2), limit: limit), true)
    }

    /// The kept head and tail of a larger output, `cut` bytes having been dropped between them; the
    /// marker between them says how many bytes were dropped in all.
    public static func join(head: [UInt8], tail: [UInt8], cut: Int, limit: Int) -> String {
        join(head: head, tail: tail, cut: cut) { "[... \($0)\(cutMarkerMiddle)output kept to the first and last \(limit / 2) bytes ...]" }
    }

    /// The words in the marker line `join(head:tail:cut:limit:)` puts between head and tail.
    static let cutMarkerMiddle = " bytes cut by agentbox: "
    /// What starts the line `lines` adds when it shows part of a file.
    static let linesNote = "\n[agentbox: showing lines "

    /// Where agentbox cut a tool's output in `text`: the end of each kept head (just before a cut marker
    /// line, or before the note of a `read_file` that stopped early) and the start of each kept tail (just
    /// after a marker line). A secret the cut went through is left in part at these edges.
    public static func cutEdges(_ text: UnsafeBufferPointer<UInt8>) -> (headEnds: [Int], tailStarts: [Int]) {
        let n = text.count
        var heads: [Int] = [], tails: [Int] = []
        func find(_ needle: [UInt8], from: Int) -> Int? {
            guard let first = needle.first, n >= needle.count else { return nil }
            var i = from
            while i <= n - needle.count {
                if text[i] == first && text[i..<i + needle.count].elementsEqual(needle) { return i }
                i += 1
            }
            return nil
        }
        let middle = Array(cutMarkerMiddle.utf8), opening = Array("\n[... ".utf8), closing = Array(" ...]".utf8)
        var from = 0
        while let m = find(middle, from: from) {
            // The marker line: "\n[... N" + middle + "... ...]\n", with only digits between "[... " and
            // `middle`. One marker per line: the search goes on after this line (linear in all).
            guard let nl = text[m...].firstIndex(of: 0x0A) else { break }
            from = nl + 1
            var start = m
            while start > 0 && (0x30...0x39).contains(text[start - 1]) { start -= 1 }
            guard start < m, start >= opening.count, text[(start - opening.count)..<start].elementsEqual(opening),
                  text[(nl - closing.count)..<nl].elementsEqual(closing) else { continue }
            heads.append(start - opening.count)
            tails.append(nl + 1)
        }
        var at = 0
        let note = Array(linesNote.utf8)
        while let i = find(note, from: at) {
            heads.append(i)
            at = i + note.count
        }
        return (heads, tails)
    }

    public static func join(head: [UInt8], tail: [UInt8], cut: Int, marker: (Int) -> String) -> String {
        // A character split by the cut is dropped whole: continuation bytes at the start of the tail,
        // and an incomplete sequence at the end of the head.
        var headEnd = head.count
        var back = 0
        while headEnd > 0 && back < 4 && head[headEnd - 1] & 0xC0 == 0x80 { headEnd -= 1; back += 1 }
        if headEnd > 0 && head[headEnd - 1] >= 0xC0 {
            let lead = head[headEnd - 1]
            let need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2
            if back + 1 < need { headEnd -= 1 } else { headEnd += back }
        } else {
            headEnd += back
        }
        var tailStart = 0
        while tailStart < tail.count && tailStart < 3 && tail[tailStart] & 0xC0 == 0x80 { tailStart += 1 }
        let dropped = cut + (head.count - headEnd) + tailStart
        return String(decoding: head[..<headEnd], as: UTF8.self) + "\n" + marker(dropped) + "\n"
            + String(decoding: tail[tailStart...], as: UTF8.self)
    }

    public enum EditError: Error, Equatable {
        case emptyOldText
        case notFound
        case notUnique(Int)
    }

    /// Replaces the one occurrence of `old` in `content` by `new`.
    public static func replaceUnique(_ content: [UInt8], old: [UInt8], new: [UInt8]) -> Result<[UInt8], EditError> {
        guard !old.isEmpty else { return .failure(.emptyOldText) }
        var found: [Int] = []
        if content.count >= old.count {
            let first = old[0]
            var i = 0
            let last = content.count - old.count
            while i <= last {
                if content[i] == first && content[i..<i + old.count].elementsEqual(old) {
                    found.append(i)
                    i += old.count  // occurrences do not overlap
                } else {
                    i += 1
                }
            }
        }
        guard let at = found.first else { return .failure(.notFound) }
        guard found.count == 1 else { return .failure(.notUnique(found.count)) }
        var out = Array(content[..<at])
        out.append(contentsOf: new)
        out.append(contentsOf: content[(at + old.count)...])
        return .success(out)
    }

    /// Lines `offset...` (1-based) of `content`, at most `limit` lines and `maxBytes` bytes, with a note
    /// for the model when the file goes on.
    public static func lines(_ content: [UInt8], offset: Int, limit: Int, maxBytes: Int) -> String {
        var lineStarts: [Int] = [0]
        for (i, b) in content.enumerated() where b == UInt8(ascii: "\n") && i + 1 < content.count { lineStarts.append(i + 1) }
        let total = content.isEmpty ? 0 : lineStarts.count
        let first = max(1, offset)
        if total == 0 { return "" }
        if first > total { return "[agentbox: the file has \(total) lines; offset \(first) is past the end]" }
        var end = min(total, first - 1 + max(1, limit))
        var startByte = lineStarts[first - 1]
        var endByte = end < total ? lineStarts[end] : content.count
        var cutByBytes = false
        if endByte - startByte > maxBytes {
            // Cut at the last line that fits; a single huge line is cut at maxBytes.
            var lastLine = first
            while lastLine < end && lineStarts[lastLine] - startByte <= maxBytes { lastLine += 1 }
            end = max(first, lastLine - 1)
            endByte = end < total ? lineStarts[end] : content.count
            if endByte - startByte > maxBytes {
                endByte = startByte + maxBytes
                while endByte > startByte && content[endByte] & 0xC0 == 0x80 { endByte -= 1 }
            }
            cutByBytes = true
        }
        if startByte > endByte { startByte = endByte }
        var text = String(decoding: content[startByte..<endByte], as: UTF8.self)
        if end < total || cutByBytes {
            if !text.hasSuffix("\n") { text += "\n" }
            text += linesNote.dropFirst() + "\(first)-\(end) of \(total); call read_file with offset \(end + 1) for more]"
        }
        return text
    }
}
