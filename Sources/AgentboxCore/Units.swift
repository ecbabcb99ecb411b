/// Parsing of the human units used in options and profiles: sizes (`512M`, `2G`) and durations
/// (`90s`, `30m`, `2h`, `1h30m`, `250ms`).
public enum Units {
    /// Bytes from `123`, `64K`, `512M`, `2G`, `1T` (binary multiples; an optional trailing `B`/`iB`).
    public static func parseSize(_ text: String) -> UInt64? {
        var s = Substring(text.trimmingSpaces().uppercased())
        if s.hasSuffix("IB") { s = s.dropLast(2) } else if s.hasSuffix("B") { s = s.dropLast() }
        var multiplier: UInt64 = 1
        switch s.last {
        case "K": multiplier = 1 << 10
        case "M": multiplier = 1 << 20
        case "G": multiplier = 1 << 30
        case "T": multiplier = 1 << 40
        default: break
        }
        if multiplier != 1 { s = s.dropLast() }
        guard !s.isEmpty, let value = Double(s), value.isFinite, value > 0 else { return nil }
        let bytes = value * Double(multiplier)
        guard bytes < 9.0e18, bytes >= 1 else { return nil }
        return UInt64(bytes)
    }

    /// Seconds from `90`, `90s`, `30m`, `2h`, `1h30m`, `250ms`, `1.5h`.
    public static func parseDuration(_ text: String) -> Double? {
        let s = Array(text.trimmingSpaces().lowercased())
        guard !s.isEmpty else { return nil }
        var total = 0.0, i = 0, sawPart = false
        while i < s.count {
            var number = ""
            while i < s.count, s[i].isNumber || s[i] == "." { number.append(s[i]); i += 1 }
            guard let value = Double(number), value >= 0 else { return nil }
            var unit = ""
            while i < s.count, s[i].isLetter { unit.append(s[i]); i += 1 }
            switch unit {
            case "", "s": total += value
            case "ms": total += value / 1000
            case "m": total += value * 60
            case "h": total += value * 3600
            case "d": total += value * 86400
            default: return nil
            }
            if unit.isEmpty && i < s.count { return nil }
            sawPart = true
        }
        return sawPart && total > 0 ? total : nil
    }

    /// `536870912` -> `512M`, for messages.
    public static func formatSize(_ bytes: UInt64) -> String {
        let units: [(UInt64, String)] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
        for (size, name) in units where bytes >= size {
            if bytes % size == 0 { return "\(bytes / size)\(name)" }
            let tenths = (bytes * 10 + size / 2) / size
            return "\(tenths / 10).\(tenths % 10)\(name)"
        }
        return "\(bytes)B"
    }

    /// `5400` -> `1h30m`, for messages.
    public static func formatDuration(_ seconds: Double) -> String {
        if seconds < 1 { return "\(Int((seconds * 1000).rounded()))ms" }
        if seconds < 60, seconds.rounded() != seconds { return "\(seconds)s" }
        var s = Int(seconds.rounded())
        var out = ""
        if s >= 3600 { out += "\(s / 3600)h"; s %= 3600 }
        if s >= 60 { out += "\(s / 60)m"; s %= 60 }
        if s > 0 || out.isEmpty { out += "\(s)s" }
        return out
    }
}

extension String {
    /// The string without leading and trailing whitespace (spaces, tabs, newlines).
    public func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
