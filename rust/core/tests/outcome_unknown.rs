//! A commit whose outcome is unknown (a COMMIT sent without answer, as a
//! PostgreSQL connection lost at the wrong moment gives): the writer never
//! retries it blind, and the invocation run again afterwards arms the timers
//! the commit stored. Shown deterministically on LMDB, behind a backend that
//! commits a chosen group and then answers `OutcomeUnknown`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use perdure_core::backend::{Backend, ExecSummary, InvocationData, Lease, Mutation, Outcome, OwnerHold, OwnerState};
use perdure_core::clock::ManualClock;
use perdure_core::keys::{CallbackEntry, ExecState, OwnerEntry, Timer};
use perdure_core::{
    Durability, Error, OpType, Record, RecordKind, Result, Runtime, RuntimeOptions, Store, StoreOptions, SubType,
};

/// LMDB, except that while `lose_next` is set, the next group that ends an
/// invocation is committed and then reported as of unknown outcome.
struct LosesAnswers {
    store: Arc<Store>,
    lose_next: AtomicBool,
    commits: std::sync::atomic::AtomicUsize,
}

impl Backend for LosesAnswers {
    fn commit(&self, group: &[Vec<Mutation>]) -> Result<Vec<Result<Vec<Outcome>>>> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        let ends = group
            .iter()
            .flatten()
            .any(|mutation| matches!(mutation, Mutation::EndInvocation { .. }));
        let answers = self.store.commit(group)?;
        if ends && self.lose_next.swap(false, Ordering::SeqCst) {
            return Err(Error::OutcomeUnknown("the COMMIT got no answer".into()));
        }
        Ok(answers)
    }
    fn sync(&self) -> Result<()> {
        self.store.sync()
    }
    fn describe(&self) -> String {
        self.store.describe()
    }
    fn exec_key_of(&self, execution_id: &str) -> Result<Option<u64>> {
        self.store.exec_key_of(execution_id)
    }
    fn execution(&self, exec_key: u64) -> Result<Option<ExecSummary>> {
        self.store.execution(exec_key)
    }
    fn execution_by_id(&self, execution_id: &str) -> Result<Option<ExecSummary>> {
        self.store.execution_by_id(execution_id)
    }
    fn load_invocation(&self, exec_key: u64) -> Result<InvocationData> {
        self.store.load_invocation(exec_key)
    }
    fn journal(&self, exec_key: u64) -> Result<Vec<Record>> {
        self.store.journal(exec_key)
    }
    fn last_record(&self, exec_key: u64) -> Result<Option<Record>> {
        self.store.last_record(exec_key)
    }
    fn list(
        &self,
        state: Option<ExecState>,
        function: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ExecSummary>, Vec<Error>)> {
        self.store.list(state, function, limit)
    }
    fn callback(&self, callback_id: &str) -> Result<Option<CallbackEntry>> {
        self.store.callback(callback_id)
    }
    fn lease(&self, exec_key: u64) -> Result<Option<Lease>> {
        self.store.lease(exec_key)
    }
    fn timers_of(&self, exec_keys: &HashSet<u64>) -> Result<(Vec<Timer>, Vec<u64>)> {
        self.store.timers_of(exec_keys)
    }
    fn check(&self) -> Result<(usize, Vec<Error>)> {
        self.store.check()
    }
    fn woken_since(&self, seen: u64, owner: u64) -> Result<(u64, Vec<u64>)> {
        self.store.woken_since(seen, owner)
    }
    fn poll_state(&self) -> Result<(u64, bool)> {
        self.store.poll_state()
    }
    fn wake_seq(&self) -> Result<u64> {
        self.store.wake_seq()
    }
    fn owners(&self) -> Result<Vec<(u64, OwnerEntry)>> {
        self.store.owners()
    }
    fn hold_owner(&self, owner: u64) -> Result<Box<dyn OwnerHold>> {
        self.store.hold_owner(owner)
    }
    fn other_owners(&self, me: u64) -> Result<Vec<OwnerState>> {
        self.store.other_owners(me)
    }
    fn forget_owner(&self, owner: u64) {
        self.store.forget_owner(owner)
    }
}

#[test]
fn a_suspension_stored_without_answer_still_wakes_on_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    let store_options = StoreOptions {
        durability: Durability::None,
        map_size: 1 << 20,
    };
    let backend = Arc::new(LosesAnswers {
        store: Store::open(dir.path(), &store_options).unwrap(),
        lose_next: AtomicBool::new(false),
        commits: Default::default(),
    });
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = RuntimeOptions {
        store: store_options,
        owner: true,
        poll_interval: Duration::from_millis(5),
        lease_timeout: Duration::from_secs(10),
        clock: clock.clone(),
    };
    let runtime = Runtime::on(backend.clone(), options).unwrap();
    let (exec, _) = runtime.start("e-1", "wf", vec![], None).unwrap();
    assert_eq!(runtime.next_ready(Duration::from_secs(5)).unwrap(), Some(exec));
    let loaded = runtime.load_invocation(exec).unwrap();
    let wait = Record::new(RecordKind::Started, OpType::Wait, SubType::Wait, "1");

    backend.lose_next.store(true, Ordering::SeqCst);
    let before = backend.commits.load(Ordering::SeqCst);
    let answer = runtime.end_invocation(exec, loaded.wake, None, vec![wait], vec![(1_000_500, "1".into())]);
    assert!(matches!(answer, Err(Error::OutcomeUnknown(_))), "{answer:?}");
    assert_eq!(
        backend.commits.load(Ordering::SeqCst),
        before + 1,
        "a group of unknown outcome is not committed again, batch by batch"
    );
    assert_eq!(runtime.pending_timers(), 0, "no answer: the timer was not armed");

    // What the engine does after a failed commit: the execution runs again
    // later, and that invocation finds the suspension stored.
    runtime
        .retry_later(exec, Some((false, "outcome unknown".into())))
        .unwrap();
    let again = runtime.load_invocation(exec).unwrap();
    assert_eq!(again.wake, 0, "the suspension was stored: nothing to run");
    assert_eq!(runtime.pending_timers(), 1, "the stored timer is armed");
    runtime.finish(exec, false).unwrap();

    clock.set(1_000_500);
    runtime.poke_timers();
    assert_eq!(
        runtime.next_ready(Duration::from_secs(5)).unwrap(),
        Some(exec),
        "the wait's timer wakes the execution"
    );
}
