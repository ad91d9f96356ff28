//! The `platform` binary, run as a user runs it: a process with flags and environment, its
//! output read back. Each test uses a database of its own, created by the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

fn platform() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_platform"));
    command.env("PLATFORM_LOG", "warn");
    command
}

/// A database name of its own, and the owner's and application role's URLs for it.
struct Database {
    name: String,
    server: PgConnectOptions,
    admin_url: String,
    app_url: String,
}

impl Database {
    fn new() -> Self {
        let name = format!("platform_cli_{}", uuid::Uuid::new_v4().simple());
        let server: PgConnectOptions = tests::admin_url().parse().unwrap();
        let (host, port) = (server.get_host().to_owned(), server.get_port());
        Self {
            admin_url: format!("postgres://{}@{host}:{port}/{name}", server.get_username()),
            app_url: format!("postgres://platform_app@{host}:{port}/{name}"),
            name,
            server,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        tests::drop_database(&self.server, &self.name);
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_names_every_command() {
    let output = platform().arg("--help").output().unwrap();
    assert!(output.status.success());
    let text = stdout(&output);
    for command in ["migrate", "serve", "relay"] {
        assert!(text.contains(command), "{text}");
        let output = platform().args([command, "--help"]).output().unwrap();
        assert!(output.status.success(), "{command} --help");
        assert!(
            stdout(&output).contains("--database-url"),
            "{command} --help"
        );
    }
}

#[test]
fn migrate_creates_the_database_then_finds_nothing_to_do() {
    let db = Database::new();
    let first = platform()
        .args(["migrate", "--admin-database-url", &db.admin_url])
        .output()
        .unwrap();
    assert!(first.status.success(), "{first:?}");
    assert_eq!(
        stdout(&first),
        format!(
            "database: created {}\nmigrations: {} applied, the schema is current\n",
            db.admin_url.trim_start_matches("postgres://"),
            eventstore::schema::MIGRATOR.iter().count()
        )
    );
    let again = platform()
        .env("PLATFORM_ADMIN_DATABASE_URL", &db.admin_url)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        stdout(&again),
        "migrations: 0 applied, the schema is current\n"
    );
}

#[test]
fn a_bad_url_is_refused_by_flag_name() {
    let output = platform()
        .args([
            "migrate",
            "--admin-database-url",
            "mysql://root@localhost/x",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        errors.contains("--admin-database-url must be a postgres:// URL"),
        "{errors}"
    );
}

/// Reads the child's stdout lines on a thread, so that the test can wait with a deadline.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

#[test]
fn serve_gets_ready_on_a_new_database_and_stops_on_sigterm() {
    let db = Database::new();
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let stream = gateway::serve::stream_name(&prefix);
    let _cleanup = DeleteStream(stream.clone());
    let mut child = platform()
        .args([
            "serve",
            "--admin-database-url",
            &db.admin_url,
            "--database-url",
            &db.app_url,
            "--nats-prefix",
            &prefix,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let output = lines(&mut child);
    let mut seen = Vec::new();
    loop {
        match output.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let ready = line.starts_with("platform: ready");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not get ready: {seen:?}");
            }
        }
    }
    assert!(seen[0].starts_with("database: created"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("event store: platform_app@")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("log head at position 0")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("relay: stream {stream}"))),
        "{seen:?}"
    );
    // The relay leads (no other relay uses this database) and has created its stream.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let created = runtime.block_on(async {
        let client = async_nats::connect(tests::nats_url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        for _ in 0..100 {
            if jetstream.get_stream(&stream).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    assert!(created, "the relay did not create stream {stream}");

    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = output.try_iter().collect();
    assert!(rest.iter().any(|l| l == "platform: stopping"), "{rest:?}");
}

/// Deletes a JetStream stream when dropped.
struct DeleteStream(String);

impl Drop for DeleteStream {
    fn drop(&mut self) {
        tests::delete_stream(self.0.clone());
    }
}
