//! Crypto-shredding: forgetting a person destroys their data key. Afterwards the chain still
//! verifies, no row of `events` holds anyone's personal data in plaintext, the
//! `SubjectForgotten` event holds only ids, the person's sealed fields open as forgotten
//! while everyone else's still open, the read models show them deactivated and redacted,
//! they cannot sign in, and forgetting them again changes nothing.

use commands::identity::IdentityError;
use commands::privacy::{self, MasterKey, Opened, SubjectKeys};
use commands::{ClientIp, CommandMetadata, UserAgent};
use domain::identity::rbac::Permission;
use domain::personal::{PersonalData, SubjectId};
use eventstore::audit::export::{Export, ExportRequest};
use eventstore::audit::verify_file::{self, Outcome, VerifyOptions};
use eventstore::audit::{Checkpointer, CheckpointerConfig, SigningKey};
use eventstore::{LogReader, PgSubjectKeys};
use projections::identity_hot::{IdentityHot, IdentityHotModel};
use projections::redis::{Lookup, RedisModel};
use projections::{Applied, Target, catch_up_on};
use serde_json::Value;
use tests::{TestDb, TestRedis};
use uuid::Uuid;

use crate::identity::{Fixture, OWNER_PASSWORD, anonymous, as_user, count, fixture, register};
use crate::identity_models::build;
use crate::{head, quick_retry, rows};

const BOB_PASSWORD: &str = "Bob has a long passphrase";
const CAROL_PASSWORD: &str = "Carol has a long passphrase";

/// Every plaintext personal value the scene gives the platform, of every person.
const PERSONAL: &[&str] = &[
    "ada@example.org",
    "Ada Lovelace",
    "bob.shredded@example.org",
    "Bob Forgettable",
    "carol.kept@example.org",
    "Carol Remembered",
    "dave.invited@example.org",
    "198.51.100.23",
    "203.0.113.77",
    "192.0.2.150",
    "ShredTestBrowser/7.1",
    "AdminConsole/2.0",
    "CarolPhone/3.3",
];

/// Metadata of a request from `ip` with `agent`.
fn from(mut metadata: CommandMetadata, ip: &str, agent: &str) -> CommandMetadata {
    metadata.client_ip = Some(ClientIp::Plain(ip.parse().unwrap()));
    metadata.user_agent = Some(UserAgent::plain(agent));
    metadata
}

fn keys(db: &TestDb) -> PgSubjectKeys {
    PgSubjectKeys::new(
        db.app.clone(),
        MasterKey::from_bytes([9; 32]).key_wrapping_key(),
    )
}

/// What the scene made.
struct Scene {
    tenant: String,
    ada: String,
    bob: String,
    carol: String,
    dave: String,
}

/// Ada creates Acme; Bob and Carol register and join it, Dave is invited; Bob and Carol
/// sign in from their own addresses and browsers, and Ada acts from hers.
async fn scene(f: &Fixture) -> Scene {
    let id = &f.identity;
    let admin = |ada: &str| from(as_user(&ada), "192.0.2.150", "AdminConsole/2.0");
    let (created, _) = id
        .create_tenant(
            &from(anonymous(), "192.0.2.150", "AdminConsole/2.0"),
            "Acme",
            "free",
            "Ada@Example.org",
            "Ada Lovelace",
            OWNER_PASSWORD,
        )
        .await
        .unwrap();
    let commands::bus::Outcome::Done(created) = created else {
        panic!("replayed")
    };
    let tenant = created.tenant_id.to_string();
    let ada = created.owner_id.to_string();
    let bob = register(
        f,
        &tenant,
        "Bob.Shredded@example.org",
        "Bob Forgettable",
        BOB_PASSWORD,
    )
    .await
    .user_id
    .to_string();
    let carol = register(
        f,
        &tenant,
        "carol.kept@example.org",
        "Carol Remembered",
        CAROL_PASSWORD,
    )
    .await
    .user_id
    .to_string();
    for user in [&bob, &carol] {
        id.add_member(&admin(&ada), &tenant, &format!("user:{user}"), &["member"])
            .await
            .unwrap();
    }
    let (invited, _) = id
        .invite(
            &admin(&ada),
            &tenant,
            "dave.invited@example.org",
            &["viewer"],
        )
        .await
        .unwrap();
    id.login(
        &from(anonymous(), "198.51.100.23", "ShredTestBrowser/7.1"),
        &tenant,
        "bob.shredded@example.org",
        BOB_PASSWORD,
    )
    .await
    .unwrap();
    id.revoke_all_sessions(&from(
        as_user(&bob),
        "198.51.100.23",
        "ShredTestBrowser/7.1",
    ))
    .await
    .unwrap();
    id.login(
        &from(anonymous(), "203.0.113.77", "CarolPhone/3.3"),
        &tenant,
        "carol.kept@example.org",
        CAROL_PASSWORD,
    )
    .await
    .unwrap();
    Scene {
        tenant,
        ada,
        bob,
        carol,
        dave: invited.user_id.to_string(),
    }
}

/// The text of every event's payload and metadata, lowercased.
async fn log_text(db: &TestDb) -> Vec<(i64, String, String)> {
    rows(
        &db.admin,
        "SELECT global_position, lower(payload::text), lower(metadata::text)
           FROM events ORDER BY global_position",
    )
    .await
}

fn assert_no_plaintext(log: &[(i64, String, String)]) {
    for (position, payload, metadata) in log {
        for value in PERSONAL {
            let value = value.to_lowercase();
            assert!(
                !payload.contains(&value) && !metadata.contains(&value),
                "{value:?} is in plaintext at position {position}"
            );
        }
    }
}

/// The sealed email of `user`'s registration or invitation.
async fn sealed_email(db: &TestDb, user: &str) -> PersonalData {
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM events
          WHERE aggregate_type = 'User' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(user)
    .fetch_one(&db.admin)
    .await
    .unwrap();
    let event = payload
        .as_object()
        .and_then(|o| o.values().next())
        .unwrap()
        .clone();
    serde_json::from_value(event["email"].clone()).unwrap()
}

async fn opened(db: &TestDb, sealed: &PersonalData, field: &str) -> Opened {
    let key = keys(db).find(sealed.subject()).await.unwrap();
    privacy::open(key.as_ref(), sealed, field).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_person_leaves_a_verifiable_chain_and_no_plaintext_personal_data_in_the_log() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let s = scene(&f).await;
    let forget_as = from(as_user(&s.ada), "192.0.2.150", "AdminConsole/2.0");
    let position = f
        .identity
        .forget_subject(&forget_as, &s.tenant, &s.bob)
        .await
        .unwrap()
        .expect("forgetting writes events");

    // The chain verifies over the whole log.
    let reader = LogReader::new(db.app.clone());
    let verification = reader.verify(1, None).await.unwrap();
    assert!(verification.is_intact(), "{:?}", verification.fault);
    assert_eq!(verification.to, head(&db).await);
    assert!(verification.to >= position);

    // No plaintext personal data of anyone, forgotten or not, in payloads or metadata.
    let log = log_text(&db).await;
    assert!(log.len() > 20, "the scene wrote the log");
    assert_no_plaintext(&log);

    // An auditor's signed export of the whole log verifies after the forget, and holds
    // nobody's personal data in plaintext: Bob's fields stay there only as ciphertext that
    // no key opens any more.
    let signer = std::sync::Arc::new(SigningKey::generate().unwrap().0);
    Checkpointer::new(
        db.app.clone(),
        signer.clone(),
        CheckpointerConfig::default(),
    )
    .checkpoint_now()
    .await
    .unwrap()
    .expect("a checkpoint of the head");
    let export = Export::prepare(&db.app, &ExportRequest::default())
        .await
        .unwrap();
    let chunks: Vec<_> = futures::TryStreamExt::try_collect(export.into_stream())
        .await
        .unwrap();
    let file: Vec<u8> = chunks.into_iter().flat_map(|chunk| chunk.bytes).collect();
    let options = VerifyOptions {
        keys: vec![signer.public().clone()],
        ..VerifyOptions::default()
    };
    let outcome =
        verify_file::verify_reader(std::io::Cursor::new(file.clone()), &options, |_| {}).unwrap();
    assert!(matches!(outcome, Outcome::Verified(_)), "{outcome:?}");
    let text = String::from_utf8(file).unwrap().to_lowercase();
    assert!(text.contains("subjectforgotten"));
    for value in PERSONAL {
        assert!(
            !text.contains(&value.to_lowercase()),
            "{value:?} is in plaintext in the export"
        );
    }

    // The IP and the user agent were recorded, sealed.
    let agents: Vec<(Option<String>,)> = rows(
        &db.admin,
        "SELECT metadata->>'user_agent' FROM events WHERE event_type = 'SessionOpened'",
    )
    .await;
    assert_eq!(agents.len(), 2);
    for (agent,) in agents {
        let sealed: PersonalData = serde_json::from_str(&agent.unwrap()).unwrap();
        assert!(matches!(
            opened(&db, &sealed, "user_agent").await,
            Opened::Plain(_) | Opened::Forgotten
        ));
    }

    // SubjectForgotten holds the user's id and the time, nothing else; its metadata's IP
    // and user agent are the administrator's, sealed under her key.
    let (payload, metadata): (Value, Value) = sqlx::query_as(
        "SELECT payload, metadata FROM events WHERE event_type = 'SubjectForgotten'",
    )
    .fetch_one(&db.admin)
    .await
    .unwrap();
    let body = payload["SubjectForgotten"].as_object().unwrap();
    assert_eq!(
        body.keys().map(String::as_str).collect::<Vec<_>>(),
        ["forgotten_at", "user_id"]
    );
    assert_eq!(body["user_id"], s.bob.as_str());
    for field in ["client_ip", "user_agent"] {
        let sealed: PersonalData = serde_json::from_str(metadata[field].as_str().unwrap()).unwrap();
        assert_eq!(sealed.subject().to_string(), s.ada, "{field}");
    }

    // Bob's fields are gone for good; Ada's, Carol's and Dave's still open.
    let bob = sealed_email(&db, &s.bob).await;
    assert_eq!(opened(&db, &bob, "email").await, Opened::Forgotten);
    assert_eq!(
        keys(&db)
            .key_for(SubjectId::from_uuid(s.bob.parse().unwrap()))
            .await
            .err(),
        Some(privacy::PrivacyError::Forgotten(SubjectId::from_uuid(
            s.bob.parse().unwrap()
        )))
    );
    for (user, email) in [
        (&s.ada, "ada@example.org"),
        (&s.carol, "carol.kept@example.org"),
        (&s.dave, "dave.invited@example.org"),
    ] {
        let sealed = sealed_email(&db, user).await;
        assert_eq!(
            opened(&db, &sealed, "email").await,
            Opened::Plain(email.into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_person_cannot_sign_in_and_forgetting_them_twice_changes_nothing() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let s = scene(&f).await;
    let admin = as_user(&s.ada);
    f.identity
        .forget_subject(&admin, &s.tenant, &s.bob)
        .await
        .unwrap();
    let events = crate::events_in_log(&db).await;

    let refused = f
        .identity
        .login(
            &from(anonymous(), "198.51.100.23", "ShredTestBrowser/7.1"),
            &s.tenant,
            "bob.shredded@example.org",
            BOB_PASSWORD,
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(IdentityError::Unauthenticated {
                reason: "invalid_credentials",
                ..
            })
        ),
        "{refused:?}"
    );

    let again = f
        .identity
        .forget_subject(&admin, &s.tenant, &s.bob)
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(count(&db, "SubjectForgotten").await, 1);
    // The refused login wrote nothing either: the address is no longer anyone's.
    assert_eq!(crate::events_in_log(&db).await, events);

    // The address is free again, for a new person.
    let newcomer = register(
        &f,
        &s.tenant,
        "bob.shredded@example.org",
        "Someone Else",
        "a brand new long passphrase",
    )
    .await;
    assert_ne!(newcomer.user_id.to_string(), s.bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_another_member_with_privacy_forget_can_forget_a_person_and_the_last_owner_stays() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let s = scene(&f).await;
    let id = &f.identity;
    let ada = as_user(&s.ada);
    // Carol, a member, lacks the permission; nobody forgets themselves.
    assert!(matches!(
        id.forget_subject(&as_user(&s.carol), &s.tenant, &s.bob)
            .await,
        Err(IdentityError::Forbidden(_))
    ));
    for user in [&s.bob, &s.ada] {
        assert!(matches!(
            id.forget_subject(&as_user(user), &s.tenant, user).await,
            Err(IdentityError::Refused {
                reason: "forget_self",
                ..
            })
        ));
    }
    // Carol becomes a steward holding every permission, without being an owner: she may
    // forget Bob, but not Ada, the tenant's last owner.
    let every: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
    id.define_role(&ada, &s.tenant, "steward", &every)
        .await
        .unwrap();
    id.assign_role(&ada, &s.tenant, &format!("user:{}", s.carol), "steward")
        .await
        .unwrap();
    assert!(matches!(
        id.forget_subject(&as_user(&s.carol), &s.tenant, &s.ada)
            .await,
        Err(IdentityError::Refused {
            reason: "last_owner",
            ..
        })
    ));
    // A user of another tenant is not found there.
    let (other, _) = id
        .create_tenant(
            &anonymous(),
            "Globex",
            "free",
            "hank@example.org",
            "Hank Scorpio",
            OWNER_PASSWORD,
        )
        .await
        .unwrap();
    let commands::bus::Outcome::Done(other) = other else {
        panic!("replayed")
    };
    assert!(matches!(
        id.forget_subject(&ada, &s.tenant, &other.owner_id.to_string())
            .await,
        Err(IdentityError::Refused {
            reason: "user_not_found",
            ..
        })
    ));
    // No refusal destroyed a key.
    assert_eq!(count(&db, "SubjectForgotten").await, 0);
    for user in [&s.ada, &s.bob, &s.carol] {
        let sealed = sealed_email(&db, user).await;
        assert!(matches!(
            opened(&db, &sealed, "email").await,
            Opened::Plain(_)
        ));
    }
    id.forget_subject(&as_user(&s.carol), &s.tenant, &s.bob)
        .await
        .unwrap();
    assert_eq!(count(&db, "SubjectForgotten").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_read_models_show_a_forgotten_person_deactivated_and_redacted() {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let f = fixture(&db);
    let s = scene(&f).await;
    f.identity
        .forget_subject(&as_user(&s.ada), &s.tenant, &s.bob)
        .await
        .unwrap();
    let forgotten_at = f.clock_now();

    build(&db, 50).await;
    let users: Vec<(Uuid, String, Option<chrono::DateTime<chrono::Utc>>, String)> = rows(
        &db.admin,
        "SELECT user_id, status, forgotten_at, email_sealed FROM rm_identity.users
          ORDER BY created_at",
    )
    .await;
    assert_eq!(users.len(), 4);
    for (user, status, forgotten, email_sealed) in users {
        let sealed: PersonalData = serde_json::from_str(&email_sealed).unwrap();
        let opens = opened(&db, &sealed, "email").await;
        if user.to_string() == s.bob {
            assert_eq!(status, "deactivated");
            assert_eq!(
                forgotten.map(|at| at.timestamp_micros()),
                Some(forgotten_at.timestamp_micros())
            );
            assert_eq!(opens, Opened::Forgotten, "the projection shows it redacted");
        } else {
            assert_eq!(forgotten, None);
            assert!(matches!(opens, Opened::Plain(_)));
        }
    }
    let members: Vec<(String,)> = rows(
        &db.admin,
        "SELECT principal FROM rm_identity.memberships ORDER BY principal",
    )
    .await;
    assert!(
        !members.iter().any(|(p,)| p.ends_with(&s.bob)),
        "{members:?}"
    );

    let model = RedisModel::new(
        db.app.clone(),
        redis.conn.clone(),
        &redis.prefix,
        IdentityHotModel,
    )
    .unwrap();
    let reader = LogReader::new(db.app.clone());
    model.prepare(&reader, 50).await.unwrap();
    assert_eq!(
        catch_up_on(&model, &reader, None, 50, quick_retry(2))
            .await
            .unwrap(),
        Applied::Through {
            position: head(&db).await
        }
    );
    let hot = IdentityHot::new(redis.conn.clone(), &redis.prefix);
    let Lookup::Found {
        value: Some(bob), ..
    } = hot.principal(&format!("user:{}", s.bob)).await.unwrap()
    else {
        panic!("the hot model does not know Bob");
    };
    assert_eq!(bob.status, "deactivated");
    assert_eq!(
        bob.sessions_valid_after_us,
        Some(forgotten_at.timestamp_micros())
    );
    let Lookup::Found { value: perms, .. } = hot
        .permissions(s.tenant.parse().unwrap(), &format!("user:{}", s.bob))
        .await
        .unwrap()
    else {
        panic!("the hot model is unavailable");
    };
    assert_eq!(perms, None, "a forgotten person holds no permission");
}

impl Fixture {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use commands::identity::Clock;
        self.clock.now()
    }
}
