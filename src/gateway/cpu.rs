//! CPU-heavy work off the async worker threads: local token counts and the parsing of very
//! large request bodies run on tokio's blocking pool, at most `server.cpu_threads` at a time, so
//! that however much of it clients cause, the workers keep answering everything else.

use tokio::sync::Semaphore;

/// Bodies at least this large are parsed on the pool rather than on a worker.
pub const LARGE_BODY_BYTES: usize = 256 * 1024;
/// Work on at most this many bytes runs where it is asked for: counting 2 KiB takes a few
/// microseconds (about a millisecond for the worst text there is), less than a hop to the pool.
pub const INLINE_BYTES: usize = 2 * 1024;

/// The bounded pool.
pub struct Cpu {
    slots: Semaphore,
}

impl Cpu {
    /// A pool running at most `threads` jobs at once (0: half the cores, at least one).
    pub fn new(threads: usize) -> Cpu {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .max(1)
        } else {
            threads
        };
        Cpu {
            slots: Semaphore::new(threads),
        }
    }

    /// Runs `job`, which reads `bytes` of input: at once if that is at most [`INLINE_BYTES`],
    /// else on the pool (see [`Cpu::run`]).
    pub async fn run_sized<T: Send + 'static>(
        &self,
        bytes: usize,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if bytes <= INLINE_BYTES {
            Some(job())
        } else {
            self.run(job).await
        }
    }

    /// Runs `job` on the pool when a slot is free and waits for its result (`None` if the job
    /// panicked: the caller falls back to something cheap rather than losing its request).
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self.slots.acquire().await;
        tokio::task::spawn_blocking(job).await.ok()
    }
}
