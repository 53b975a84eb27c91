//! The PostgreSQL store: where a store lives on a server, how to connect,
//! the schema perdure creates there, and the store the engine runs on
//! ([`PgStore`]), beside LMDB behind the storage seam.

pub mod commit;
pub mod liveness;
pub mod reads;
pub mod schema;
pub mod store;
pub mod tls;

pub use store::{PgOptions, PgStore};

use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// A PostgreSQL store: the server and database (a libpq URL), and the schema
/// perdure keeps its tables in (`?schema=name`, `perdure` by default), so that
/// several stores can share one database.
#[derive(Clone)]
pub struct PgLocation {
    config: tokio_postgres::Config,
    schema: String,
    shown: String,
    tls: tls::Tls,
}

impl std::fmt::Debug for PgLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether a store location names a PostgreSQL server rather than a directory.
pub fn is_url(location: &str) -> bool {
    location.starts_with("postgresql://") || location.starts_with("postgres://")
}

const DEFAULT_SCHEMA: &str = "perdure";

impl PgLocation {
    /// Parses `postgresql://user[:password]@host[:port]/database[?options]`.
    /// `schema=` is perdure's own option; every other option is libpq's
    /// (`host=/socket/dir`, `sslmode`, `sslrootcert`, `application_name`,
    /// ...).
    pub fn parse(url: &str) -> Result<PgLocation> {
        if !is_url(url) {
            return Err(Error::InvalidInput(format!(
                "a PostgreSQL store is named by a postgresql:// URL, not {:?}",
                shown(url)
            )));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = DEFAULT_SCHEMA.to_owned();
        let mut kept = Vec::new();
        for option in query.split('&').filter(|option| !option.is_empty()) {
            match option.strip_prefix("schema=") {
                Some(name) => schema = name.to_owned(),
                None => kept.push(option),
            }
        }
        check_schema_name(&schema)?;
        // tokio-postgres reads every option but sslmode's and sslrootcert's,
        // which are taken out first and set up here.
        let libpq = |options: &[&str]| {
            let ours = |option: &&str| option.starts_with("sslmode=") || option.starts_with("sslrootcert=");
            with_query(
                base,
                &options
                    .iter()
                    .copied()
                    .filter(|option| !ours(option))
                    .collect::<Vec<_>>(),
            )
        };
        let mut config = tokio_postgres::Config::from_str(&libpq(&kept))
            .map_err(|err| Error::InvalidInput(format!("cannot read the PostgreSQL URL {:?}: {err}", shown(url))))?;
        let hosts = config.get_hosts();
        let over_sockets_only = !hosts.is_empty()
            && hosts
                .iter()
                .all(|host| !matches!(host, tokio_postgres::config::Host::Tcp(_)));
        let tls = tls::Tls::take(&mut kept, over_sockets_only).map_err(|err| match err {
            Error::InvalidInput(why) => Error::InvalidInput(format!("{why} (in {:?})", shown(url))),
            other => other,
        })?;
        config.ssl_mode(tls.client_mode());
        if config.get_application_name().is_none() {
            config.application_name("perdure");
        }
        // A host that vanishes (power, partition) leaves no socket to close:
        // unless the URL says otherwise, notice a dead server within seconds
        // rather than TCP's hours (Unix sockets ignore these).
        let given = |name: &str| kept.iter().any(|option| option.starts_with(&format!("{name}=")));
        if !given("connect_timeout") {
            config.connect_timeout(Duration::from_secs(10));
        }
        if !given("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(5));
        }
        if !given("keepalives_interval") {
            config.keepalives_interval(Duration::from_secs(1));
        }
        if !given("keepalives_retries") {
            config.keepalives_retries(5);
        }
        if !given("tcp_user_timeout") {
            config.tcp_user_timeout(Duration::from_secs(10));
        }
        Ok(PgLocation {
            config,
            schema,
            shown: shown(url),
            tls,
        })
    }

    /// The schema that holds this store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The URL as given, with any password replaced by `***`: safe to log.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The error of a statement on this store: `what` failed, and where.
    pub(crate) fn failed(&self, what: &str) -> impl FnOnce(postgres::Error) -> Error {
        let what = format!("{what} ({} schema {})", self.shown, self.schema);
        move |source| Error::Postgres { what, source }
    }

    /// The URL's `sslmode` (libpq's `prefer` when not given).
    pub fn ssl_mode(&self) -> tls::SslMode {
        self.tls.mode()
    }

    /// A new connection to the server, over TLS as `sslmode` asks.
    pub fn connect(&self) -> Result<postgres::Client> {
        self.tls
            .connect(&postgres::Config::from(self.config.clone()))
            .map_err(|source| self.unreached(source))
    }

    /// As [`PgLocation::connect`], a client of the async API, its connection
    /// the task spawned on the runtime this runs in (which must drive it).
    pub(crate) async fn connect_async(&self) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
        self.tls
            .connect_async(&self.config)
            .await
            .map_err(|source| self.unreached(source))
    }

    fn unreached(&self, source: postgres::Error) -> Error {
        Error::Postgres {
            what: self.tls.explain(&source, &self.shown),
            source,
        }
    }
}

fn with_query(base: &str, options: &[&str]) -> String {
    if options.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", options.join("&"))
    }
}

/// A schema name perdure accepts: a plain lower-case SQL identifier, so it is
/// never quoted wrongly nor folded into another name by the server.
fn check_schema_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok && name.len() <= 63 && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "schema {name:?}: a PostgreSQL store's schema is 1 to 63 of a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

/// `url` with the password of its user part, if any, replaced by `***`.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            format!("{scheme}://{name}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_option_is_perdures_and_the_rest_goes_to_libpq() {
        let at = PgLocation::parse("postgresql://me@/db?host=/run/pg&schema=orders_2&port=5439").unwrap();
        assert_eq!(at.schema(), "orders_2");
        assert_eq!(at.config.get_dbname(), Some("db"));
        assert_eq!(at.config.get_ports(), &[5439]);
        assert_eq!(at.config.get_application_name(), Some("perdure"));
        assert_eq!(at.config.get_keepalives_idle(), Duration::from_secs(5));
        let given = PgLocation::parse("postgresql://h/db?keepalives_idle=30&tcp_user_timeout=60").unwrap();
        assert_eq!(given.config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(given.config.get_tcp_user_timeout(), Some(&Duration::from_secs(60)));
        assert_eq!(PgLocation::parse("postgres://me@h/db").unwrap().schema(), "perdure");
    }

    #[test]
    fn a_password_is_never_shown() {
        let at = PgLocation::parse("postgresql://me:s3cret@db.example:5432/app?schema=x").unwrap();
        assert_eq!(at.shown(), "postgresql://me:***@db.example:5432/app?schema=x");
        assert!(!format!("{at:?}").contains("s3cret"));
        let err = PgLocation::parse("postgresql://me:s3cret@h/db?schema=Bad").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = PgLocation::parse("postgresql://me:s3cret@h/db?nonsense=1").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for bad in ["", "Orders", "1x", "a-b", "a\"b", "x;drop", &"a".repeat(64)] {
            let url = format!("postgresql://h/db?schema={bad}");
            assert!(
                matches!(PgLocation::parse(&url), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
        for good in ["_", "a", "perdure_2", &"a".repeat(63)] {
            assert!(PgLocation::parse(&format!("postgresql://h/db?schema={good}")).is_ok());
        }
        assert!(matches!(
            PgLocation::parse("/var/lib/store"),
            Err(Error::InvalidInput(_))
        ));
    }
}
