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

    func withReadable<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        storage.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[head...])) }
    }
}
