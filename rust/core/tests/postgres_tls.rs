//! TLS to PostgreSQL as the URL's `sslmode` and `sslrootcert` ask, against
//! the server with `ssl=on` that scripts/postgres.sh starts on TCP localhost
//! (its certificate names `localhost` only, signed by PERDURE_TEST_PG_TLS_CA).
//! Without it the tests pass vacuously on a developer's machine, and fail
//! under CI, where a missing server is a broken setup.

use std::io::{Read, Write};
use std::net::TcpListener;

use perdure_core::backend::postgres::commit::PgWriter;
use perdure_core::backend::postgres::tls::SslMode;
use perdure_core::backend::postgres::PgLocation;
use perdure_core::error::Error;

struct TlsServer {
    url: String,
    ca: String,
    other_ca: String,
}

fn server() -> Option<TlsServer> {
    let Ok(url) = std::env::var("PERDURE_TEST_PG_TLS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "PERDURE_TEST_PG_TLS is not set: scripts/postgres.sh's start_test_postgres sets it"
        );
        eprintln!("PERDURE_TEST_PG_TLS not set: no PostgreSQL server with TLS to test against");
        return None;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    Some(TlsServer {
        url,
        ca: var("PERDURE_TEST_PG_TLS_CA"),
        other_ca: var("PERDURE_TEST_PG_TLS_OTHER_CA"),
    })
}

impl TlsServer {
    /// The server's URL with a password (trust auth ignores it; no error may
    /// show it) and `options`.
    fn at(&self, options: &str) -> PgLocation {
        let url = self.url.replacen("postgres@", "postgres:s3cret@", 1);
        PgLocation::parse(&format!("{url}?{options}")).unwrap()
    }
}

/// Whether the connection is encrypted, as the server sees it.
fn encrypted(client: &mut postgres::Client) -> bool {
    client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

fn refused(location: &PgLocation) -> String {
    let err = location.connect().err().expect("the connection should be refused");
    assert!(matches!(err, Error::Postgres { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    shown
}

#[test]
fn require_encrypts_without_checking_the_certificate() {
    let Some(server) = server() else { return };
    let at = server.at("sslmode=require");
    assert_eq!(at.ssl_mode(), SslMode::Require);
    assert!(encrypted(&mut at.connect().unwrap()));
}

#[test]
fn the_default_prefers_tls_when_the_server_offers_it() {
    let Some(server) = server() else { return };
    let at = server.at("application_name=t");
    assert_eq!(at.ssl_mode(), SslMode::Prefer);
    assert!(encrypted(&mut at.connect().unwrap()));
}

#[test]
fn disable_connects_in_the_clear() {
    let Some(server) = server() else { return };
    assert!(!encrypted(&mut server.at("sslmode=disable").connect().unwrap()));
}

#[test]
fn verify_full_with_the_servers_ca_connects() {
    let Some(server) = server() else { return };
    let at = server.at(&format!("sslmode=verify-full&sslrootcert={}", server.ca));
    assert!(encrypted(&mut at.connect().unwrap()));
}

/// The writer's connection (the async client, for pipelining) is made
/// with the same TLS as every other.
#[test]
fn the_writers_connection_uses_tls_as_asked() {
    let Some(server) = server() else { return };
    let name = "perdure_tls_writer";
    let at = server.at(&format!(
        "sslmode=verify-full&sslrootcert={}&application_name={name}",
        server.ca
    ));
    let writer = PgWriter::connect(&at).unwrap();
    assert_eq!(writer.execute("SELECT 1", &[]).unwrap(), 1);
    let seen: Vec<bool> = at
        .connect()
        .unwrap()
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    // The writer's and this one's.
    assert_eq!(seen, [true, true]);
    drop(writer);
    let other = server.at(&format!("sslmode=verify-full&sslrootcert={}", server.other_ca));
    let err = PgWriter::connect(&other)
        .err()
        .expect("the connection should be refused");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn verify_full_with_another_ca_is_refused() {
    let Some(server) = server() else { return };
    for mode in ["verify-full", "verify-ca", "require"] {
        let at = server.at(&format!("sslmode={mode}&sslrootcert={}", server.other_ca));
        let shown = refused(&at);
        assert!(
            shown.contains("TLS certificate is refused")
                && shown.contains(&server.other_ca)
                && shown.contains("UnknownIssuer"),
            "{shown}"
        );
    }
}

#[test]
fn verify_ca_checks_the_chain_and_not_the_host_name() {
    let Some(server) = server() else { return };
    // The certificate names localhost, not 127.0.0.1.
    let by_address = |options: &str| {
        let url = server.url.replacen("@localhost:", "@127.0.0.1:", 1);
        PgLocation::parse(&format!("{url}?{options}")).unwrap()
    };
    let ca = &server.ca;
    assert!(encrypted(
        &mut by_address(&format!("sslmode=verify-ca&sslrootcert={ca}"))
            .connect()
            .unwrap()
    ));
    let shown = refused(&by_address(&format!("sslmode=verify-full&sslrootcert={ca}")));
    assert!(
        shown.contains("TLS certificate is refused") && shown.contains("not valid for name"),
        "{shown}"
    );
}

#[test]
fn verify_full_without_roots_uses_the_platforms_which_do_not_know_a_test_ca() {
    let Some(server) = server() else { return };
    match PgLocation::parse(&format!("{}?sslmode=verify-full", server.url)) {
        Ok(at) => {
            let shown = refused(&at);
            assert!(shown.contains("the platform's roots"), "{shown}");
        }
        // A platform without roots: the URL is refused, saying what to add.
        Err(err) => assert!(err.to_string().contains("sslrootcert="), "{err}"),
    }
}

#[test]
fn require_against_a_server_without_tls_is_refused() {
    // A server that answers the TLS request with 'N', as PostgreSQL with
    // ssl=off does: the test clusters on TCP all have TLS.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = [0u8; 8];
        socket.read_exact(&mut request).unwrap();
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest");
        socket.write_all(b"N").unwrap();
        let _ = socket.read(&mut [0u8; 64]); // until the client gives up
    });
    let at = PgLocation::parse(&format!("postgresql://me:s3cret@127.0.0.1:{port}/db?sslmode=require")).unwrap();
    let shown = refused(&at);
    assert!(
        shown.contains("TLS required (sslmode=require) but the server does not offer it"),
        "{shown}"
    );
    fake.join().unwrap();
}

#[test]
fn over_a_unix_socket_no_tls_is_used_whatever_the_mode() {
    // As libpq: a local socket is not on a network, and PostgreSQL offers no
    // TLS there.
    let Ok(url) = std::env::var("PERDURE_TEST_PG") else {
        assert!(std::env::var_os("CI").is_none(), "PERDURE_TEST_PG is not set");
        return;
    };
    let Some(socket_dir) = url.split(['?', '&']).find_map(|option| option.strip_prefix("host=")) else {
        panic!("PERDURE_TEST_PG names no socket directory: {url}")
    };
    let port = url
        .split(['?', '&'])
        .find_map(|option| option.strip_prefix("port="))
        .unwrap_or("5432");
    for mode in ["require", "verify-full"] {
        let at = PgLocation::parse(&format!(
            "postgresql://postgres@/postgres?host={socket_dir}&port={port}&sslmode={mode}"
        ))
        .unwrap();
        let mut client = at.connect().unwrap();
        let rows = client
            .query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl", &[])
            .unwrap();
        assert!(rows.is_empty(), "{mode}");
    }
}

#[test]
fn a_bad_root_file_is_named_and_no_password_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let url = format!(
        "postgresql://me:s3cret@db.example/app?sslmode=verify-full&sslrootcert={}",
        path.display()
    );
    let err = PgLocation::parse(&url).err().unwrap();
    let shown = err.to_string();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}
