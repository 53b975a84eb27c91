//! Owner engines on a PostgreSQL store: registration with an epoch, renewal
//! on the server's clock, and how other engines tell a live owner from a
//! crashed or hung one (docs/design.md §8, after SCALE-OUT.md §4.4).
//!
//! An owner holds a session-level advisory lock keyed by its owner id on a
//! connection of its own. A process that dies closes its socket and the
//! server releases the lock at once: the same clock-free crash signal the
//! LMDB store gets from `flock`, across hosts. A hung or partitioned owner
//! keeps its lock but stops renewing; it is judged by `renewed_at`, which
//! the server sets, so hosts' clocks never meet.

use std::time::Duration;

use postgres::Client;

use super::PgLocation;
use crate::error::{Error, Result};

/// What other engines may conclude about an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Registered, its session holds the lock and it renewed in time.
    Alive,
    /// Its session is gone (process died, connection dropped): reap at once.
    Crashed,
    /// Its session lives but it has not renewed within the lease timeout.
    Hung,
    /// Not registered (never, or reaped already).
    Gone,
}

/// A registered owner: the connection that holds its advisory lock, and the
/// epoch of this registration.
pub struct OwnerSession {
    client: Client,
    location: PgLocation,
    owner_id: u64,
    epoch: i64,
}

/// The advisory lock key of an owner id: the id's bits as a bigint. Ids are
/// random 64-bit numbers, so two stores sharing a database do not meet.
fn lock_key(owner_id: u64) -> i64 {
    owner_id as i64
}

fn failed<'a>(location: &'a PgLocation, what: &'a str) -> impl FnOnce(postgres::Error) -> Error + 'a {
    move |source| Error::Postgres {
        what: format!("{what} ({})", location.shown()),
        source,
    }
}

impl OwnerSession {
    /// Registers `owner_id` (or registers it again, with the next epoch, if
    /// it was registered before) on a connection of its own that holds the
    /// owner's advisory lock for as long as the session lives. Refused while
    /// another session holds that owner id.
    pub fn register(location: &PgLocation, owner_id: u64, host: &str, pid: u32) -> Result<OwnerSession> {
        let mut client = location.connect()?;
        // The server, too, must notice a vanished host to end this session
        // and release the lock: probe the client after 5 s of silence.
        client
            .batch_execute(
                "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 1; \
                 SET tcp_keepalives_count = 5; SET tcp_user_timeout = 10000",
            )
            .map_err(failed(location, "cannot set the session's keepalives"))?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(owner_id)])
            .map_err(failed(location, "cannot take the owner's lock"))?
            .get(0);
        if !locked {
            return Err(Error::InvalidInput(format!(
                "owner {owner_id:016x} is already registered by a live session on {}",
                location.shown()
            )));
        }
        let epoch = insert_owner(&mut client, location, owner_id, host, pid)?;
        Ok(OwnerSession {
            client,
            location: location.clone(),
            owner_id,
            epoch,
        })
    }

    /// Registers again on the same session, with a new epoch: what an owner
    /// does when [`OwnerSession::renew`] finds it was reaped.
    pub fn register_again(&mut self, host: &str, pid: u32) -> Result<i64> {
        self.epoch = insert_owner(&mut self.client, &self.location, self.owner_id, host, pid)?;
        Ok(self.epoch)
    }

    pub fn owner_id(&self) -> u64 {
        self.owner_id
    }

    /// The epoch of this registration: every registration, of any owner,
    /// gets a new and higher one.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Renews the lease on the server's clock. `Ok(false)`: this registration
    /// was reaped (or replaced by a newer one): the owner must register again
    /// and may no longer write under the old epoch.
    pub fn renew(&mut self) -> Result<bool> {
        let schema = self.location.schema();
        let renewed = self
            .client
            .execute(
                &format!("UPDATE {schema}.owners SET renewed_at = now() WHERE owner_id = $1 AND epoch = $2"),
                &[&lock_key(self.owner_id), &self.epoch],
            )
            .map_err(failed(&self.location, "cannot renew the owner's lease"))?;
        Ok(renewed == 1)
    }
}

/// Writes the owner's row with a new epoch, taken from the store-wide
/// `lease_epoch` sequence so that no two registrations share one (a reaped
/// owner's row is deleted; counting from its old row would start again).
fn insert_owner(client: &mut Client, location: &PgLocation, owner_id: u64, host: &str, pid: u32) -> Result<i64> {
    let schema = location.schema();
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {schema}.owners (owner_id, epoch, host, pid, started_at, renewed_at) \
                 VALUES ($1, nextval('{schema}.lease_epoch'), $2, $3, now(), now()) \
                 ON CONFLICT (owner_id) DO UPDATE SET epoch = EXCLUDED.epoch, host = $2, pid = $3, \
                 started_at = now(), renewed_at = now() RETURNING epoch"
            ),
            &[&lock_key(owner_id), &host, &i64::from(pid)],
        )
        .map_err(failed(location, "cannot register the owner"))?;
    Ok(row.get(0))
}

/// An owner as another engine sees it: its registration's renewal time (to
/// reap only what was judged), and its liveness under `lease_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerView {
    pub liveness: Liveness,
    /// `renewed_at` as the server stored it, in microseconds since the Unix
    /// epoch: a reap is conditional on it, so an owner that renewed after it
    /// was judged is not reaped.
    pub renewed_at_us: Option<i64>,
}

/// How `owner_id` looks from another engine's connection.
pub fn look_at(
    client: &mut Client,
    location: &PgLocation,
    owner_id: u64,
    lease_timeout: Duration,
) -> Result<OwnerView> {
    let schema = location.schema();
    let timeout_us = i64::try_from(lease_timeout.as_micros()).unwrap_or(i64::MAX);
    // pg_locks shows a bigint advisory key as its high and low 32 bits.
    let row = client
        .query_opt(
            &format!(
                "SELECT (EXTRACT(EPOCH FROM renewed_at) * 1000000)::bigint, \
                        renewed_at + make_interval(secs => $2::double precision / 1000000) < now(), \
                        EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
                                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                                AND l.classid::bigint = (($1::bigint >> 32) & 4294967295) \
                                AND l.objid::bigint = ($1::bigint & 4294967295) AND l.objsubid = 1) \
                 FROM {schema}.owners WHERE owner_id = $1"
            ),
            &[&lock_key(owner_id), &(timeout_us as f64)],
        )
        .map_err(failed(location, "cannot look at an owner"))?;
    let Some(row) = row else {
        return Ok(OwnerView {
            liveness: Liveness::Gone,
            renewed_at_us: None,
        });
    };
    let renewed: i64 = row.get(0);
    let lapsed: bool = row.get(1);
    let held: bool = row.get(2);
    let liveness = if !held {
        Liveness::Crashed
    } else if lapsed {
        Liveness::Hung
    } else {
        Liveness::Alive
    };
    Ok(OwnerView {
        liveness,
        renewed_at_us: Some(renewed),
    })
}

/// Reaps `owner_id` if its registration is still the one judged (renewed
/// last at `renewed_at_us`): deletes it and makes its active executions
/// orphans, in one statement. Returns how many executions it held, or None
/// when the owner had renewed (or was reaped) meanwhile.
pub fn reap(client: &mut Client, location: &PgLocation, owner_id: u64, renewed_at_us: i64) -> Result<Option<u64>> {
    let schema = location.schema();
    let row = client
        .query_one(
            &format!(
                "WITH reaped AS (DELETE FROM {schema}.owners WHERE owner_id = $1 \
                                 AND (EXTRACT(EPOCH FROM renewed_at) * 1000000)::bigint = $2 RETURNING owner_id), \
                      orphaned AS (UPDATE {schema}.executions SET owner_id = NULL \
                                   WHERE state = 1 AND owner_id IN (SELECT owner_id FROM reaped) RETURNING 1) \
                 SELECT (SELECT count(*) FROM reaped), (SELECT count(*) FROM orphaned)"
            ),
            &[&lock_key(owner_id), &renewed_at_us],
        )
        .map_err(failed(location, "cannot reap an owner"))?;
    let (reaped, orphaned): (i64, i64) = (row.get(0), row.get(1));
    Ok((reaped == 1).then_some(orphaned.unsigned_abs()))
}
