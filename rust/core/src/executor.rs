//! The work-stealing executor: a deque per worker, a global injector, and
//! idle workers stealing from the others. A task spawned from a worker goes to
//! that worker's own deque (fan-out stays local and cache-warm); a task from
//! anywhere else goes to the injector.
//!
//! A worker that must wait for tasks it spawned (a map waiting for its items)
//! calls [`Executor::help_until`] and runs queued tasks meanwhile instead of
//! blocking, so a pool of N workers cannot deadlock on nested fan-out.
//!
//! The executor knows nothing of Python: `run_worker` wraps each worker
//! thread's whole life, which is where the bindings give the thread its Python
//! thread state once, instead of once per task.

use parking_lot::{Condvar, Mutex};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal, Stealer, Worker};

use crate::error::Result;

pub type Task = Box<dyn FnOnce() + Send + 'static>;

/// Wraps a worker thread's life: must call `body` once and return when it does.
pub type WorkerWrapper = Arc<dyn Fn(&mut (dyn FnMut() + Send)) + Send + Sync>;

/// How long an idle worker sleeps before looking again, even unwoken (a
/// safety net only: every spawn wakes a sleeper).
const IDLE_NAP: Duration = Duration::from_millis(500);

struct Shared {
    id: usize,
    injector: Injector<Task>,
    stealers: Vec<Stealer<Task>>,
    /// Tasks spawned and not yet finished.
    unfinished: AtomicUsize,
    shutdown: AtomicBool,
    /// Counts who sleeps: a spawn wakes one idle worker, never all of them,
    /// and a finished task signals only when someone waits for one.
    sleepers: Mutex<Sleepers>,
    /// Idle workers wait here for work.
    work_ready: Condvar,
    /// Helpers and `shutdown` wait here for tasks to finish.
    task_done: Condvar,
}

#[derive(Default)]
struct Sleepers {
    idle: usize,
    waiting_on_tasks: usize,
}

thread_local! {
    /// The deque of the executor worker running on this thread, if any.
    static LOCAL: RefCell<Option<(usize, Worker<Task>)>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

pub struct Executor {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Executor {
    /// Starts `workers` threads (at least one), each wrapped by `run_worker`.
    pub fn new(workers: usize, run_worker: WorkerWrapper) -> Result<Executor> {
        let workers = workers.max(1);
        let deques: Vec<Worker<Task>> = (0..workers).map(|_| Worker::new_lifo()).collect();
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            injector: Injector::new(),
            stealers: deques.iter().map(Worker::stealer).collect(),
            unfinished: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleepers: Mutex::new(Sleepers::default()),
            work_ready: Condvar::new(),
            task_done: Condvar::new(),
        });
        let mut threads = Vec::with_capacity(workers);
        for (index, deque) in deques.into_iter().enumerate() {
            let shared = shared.clone();
            let run_worker = run_worker.clone();
            let thread = std::thread::Builder::new()
                .name(format!("perdure-worker-{index}"))
                .spawn(move || {
                    LOCAL.with(|local| *local.borrow_mut() = Some((shared.id, deque)));
                    run_worker(&mut || shared.work());
                    LOCAL.with(|local| local.borrow_mut().take());
                })?;
            threads.push(thread);
        }
        Ok(Executor {
            shared,
            threads: Mutex::new(threads),
        })
    }

    pub fn workers(&self) -> usize {
        self.shared.stealers.len()
    }

    /// Tasks spawned and not finished yet (queued or running).
    pub fn unfinished(&self) -> usize {
        self.shared.unfinished.load(Ordering::SeqCst)
    }

    pub fn spawn(&self, task: Task) {
        self.shared.unfinished.fetch_add(1, Ordering::SeqCst);
        let task = LOCAL.with(|local| match &*local.borrow() {
            Some((id, deque)) if *id == self.shared.id => {
                deque.push(task);
                None
            }
            _ => Some(task),
        });
        if let Some(task) = task {
            self.shared.injector.push(task);
        }
        self.shared.wake_one();
    }

    /// Runs queued tasks on this thread until `done()` holds. On a thread that
    /// is not one of this executor's workers it only waits.
    pub fn help_until(&self, done: &dyn Fn() -> bool) {
        let on_worker = LOCAL.with(|local| local.borrow().as_ref().is_some_and(|(id, _)| *id == self.shared.id));
        while !done() {
            if on_worker {
                if let Some(task) = self.shared.find_task() {
                    self.shared.run(task);
                    continue;
                }
            }
            let mut sleepers = self.shared.sleepers.lock();
            if done() {
                break;
            }
            // Short naps: a helper also wants to hear of newly spawned tasks,
            // which wake only idle workers.
            sleepers.waiting_on_tasks += 1;
            self.shared.task_done.wait_for(&mut sleepers, Duration::from_millis(1));
            sleepers.waiting_on_tasks -= 1;
        }
    }

    /// Stops the workers once every spawned task has finished or `timeout`
    /// passed; returns whether all tasks finished. Idle workers are joined; a
    /// worker still inside a task (a step that will not return) is left to
    /// exit when its task ends, rather than hanging the caller.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        // A timeout beyond what an Instant can hold is no timeout.
        let deadline = Instant::now().checked_add(timeout);
        while self.unfinished() > 0 && deadline.is_none_or(|deadline| Instant::now() < deadline) {
            let mut sleepers = self.shared.sleepers.lock();
            sleepers.waiting_on_tasks += 1;
            self.shared.task_done.wait_for(&mut sleepers, Duration::from_millis(5));
            sleepers.waiting_on_tasks -= 1;
        }
        let drained = self.unfinished() == 0;
        self.shared.shutdown.store(true, Ordering::SeqCst);
        drop(self.shared.sleepers.lock());
        self.shared.work_ready.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock());
        let current = std::thread::current().id();
        for thread in threads {
            if thread.thread().id() != current && (drained || thread.is_finished()) {
                let _ = thread.join();
            }
        }
        drained
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

impl Shared {
    fn wake_one(&self) {
        // Taking the lock orders this wake-up after a worker's last look for
        // work, so it is never lost.
        let sleepers = self.sleepers.lock();
        if sleepers.idle > 0 {
            self.work_ready.notify_one();
        }
    }

    /// A worker thread's loop: run tasks, sleep when there are none.
    fn work(&self) {
        while !self.shutdown.load(Ordering::SeqCst) {
            if let Some(task) = self.find_task() {
                self.run(task);
                continue;
            }
            let mut sleepers = self.sleepers.lock();
            if self.has_work() || self.shutdown.load(Ordering::SeqCst) {
                continue;
            }
            sleepers.idle += 1;
            self.work_ready.wait_for(&mut sleepers, IDLE_NAP);
            sleepers.idle -= 1;
        }
    }

    fn run(&self, task: Task) {
        // A panicking task must not take the worker down; the bindings turn
        // Python errors into results before they get here.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
        self.unfinished.fetch_sub(1, Ordering::SeqCst);
        let sleepers = self.sleepers.lock();
        if sleepers.waiting_on_tasks > 0 {
            self.task_done.notify_all();
        }
    }

    fn has_work(&self) -> bool {
        !self.injector.is_empty() || self.stealers.iter().any(|stealer| !stealer.is_empty())
    }

    fn find_task(&self) -> Option<Task> {
        let local = LOCAL.with(|local| match &*local.borrow() {
            Some((id, deque)) if *id == self.id => Some(deque.pop()),
            _ => None,
        });
        if let Some(Some(task)) = local {
            return Some(task);
        }
        loop {
            let mut retry = false;
            let from_injector = if self.injector.is_empty() {
                Steal::Empty
            } else {
                LOCAL.with(|local| match &*local.borrow() {
                    Some((id, deque)) if *id == self.id => self.injector.steal_batch_and_pop(deque),
                    _ => self.injector.steal(),
                })
            };
            match from_injector {
                Steal::Success(task) => return Some(task),
                Steal::Retry => retry = true,
                Steal::Empty => {}
            }
            // `is_empty` first: `steal` pins crossbeam's epoch, whose upkeep
            // walks every registered thread, and most deques are empty.
            for stealer in self.stealers.iter().filter(|stealer| !stealer.is_empty()) {
                match stealer.steal() {
                    Steal::Success(task) => return Some(task),
                    Steal::Retry => retry = true,
                    Steal::Empty => {}
                }
            }
            if !retry {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn plain() -> WorkerWrapper {
        Arc::new(|body: &mut (dyn FnMut() + Send)| body())
    }

    #[test]
    fn runs_every_task() {
        let executor = Executor::new(4, plain()).unwrap();
        let sum = Arc::new(AtomicU64::new(0));
        for i in 0..10_000u64 {
            let sum = sum.clone();
            executor.spawn(Box::new(move || {
                sum.fetch_add(i, Ordering::SeqCst);
            }));
        }
        assert!(executor.shutdown(Duration::from_secs(10)));
        assert_eq!(sum.load(Ordering::SeqCst), (0..10_000u64).sum::<u64>());
    }

    /// Fan-out three levels deep on two workers: every waiting task helps run
    /// its children, so the pool never runs out of threads.
    #[test]
    fn nested_fan_out_does_not_deadlock() {
        fn fan_out(executor: &Arc<Executor>, depth: u32, leaves: &Arc<AtomicU64>) {
            if depth == 0 {
                leaves.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let remaining = Arc::new(AtomicUsize::new(4));
            for _ in 0..4 {
                let (executor2, leaves, remaining) = (executor.clone(), leaves.clone(), remaining.clone());
                executor.spawn(Box::new(move || {
                    fan_out(&executor2, depth - 1, &leaves);
                    remaining.fetch_sub(1, Ordering::SeqCst);
                }));
            }
            executor.help_until(&|| remaining.load(Ordering::SeqCst) == 0);
        }
        let executor = Arc::new(Executor::new(2, plain()).unwrap());
        let leaves = Arc::new(AtomicU64::new(0));
        let (executor2, leaves2) = (executor.clone(), leaves.clone());
        let done = Arc::new(AtomicBool::new(false));
        let done2 = done.clone();
        executor.spawn(Box::new(move || {
            fan_out(&executor2, 3, &leaves2);
            done2.store(true, Ordering::SeqCst);
        }));
        executor.help_until(&|| done.load(Ordering::SeqCst));
        assert_eq!(leaves.load(Ordering::SeqCst), 64);
        assert!(executor.shutdown(Duration::from_secs(5)));
    }

    #[test]
    fn each_worker_runs_inside_its_wrapper_once() {
        let wrapped = Arc::new(AtomicUsize::new(0));
        let counter = wrapped.clone();
        let wrapper: WorkerWrapper = Arc::new(move |body: &mut (dyn FnMut() + Send)| {
            counter.fetch_add(1, Ordering::SeqCst);
            body();
        });
        let executor = Executor::new(3, wrapper).unwrap();
        for _ in 0..100 {
            executor.spawn(Box::new(|| {}));
        }
        assert!(executor.shutdown(Duration::from_secs(5)));
        assert_eq!(wrapped.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_panicking_task_does_not_stop_the_pool() {
        let executor = Executor::new(1, plain()).unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        executor.spawn(Box::new(|| panic!("task failure")));
        let ran2 = ran.clone();
        executor.spawn(Box::new(move || ran2.store(true, Ordering::SeqCst)));
        assert!(executor.shutdown(Duration::from_secs(5)));
        assert!(ran.load(Ordering::SeqCst));
    }
}
