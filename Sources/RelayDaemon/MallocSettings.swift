import CMalloc

/// glibc malloc settings for a long-running daemon whose queue index reaches tens of MiB.
///
/// By default glibc raises its mmap threshold (up to 32 MiB) each time a large mmapped block is
/// freed, and its trim threshold with it (up to 64 MiB). After that, large blocks — the queue
/// index's arrays as they grow, the start-up scan's list of 1,000,000 queue ids — come from a
/// thread's arena, and what is freed there stays resident for good: `malloc_trim` gives back
/// free chunks in the bins but not an arena's free top. Measured with 1,000,000 deferred
/// messages, that was about 40 MiB resident and unused. With fixed thresholds every block of
/// 256 KiB or more is its own mapping, returned to the system when freed.
enum MallocSettings {
    /// Blocks of at least this many bytes are mapped on their own (`M_MMAP_THRESHOLD`).
    static let mmapThreshold: Int32 = 256 * 1024
    /// An arena's free top above this many bytes is returned (`M_TRIM_THRESHOLD`).
    static let trimThreshold: Int32 = 1024 * 1024

    /// Applies the settings; call before threads start. Failures (a libc without `mallopt`
    /// parameters) leave glibc's defaults, which cost memory, not correctness.
    static func apply() {
        _ = mallopt(M_MMAP_THRESHOLD, mmapThreshold)
        _ = mallopt(M_TRIM_THRESHOLD, trimThreshold)
    }
}
