//! What the PostgreSQL store's tests share: a scratch schema on the server
//! `PERDURE_TEST_PG` names (scripts/postgres.sh starts a throwaway one).
//! Without it the tests pass vacuously on a developer's machine, and fail
//! under CI, where a missing server is a broken setup, not a skip.

#![allow(dead_code)] // each test file uses its own part

use perdure_core::backend::postgres::PgLocation;

/// A schema of its own for one test, dropped at the end.
pub struct Scratch {
    pub location: PgLocation,
}

impl Scratch {
    pub fn new() -> Option<Scratch> {
        let Ok(url) = std::env::var("PERDURE_TEST_PG") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PERDURE_TEST_PG is not set: .ci/run starts PostgreSQL and sets it"
            );
            eprintln!("PERDURE_TEST_PG not set: no PostgreSQL server to test against");
            return None;
        };
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).unwrap();
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let sep = if url.contains('?') { '&' } else { '?' };
        let location = PgLocation::parse(&format!("{url}{sep}schema=t_{name}")).unwrap();
        Some(Scratch { location })
    }

    pub fn client(&self) -> postgres::Client {
        self.location.connect().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut client) = self.location.connect() {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.location.schema()));
        }
    }
}

/// A scratch schema with the store's tables created.
pub fn store() -> Option<Scratch> {
    let scratch = Scratch::new()?;
    perdure_core::backend::postgres::schema::ensure(&mut scratch.client(), &scratch.location).unwrap();
    Some(scratch)
}
