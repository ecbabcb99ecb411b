import Glibc

/// A file descriptor with one owner: closed when the owner goes away, on every path (errors
/// included), unless it was given away with `release()`. Not copyable, so it cannot be closed twice.
public struct Descriptor: ~Copyable {
    public let raw: Int32

    /// Takes ownership of `raw` (-1: owns nothing).
    public init(_ raw: Int32) { self.raw = raw }

    public var isValid: Bool { raw >= 0 }

    deinit { if raw >= 0 { _ = Glibc.close(raw) } }

    /// Gives the descriptor away (to a child, to another owner) without closing it.
    public consuming func release() -> Int32 {
        let r = raw
        discard self
        return r
    }
}

/// Descriptors owned together (the read and write ends of a pipe, the mounts handed to the init).
public struct Descriptors: ~Copyable {
    public private(set) var raw: [Int32] = []

    public init() {}

    /// Takes ownership of each of `fds` that is valid.
    public init(_ fds: [Int32]) { raw = fds.filter { $0 >= 0 } }

    public mutating func append(_ fd: consuming Descriptor) { raw.append(fd.release()) }

    /// Gives them all away (to another owner) without closing them.
    public mutating func releaseAll() -> [Int32] {
        defer { raw = [] }
        return raw
    }

    /// Closes them all now.
    public mutating func closeAll() {
        for fd in raw { _ = Glibc.close(fd) }
        raw = []
    }

    deinit { for fd in raw { _ = Glibc.close(fd) } }
}
