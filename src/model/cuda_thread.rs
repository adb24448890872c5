//! The one thread that calls into tract-cuda.
//!
//! tract-cuda keeps a CUDA stream with its cuBLAS and cuDNN handles in a thread-local of every
//! thread that touches a device tensor, and their destructors `unwrap`. After a cuDNN failure
//! that destruction can fail too, and a thread-local destructor that panics aborts the process:
//! at the host's exit for its main thread, long after the failure was reported as an error. So
//! every call that may reach tract-cuda (plans, runs, device addresses, reading outputs back)
//! runs on one thread that lives as long as the process and never exits: its thread-locals are
//! never destroyed. Calls from several threads take turns there, as they take turns on the GPU.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, OnceLock};

type Job = Box<dyn FnOnce() + Send + 'static>;

thread_local! {
    static IS_CUDA_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// The CUDA thread's queue, started on first use; `None` if the system refused the thread.
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (sender, jobs) = mpsc::channel::<Job>();
            let serve = move || {
                IS_CUDA_THREAD.set(true);
                for job in jobs {
                    job();
                }
                // The sender is a static, so the loop never ends; were it to, the thread must
                // still not exit (that would run the destructors this module exists to avoid).
                loop {
                    std::thread::park();
                }
            };
            std::thread::Builder::new().name("ichseg-cuda".into()).spawn(serve).ok().map(|_| sender)
        })
        .as_ref()
}

/// Runs `f` on the CUDA thread and returns its result; a panic in `f` resumes in the caller.
/// Runs `f` in place when called from the CUDA thread itself, or when the system would not
/// start that thread (then with tract-cuda's thread-locals on the caller's thread, as tract-cuda
/// does on its own).
pub(crate) fn on_cuda_thread<'a, R: Send + 'a>(f: impl FnOnce() -> R + Send + 'a) -> R {
    let queue = match queue() {
        Some(queue) if !IS_CUDA_THREAD.get() => queue,
        _ => return f(),
    };
    let (done, result) = mpsc::sync_channel(1);
    let job: Box<dyn FnOnce() + Send + 'a> = Box::new(move || {
        let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    });
    // SAFETY: only the lifetime changes. The job borrows from this call's frame for 'a, and this
    // function returns only once the job has run (it always sends its result, panics included)
    // or has been dropped unrun (its result sender dropped with it): either way nothing it
    // borrows is used after the return.
    let job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Job>(job) };
    if queue.send(job).is_err() {
        panic!("the CUDA thread has stopped");
    }
    match result.recv() {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the CUDA thread dropped a call unrun"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_one_long_lived_thread_with_borrowed_data() {
        let caller = std::thread::current().id();
        let data = [1, 2, 3];
        let (id, sum) = on_cuda_thread(|| (std::thread::current().id(), data.iter().sum::<i32>()));
        assert_ne!(id, caller);
        assert_eq!(sum, 6);
        let again = std::thread::spawn(|| on_cuda_thread(|| std::thread::current().id())).join().ok();
        assert_eq!(again, Some(id), "every caller shares the one thread");
        assert_eq!(on_cuda_thread(|| on_cuda_thread(|| std::thread::current().id())), id, "nested calls run in place");
    }

    #[test]
    fn a_panic_comes_back_to_the_caller_and_the_thread_lives_on() {
        let caught = std::panic::catch_unwind(|| on_cuda_thread(|| panic!("inside")));
        let message = caught.err().and_then(|p| p.downcast_ref::<&str>().map(|s| s.to_string()));
        assert_eq!(message.as_deref(), Some("inside"));
        assert_eq!(on_cuda_thread(|| 7), 7);
    }
}
