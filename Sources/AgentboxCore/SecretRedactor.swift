/// Finds a secret (the model's API key) in a tool result before the supervisor journals it or sends it
/// to the model (docs/security.md, "Agent runs"). It looks for:
///
/// - the secret's bytes, and its common encodings: hex (lower and upper case), base64 as it appears
///   wherever the secret starts in the encoded data (three alignments; standard and URL alphabets; the
///   characters that depend only on the secret), and percent-encoding when that differs from the secret;
///   each also when line breaks split it (`base64` wraps its output at 76 columns, `fold`...);
/// - what is left of any of them at an edge of a cut agentbox made (`ToolText.cutEdges`): the end of a
///   kept head that is the first `minimumPartial` or more characters of a form, and the start of a kept
///   tail that is its last ones. Without this, a secret straddling the output cap's cut would leak its
///   first or last characters.
///
/// It is a safety net for accidents (a `.env` in the workspace read by a tool), not a wall: a hostile
/// sandbox that can read the secret can also encode it some other way.
///
/// Each form is searched with Knuth-Morris-Pratt, so the work is linear in the text (times the number of
/// forms, at most eleven), whatever the text holds.
public struct SecretRedactor: Sendable {
    /// The shortest part of a form at a cut's edge that is redacted.
    public static let minimumPartial = 8

    /// The byte strings searched for.
    public let forms: [[UInt8]]
    let failures: [[Int]]

    /// Nil when the secret is shorter than `minimumPartial` bytes (too short to find without noise).
    public init?(secret: String) {
        let key = Array(secret.utf8)
        guard key.count >= SecretRedactor.minimumPartial else { return nil }
        var forms: [[UInt8]] = [key]
        let hex = Array("0123456789abcdef".utf8), upper = Array("0123456789ABCDEF".utf8)
        forms.append(key.flatMap { [hex[Int($0 >> 4)], hex[Int($0 & 15)]] })
        forms.append(key.flatMap { [upper[Int($0 >> 4)], upper[Int($0 & 15)]] })
        for alignment in 0..<3 {
            let standard = SecretRedactor.base64(key, alignment: alignment)
            forms.append(standard)
            forms.append(standard.map { $0 == UInt8(ascii: "+") ? UInt8(ascii: "-") : $0 == UInt8(ascii: "/") ? UInt8(ascii: "_") : $0 })
        }
        forms.append(key.flatMap { b -> [UInt8] in
            let unreserved = (0x30...0x39).contains(b) || (0x41...0x5A).contains(b) || (0x61...0x7A).contains(b)
                || b == UInt8(ascii: "-") || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "~")
            return unreserved ? [b] : [UInt8(ascii: "%"), upper[Int(b >> 4)], upper[Int(b & 15)]]
        })
        var unique: [[UInt8]] = []
        for f in forms where f.count >= SecretRedactor.minimumPartial && !unique.contains(f) { unique.append(f) }
        self.forms = unique
        failures = unique.map(SecretRedactor.failure)
    }

    /// The base64 characters that encode only bytes of `bytes` when `bytes` starts `alignment` bytes
    /// after a 3-byte group boundary of the encoded data: they appear in any such encoding, whatever
    /// comes before and after.
    static func base64(_ bytes: [UInt8], alignment: Int) -> [UInt8] {
        let padded = [UInt8](repeating: 0, count: alignment) + bytes + [0, 0]
        let encoded = Array(Base64.encode(padded).utf8)
        let firstBit = 8 * alignment, endBit = 8 * (alignment + bytes.count)
        var out: [UInt8] = []
        for (i, c) in encoded.enumerated() where 6 * i >= firstBit && 6 * i + 6 <= endBit { out.append(c) }
        return out
    }

    /// The Knuth-Morris-Pratt failure function: f[i] is the length of the longest proper prefix of
    /// `p[...i]` that is also its suffix.
    static func failure(_ p: [UInt8]) -> [Int] {
        var f = [Int](repeating: 0, count: p.count)
        var k = 0
        for i in 1..<max(1, p.count) {
            while k > 0 && p[i] != p[k] { k = f[k - 1] }
            if p[i] == p[k] { k += 1 }
            f[i] = k
        }
        return f
    }

    /// Replaces every occurrence found by `replacement`; returns the text and how many places were
    /// replaced (overlapping or touching finds count once). The text is returned unchanged when nothing was found.
    public func redact(_ text: String, replacement: String) -> (text: String, count: Int) {
        var text = text
        text.makeContiguousUTF8()
        let result = text.utf8.withContiguousStorageIfAvailable { buf -> (String, Int)? in
            let ranges = find(in: buf)
            guard !ranges.isEmpty else { return nil }
            var out: [UInt8] = []
            out.reserveCapacity(buf.count)
            var at = 0
            for r in ranges {
                out.append(contentsOf: UnsafeBufferPointer(rebasing: buf[at..<r.lowerBound]))
                out.append(contentsOf: replacement.utf8)
                at = r.upperBound
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: buf[at...]))
            return (String(decoding: out, as: UTF8.self), ranges.count)
        }
        return (result ?? nil) ?? (text, 0)
    }

    /// The byte ranges to replace, sorted and merged.
    public func find(in text: UnsafeBufferPointer<UInt8>) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        let (heads, tails) = ToolText.cutEdges(text)
        for (form, fail) in zip(forms, failures) {
            matches(form, fail, in: text, into: &ranges)
            for end in heads { if let r = partialBefore(end, form, in: text) { ranges.append(r) } }
            for start in tails { if let r = partialAfter(start, form, in: text) { ranges.append(r) } }
        }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        var merged: [Range<Int>] = []
        for r in ranges {
            if let last = merged.last, r.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        return merged
    }

    /// Every occurrence of `p` in `text`, line breaks (CR, LF) in the text skipped.
    func matches(_ p: [UInt8], _ fail: [Int], in text: UnsafeBufferPointer<UInt8>, into ranges: inout [Range<Int>]) {
        let m = p.count
        var ring = [Int](repeating: 0, count: m)  // offsets of the last m bytes matched (line breaks skipped)
        var seen = 0
        var q = 0
        for i in 0..<text.count {
            let c = text[i]
            if c == 0x0A || c == 0x0D { continue }
            ring[seen % m] = i
            seen += 1
            while q > 0 && p[q] != c { q = fail[q - 1] }
            if p[q] == c { q += 1 }
            if q == m {
                ranges.append(ring[(seen - m) % m]..<(i + 1))
                q = fail[m - 1]
            }
        }
    }

    /// The longest start of `p` (at least `minimumPartial` bytes, shorter than `p`) that ends at `end`.
    func partialBefore(_ end: Int, _ p: [UInt8], in text: UnsafeBufferPointer<UInt8>) -> Range<Int>? {
        var length = min(p.count - 1, end)
        while length >= SecretRedactor.minimumPartial {
            if text[(end - length)..<end].elementsEqual(p[..<length]) { return (end - length)..<end }
            length -= 1
        }
        return nil
    }

    /// The longest end of `p` (at least `minimumPartial` bytes, shorter than `p`) that starts at `start`.
    func partialAfter(_ start: Int, _ p: [UInt8], in text: UnsafeBufferPointer<UInt8>) -> Range<Int>? {
        var length = min(p.count - 1, text.count - start)
        while length >= SecretRedactor.minimumPartial {
            if text[start..<(start + length)].elementsEqual(p[(p.count - length)...]) { return start..<(start + length) }
            length -= 1
        }
        return nil
    }
}
