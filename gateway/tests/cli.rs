//! The `platform` binary, run as a user runs it: a process with flags and environment, its
//! output read back. Each test uses a database of its own, created by the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use projections::identity::IdentityModel;
use projections::pg::PgProjection as _;
use sqlx::postgres::PgConnectOptions;
use tests::{DeleteKeysOnDrop, DeleteStreamOnDrop, NamedDatabase};

fn platform() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_platform"));
    command.env("PLATFORM_LOG", "warn");
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_names_every_command() {
    let output = platform().arg("--help").output().unwrap();
    assert!(output.status.success());
    let text = stdout(&output);
    for command in [
        "migrate",
        "serve",
        "relay",
        "project",
        "replay",
        "projections",
    ] {
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
    let db = NamedDatabase::new("platform_cli");
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
    let db = NamedDatabase::new("platform_cli");
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let stream = gateway::serve::stream_name(&prefix);
    let _cleanup = (
        DeleteStreamOnDrop(stream.clone()),
        DeleteKeysOnDrop(prefix.clone()),
    );
    let key_dir = std::env::temp_dir().join(format!("platform-{prefix}"));
    let key_file = key_dir.join("master.key");
    let mut child = platform()
        .args([
            "serve",
            "--admin-database-url",
            &db.admin_url,
            "--database-url",
            &db.app_url,
            "--nats-prefix",
            &prefix,
            "--redis-prefix",
            &prefix,
            "--http-addr",
            "127.0.0.1:0",
            "--master-key-file",
            key_file.to_str().unwrap(),
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
    // Dev mode made a master key, readable by its owner only.
    assert!(
        seen.iter().any(|l| l.starts_with("master key: created")),
        "{seen:?}"
    );
    let mode = std::fs::metadata(&key_file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let _ = std::fs::remove_dir_all(&key_dir);
    // The gateway says where it listens, and answers there.
    let address = seen
        .iter()
        .find_map(|l| l.strip_prefix("gateway: GraphQL at http://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no gateway line: {seen:?}"))
        .to_owned();
    let mut stream_to = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(
        &mut stream_to,
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut stream_to, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("relay: stream {stream}"))
                && l.contains("messages kept for good, duplicates dropped within 2m")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("projection identity_hot: following")),
        "{seen:?}"
    );
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

/// A database migrated by the test support, with a few tenants written through the identity
/// commands, and the application role's URL for the binary.
struct Populated {
    runtime: tokio::runtime::Runtime,
    db: tests::TestDb,
    app_url: String,
    head: i64,
}

fn populated(tenants: usize) -> Populated {
    use commands::identity::{Identity, SystemClock};
    use commands::privacy::MasterKey;
    use commands::security::password::Argon2id;
    use domain::ActorKind;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (db, head) = runtime.block_on(async {
        let db = tests::TestDb::new().await;
        let store = db.store();
        let master = MasterKey::from_bytes([7; 32]);
        let identity = Identity::new(
            store.repository.clone(),
            eventstore::PgSubjectKeys::new(db.app.clone(), master.key_wrapping_key()),
            std::sync::Arc::new(Argon2id::owasp()),
            &master,
            std::sync::Arc::new(SystemClock),
        );
        let anonymous = commands::CommandMetadata::new("anonymous", ActorKind::Anonymous, None);
        let mut head = 0;
        for n in 0..tenants {
            let (_, position) = identity
                .create_tenant(
                    &anonymous,
                    &format!("Tenant {n}"),
                    "free",
                    &format!("owner{n}@example.org"),
                    "Owner",
                    "a long enough password",
                )
                .await
                .unwrap();
            head = position.unwrap();
        }
        (db, head)
    });
    let server: PgConnectOptions = tests::admin_url().parse().unwrap();
    let app_url = format!(
        "postgres://platform_app@{}:{}/{}",
        server.get_host(),
        server.get_port(),
        db.name
    );
    Populated {
        runtime,
        db,
        app_url,
        head,
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn replay_rebuilds_a_read_model_through_a_position_and_refuses_what_is_not_there() {
    let p = populated(3);
    let tenants = |p: &Populated| -> i64 {
        p.runtime.block_on(async {
            sqlx::query_scalar("SELECT count(*) FROM rm_identity.tenants")
                .fetch_one(&p.db.admin)
                .await
                .unwrap()
        })
    };

    let redis_prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let _cleanup = DeleteKeysOnDrop(redis_prefix.clone());
    let output = platform()
        .args(["replay", "--database-url", &p.app_url])
        .args(["--redis-prefix", &redis_prefix])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for name in ["identity", "identity_hot"] {
        assert!(
            text.contains(&format!(
                "replay {name}: {} events read, the model stands at position {}",
                p.head, p.head
            )),
            "{text}"
        );
    }
    let hot_position = p.runtime.block_on(async {
        let redis = redis::Client::open(tests::redis_url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let model = projections::RedisModel::new(
            p.db.app.clone(),
            redis,
            &redis_prefix,
            projections::identity_hot::IdentityHotModel,
        )
        .unwrap();
        model.position().await.unwrap()
    });
    assert_eq!(hot_position, Some(p.head));
    assert_eq!(tenants(&p), 3);

    // Through the first tenant's last event only: the model holds exactly one tenant.
    let first_tenant_end: i64 = p.runtime.block_on(async {
        sqlx::query_scalar(
            "SELECT max(global_position) FROM events
              WHERE tenant_id = (SELECT tenant_id FROM events ORDER BY global_position LIMIT 1)",
        )
        .fetch_one(&p.db.admin)
        .await
        .unwrap()
    });
    let output = platform()
        .args([
            "replay",
            "--database-url",
            &p.app_url,
            "--projection",
            "identity",
        ])
        .args(["--to-position", &first_tenant_end.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(tenants(&p), 1);
    let status = platform()
        .args(["projections", "status", "--database-url", &p.app_url])
        .output()
        .unwrap();
    let text = stdout(&status);
    let line = text
        .lines()
        .find(|l| l.starts_with("identity "))
        .unwrap_or_default();
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            "identity",
            &IdentityModel.version().to_string(),
            &first_tenant_end.to_string(),
            &(p.head - first_tenant_end).to_string(),
            "running"
        ],
        "{text}"
    );

    let output = platform()
        .args(["replay", "--database-url", &p.app_url, "--to-position"])
        .arg((p.head + 1).to_string())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--to-position"),
        "{}",
        stderr(&output)
    );

    let output = platform()
        .args([
            "replay",
            "--database-url",
            &p.app_url,
            "--projection",
            "nonesuch",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("there is no projection `nonesuch`") && text.contains("identity"),
        "{text}"
    );
}

#[test]
fn an_operator_sees_a_parked_projection_and_skips_only_its_parked_event_on_the_record() {
    let p = populated(1);
    let run = |args: &[&str]| {
        platform()
            .args(["projections", "--database-url", &p.app_url])
            .args(args)
            .output()
            .unwrap()
    };
    let output = run(&["status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("not set up yet"),
        "{}",
        stdout(&output)
    );

    p.runtime.block_on(async {
        projections::pg::setup(&p.db.app, &projections::identity::IdentityModel)
            .await
            .unwrap();
        projections::pg::park(&p.db.app, "identity", 2, "payload does not decode")
            .await
            .unwrap();
    });
    let text = stdout(&run(&["status"]));
    assert!(
        text.contains("parked on the event at position 2")
            && text.contains("payload does not decode"),
        "{text}"
    );
    assert!(
        text.contains("platform projections skip identity --position 2"),
        "{text}"
    );

    let wrong = run(&[
        "skip",
        "identity",
        "--position",
        "3",
        "--by",
        "ops@example.org",
    ]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("not parked at position 3"),
        "{}",
        stderr(&wrong)
    );

    let skipped = run(&[
        "skip",
        "identity",
        "--position",
        "2",
        "--by",
        "ops@example.org",
    ]);
    assert!(skipped.status.success(), "{}", stderr(&skipped));
    let text = stdout(&run(&["status"]));
    assert!(
        text.contains("skipped: identity at position 2 by ops@example.org")
            && text.contains("payload does not decode"),
        "{text}"
    );
    let resume = run(&["resume", "identity"]);
    assert!(!resume.status.success(), "a running projection was resumed");
    assert!(
        stderr(&resume).contains("is not parked"),
        "{}",
        stderr(&resume)
    );
}

#[test]
fn an_exported_log_verifies_and_a_tampered_copy_fails_with_exit_code_1() {
    use eventstore::audit::{Checkpointer, CheckpointerConfig, SigningKey};

    let p = populated(2);
    let key = std::sync::Arc::new(SigningKey::generate().unwrap().0);
    p.runtime.block_on(async {
        Checkpointer::new(p.db.app.clone(), key.clone(), CheckpointerConfig::default())
            .checkpoint_now()
            .await
            .unwrap()
            .expect("a checkpoint");
    });
    let dir = std::env::temp_dir().join(format!("platform-audit-cli-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, key_file) = (dir.join("log.ndjson"), dir.join("key.json"));
    std::fs::write(&key_file, serde_json::to_vec(key.public()).unwrap()).unwrap();
    let verify = |file: &std::path::Path| {
        platform()
            .args(["audit", "verify"])
            .arg(file)
            .arg("--public-key")
            .arg(&key_file)
            .output()
            .unwrap()
    };

    let exported = platform()
        .args(["audit", "export", "--database-url", &p.app_url, "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert!(stdout(&exported).starts_with(&format!("exported {} events", p.head)));

    let verified = verify(&file);
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    assert!(
        stdout(&verified).starts_with(&format!(
            "verified {} events, 1 checkpoints, positions 1..{}\n",
            p.head, p.head
        )),
        "{}",
        stdout(&verified)
    );

    // The independent verifier agrees.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/audit_verify.py");
    let python = Command::new("python3")
        .arg(&script)
        .arg(&file)
        .arg("--public-key")
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(python.status.code(), Some(0), "{}", stdout(&python));

    // One byte of the first event's record changed.
    let text = std::fs::read_to_string(&file).unwrap();
    let tampered = dir.join("tampered.ndjson");
    std::fs::write(
        &tampered,
        text.replacen("\"sequence\":1,", "\"sequence\":2,", 1),
    )
    .unwrap();
    let failed = verify(&tampered);
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        stdout(&failed).starts_with("FAILED at position 1: edited: "),
        "{}",
        stdout(&failed)
    );

    // The protobuf form, and the live store.
    let protobuf = dir.join("log.pb");
    let exported = platform()
        .args([
            "audit",
            "export",
            "--database-url",
            &p.app_url,
            "--format",
            "protobuf",
            "-o",
        ])
        .arg(&protobuf)
        .output()
        .unwrap();
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert_eq!(verify(&protobuf).status.code(), Some(0));
    let live = platform()
        .args(["audit", "verify", "--db", &p.app_url, "--public-key"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(
        live.status.code(),
        Some(0),
        "{}{}",
        stdout(&live),
        stderr(&live)
    );

    // A key that is not a key is a usage error; a file that is not there cannot be read.
    let usage = platform()
        .args(["audit", "verify"])
        .arg(&file)
        .args(["--public-key", "{\"kid\": \"x\"}"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert_eq!(verify(&dir.join("absent.ndjson")).status.code(), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}
