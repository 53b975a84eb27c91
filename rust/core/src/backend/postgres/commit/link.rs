//! The writer's connection: an async client on a runtime of its own, so
//! that statements issued together are pipelined (sent in one write, their
//! answers read in one wait) where the blocking client waits for each.
//! The runtime runs on the calling thread, and only while a call waits on
//! it (`block_on`): the connection's task is driven then, and only then
//! needed.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

use crate::backend::postgres::PgLocation;
use crate::error::Result;

pub(super) struct Link {
    runtime: Runtime,
    /// `None` only while dropped.
    client: Option<tokio_postgres::Client>,
    connection: Option<JoinHandle<()>>,
}

/// How long a dropped link waits for its connection to say goodbye.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

impl Link {
    pub(super) fn connect(location: &PgLocation) -> Result<Link> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let (client, connection) = runtime.block_on(location.connect_async())?;
        Ok(Link {
            runtime,
            client: Some(client),
            connection: Some(connection),
        })
    }

    pub(super) fn client(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("kept until dropped")
    }

    /// Runs `work` (statements on [`Link::client`]) to its end, the
    /// connection driven meanwhile.
    pub(super) fn block_on<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }
}

impl Drop for Link {
    /// The client gone, its connection tells the server goodbye and ends,
    /// given a moment (no server log of a connection dropped unannounced).
    fn drop(&mut self) {
        drop(self.client.take());
        if let Some(connection) = self.connection.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(CLOSE_WAIT, connection).await });
        }
    }
}
