//! Owner engines on a PostgreSQL store, on a real server (see `common`):
//! registration epochs, renewal, and telling live, crashed and hung owners
//! apart, a crash being a real process killed with SIGKILL.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use perdure_core::backend::postgres::liveness::{look_at, reap, Liveness, OwnerSession};
use perdure_core::error::Error;

const LEASE: Duration = Duration::from_secs(10);

fn owner_id() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_be_bytes(bytes) | 1 << 63 // high bit set: reads as a negative bigint
}

/// Asks until `owner` looks `wanted` (at most 2 s), and returns what it saw.
fn becomes(scratch: &common::Scratch, owner: u64, lease: Duration, wanted: Liveness) -> Liveness {
    let mut client = scratch.client();
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let seen = look_at(&mut client, &scratch.location, owner, lease).unwrap().liveness;
        if seen == wanted || Instant::now() > until {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_registered_owner_is_alive_and_renews() {
    let Some(scratch) = common::store() else { return };
    let owner = owner_id();
    let mut session = OwnerSession::register(&scratch.location, owner, "host-a", 4242).unwrap();
    assert!(session.epoch() >= 1);
    assert!(session.renew().unwrap());
    let view = look_at(&mut scratch.client(), &scratch.location, owner, LEASE).unwrap();
    assert_eq!(view.liveness, Liveness::Alive);
    let (host, pid): (String, i64) = scratch
        .client()
        .query_one(
            &format!(
                "SELECT host, pid FROM {}.owners WHERE owner_id = $1",
                scratch.location.schema()
            ),
            &[&(owner as i64)],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((host.as_str(), pid), ("host-a", 4242));
    let unknown = look_at(&mut scratch.client(), &scratch.location, owner ^ 1, LEASE).unwrap();
    assert_eq!(unknown.liveness, Liveness::Gone);
}

#[test]
fn an_owner_id_held_by_a_live_session_is_refused() {
    let Some(scratch) = common::store() else { return };
    let owner = owner_id();
    let _first = OwnerSession::register(&scratch.location, owner, "a", 1).unwrap();
    let second = OwnerSession::register(&scratch.location, owner, "b", 2);
    assert!(matches!(second, Err(Error::InvalidInput(_))));
}

#[test]
fn a_closed_session_is_seen_crashed_at_once() {
    let Some(scratch) = common::store() else { return };
    let owner = owner_id();
    let session = OwnerSession::register(&scratch.location, owner, "a", 1).unwrap();
    drop(session);
    assert_eq!(becomes(&scratch, owner, LEASE, Liveness::Crashed), Liveness::Crashed);
}

/// A child process, killed if a test ends while it runs.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real process holds the owner's lock, as an engine's lock connection
/// does, and is killed with SIGKILL: the server ends its session and other
/// engines see the owner crashed without waiting for its lease (10 s here)
/// to lapse (how fast is a figure for bench/, not an assertion).
#[test]
fn a_killed_process_is_seen_crashed_within_a_second() {
    let Some(scratch) = common::store() else { return };
    let owner = owner_id();
    let schema = scratch.location.schema();
    let url = std::env::var("PERDURE_TEST_PG").unwrap();
    let key = owner as i64;
    // psql reads the statements from a pipe kept open, and then sits idle
    // with its session, as an engine's lock connection does between
    // renewals (a backend busy in a query would notice the lost client only
    // when the query ends).
    let mut holder = Command::new("psql")
        .arg(&url)
        .args(["-v", "ON_ERROR_STOP=1", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql (Debian's postgresql-client) runs the lock holder");
    let mut statements = holder.stdin.take().unwrap();
    writeln!(
        statements,
        "SELECT pg_advisory_lock({key});\n\
         INSERT INTO {schema}.owners VALUES ({key}, nextval('{schema}.lease_epoch'), 'h', 1, now(), now());"
    )
    .unwrap();
    let mut holder = Killed(holder);
    assert_eq!(becomes(&scratch, owner, LEASE, Liveness::Alive), Liveness::Alive);
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(holder.0.id() as i32, libc::SIGKILL) }, 0);
    holder.0.wait().unwrap();
    drop(statements);
    assert_eq!(becomes(&scratch, owner, LEASE, Liveness::Crashed), Liveness::Crashed);
}

#[test]
fn an_owner_that_stops_renewing_is_hung_by_the_servers_clock() {
    let Some(scratch) = common::store() else { return };
    let owner = owner_id();
    let mut session = OwnerSession::register(&scratch.location, owner, "a", 1).unwrap();
    let lease = Duration::from_millis(150);
    assert_eq!(becomes(&scratch, owner, lease, Liveness::Hung), Liveness::Hung);
    assert!(session.renew().unwrap());
    let view = look_at(&mut scratch.client(), &scratch.location, owner, lease).unwrap();
    assert_eq!(view.liveness, Liveness::Alive);
}

#[test]
fn a_reap_orphans_the_owners_executions_only_if_it_did_not_renew_since() {
    let Some(scratch) = common::store() else { return };
    let owner = owner_id();
    let schema = scratch.location.schema();
    let mut session = OwnerSession::register(&scratch.location, owner, "a", 1).unwrap();
    let mut client = scratch.client();
    client
        .batch_execute(&format!(
            "INSERT INTO {schema}.executions (execution_id, function, state, created_ms, updated_ms, owner_id) \
             VALUES ('running', 'f', 1, 1, 1, {key}), ('done', 'f', 2, 1, 1, NULL), ('other', 'f', 1, 1, 1, 7)",
            key = owner as i64
        ))
        .unwrap();
    let judged = look_at(&mut client, &scratch.location, owner, Duration::ZERO).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert!(session.renew().unwrap());
    // It renewed after it was judged: not reaped.
    assert_eq!(
        reap(&mut client, &scratch.location, owner, judged.renewed_at_us.unwrap()).unwrap(),
        None
    );
    let judged = look_at(&mut client, &scratch.location, owner, Duration::ZERO).unwrap();
    assert_eq!(judged.liveness, Liveness::Hung);
    assert_eq!(
        reap(&mut client, &scratch.location, owner, judged.renewed_at_us.unwrap()).unwrap(),
        Some(1)
    );
    let owners: Vec<(String, Option<i64>)> = client
        .query(
            &format!("SELECT execution_id, owner_id FROM {schema}.executions ORDER BY 1"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        owners,
        [
            ("done".into(), None),
            ("other".into(), Some(7)),
            ("running".into(), None)
        ]
    );
    // The reaped owner learns it at its next renewal, and registers again
    // with a new epoch: its old one can never pass a check again.
    let old = session.epoch();
    assert!(!session.renew().unwrap());
    let new = session.register_again("a", 1).unwrap();
    assert!(new > old, "{new} > {old}");
    assert!(session.renew().unwrap());
}
