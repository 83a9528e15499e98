//! The runtime event consumers run on: its threads at a lower scheduling priority (a higher
//! nice value) than the threads that serve calls, so that when the cores are short, a call a
//! caller is waiting on (an authorisation and its 100 ms budget) runs before an event that can
//! wait on the durable bus. With cores to spare the priority changes nothing: both run at once.
//!
//! One runtime per process, made on first use and never dropped; its threads (workers and
//! blocking pool alike) run `STERLING_CONSUMER_NICE` steps of nice below the thread that made
//! it, as the first service of the process read the variable. At 0 consumers run on the
//! runtime of the service that starts them, as every other task does.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;
use tokio::task::{AbortHandle, JoinHandle};

/// The consumers' runtime.
struct Background {
    runtime: Runtime,
}

static BACKGROUND: OnceLock<Option<Background>> = OnceLock::new();

/// Makes the consumers' runtime, its threads `nice` steps below the calling thread (at most
/// once per process; later calls keep the first). A nice value of 0, or a runtime that cannot
/// be made, leaves consumers on the caller's runtime.
pub fn init(nice: i32) {
    BACKGROUND.get_or_init(|| {
        if nice == 0 {
            return None;
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Set as a value, not an increment: a thread the runtime starts from one of its own
        // inherits the lowered value already.
        let lowered = (own_nice() + nice).min(19);
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sterling-consumer")
            .on_thread_start(move || set_nice(lowered))
            .enable_all()
            .build();
        match built {
            Ok(runtime) => Some(Background { runtime }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the consumers' runtime; consumers share the serving runtime");
                None
            }
        }
    });
}

/// Runs `task` on the consumers' runtime when there is one, else on the current runtime. The
/// handle is the current runtime's: aborting it, or that runtime shutting down (a test's,
/// say), aborts the task as it would a task of its own.
pub fn spawn<F>(task: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let Some(Some(background)) = BACKGROUND.get() else {
        return tokio::spawn(task);
    };
    let inner = background.runtime.spawn(task);
    let guard = AbortOnDrop(inner.abort_handle());
    tokio::spawn(async move {
        let _guard = guard;
        let _ = inner.await;
    })
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The calling thread's nice value (Linux: each thread has its own; 0 elsewhere).
fn own_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: errno is thread-local; getpriority reads the calling thread's value, and -1
        // is an error only if it set errno.
        unsafe {
            *libc::__errno_location() = 0;
            let value = libc::getpriority(libc::PRIO_PROCESS, 0);
            if value == -1 && *libc::__errno_location() != 0 {
                return 0;
            }
            value
        }
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Sets the calling thread's nice value (lowering its priority is always allowed).
fn set_nice(value: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a plain system call on the calling thread (`who` 0 is the caller).
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, value) } != 0 {
            tracing::debug!(value, "cannot lower a consumer thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// Sets a flag when dropped.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn consumers_run_lowered_and_end_with_the_runtime_that_started_them() {
        let base = own_nice();
        init(4);
        let caller = tokio::runtime::Runtime::new().unwrap();
        let (nice_tx, nice_rx) = std::sync::mpsc::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Dropped(dropped.clone());
        caller.block_on(async {
            spawn(async move {
                let _ = nice_tx.send((own_nice(), std::thread::current().name().map(String::from)));
                let _flag = flag;
                std::future::pending::<()>().await
            });
        });
        let (nice, thread) = nice_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(thread.as_deref(), Some("sterling-consumer"));
        if cfg!(target_os = "linux") {
            assert_eq!(nice, (base + 4).min(19));
        }
        assert!(!dropped.load(Ordering::SeqCst), "still running");
        drop(caller);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dropped.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "not aborted with its runtime"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
