/// A bounded FIFO of bytes with cheap consumption from the front (compacts lazily).
struct ByteQueue {
    private var storage: [UInt8] = []
    private var head = 0
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    var count: Int { storage.count - head }
    var isEmpty: Bool { count == 0 }
    var space: Int { max(0, capacity - count) }

    mutating func append(_ p: UnsafeRawBufferPointer) {
        if head > 0 && head >= storage.count / 2 {
            storage.removeFirst(head)
            head = 0
        }
        storage.append(contentsOf: p)
    }

    mutating func consume(_ n: Int) {
        head += n
        if head == storage.count { storage.removeAll(keepingCapacity: true); head = 0 }
    }

    func withReadable<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        let h = head
        let r: Result<R, E> = storage.withUnsafeBytes { all in
            Result { () throws(E) -> R in try body(UnsafeRawBufferPointer(rebasing: all[h...])) }
        }
        return try r.get()
    }
}

extension Array where Element == UInt8 {
    /// `withUnsafeMutableBytes` for a body with a typed error.
    mutating func withMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        let r: Result<R, E> = withUnsafeMutableBytes { p in Result { () throws(E) -> R in try body(p) } }
        return try r.get()
    }
}
