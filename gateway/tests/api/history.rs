//! Point-in-time state (`asOf`): the state at position N equals the state computed by
//! replaying the first N events of the log independently, through the event store's history
//! and through GraphQL; positions and times are checked at the edge; another tenant's ids
//! stay hidden; a forgotten person stays redacted in the past.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use domain::identity::principal::Principal;
use domain::identity::tenant::{Tenant, TenantStatus};
use domain::identity::user::{MfaStatus, User, UserStatus};
use domain::identity::values::UserId;
use eventstore::{History, LogReader, RecordedEvent};
use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{TestApp, code};

const TENANT_AT: &str =
    "query($asOf: AsOf) { tenant(asOf: $asOf) { id name plan status createdAt asOfPosition } }";

const USER_AT: &str = "query($id: UUID!, $asOf: AsOf) { user(id: $id, asOf: $asOf) { id email name redacted status emailVerified mfaEnabled roles createdAt lastLoginAt asOfPosition } }";

/// The first `n` events of the whole log, read in order as an auditor would.
async fn first_events(pool: &PgPool, n: i64) -> Vec<RecordedEvent> {
    LogReader::new(pool.clone())
        .read_range(1, n)
        .try_collect()
        .await
        .unwrap()
}

/// Aggregate `A` with id `id` after the events of `log`: filtered to it and applied with
/// the domain aggregate, independently of the event store's history.
fn replay<A: Aggregate>(log: &[RecordedEvent], id: &str) -> A {
    let mut state = A::default();
    for event in log
        .iter()
        .filter(|event| event.aggregate_type == A::TYPE && event.aggregate_id == id)
    {
        state.apply(serde_json::from_value(event.payload.clone()).unwrap());
    }
    state
}

/// A read transaction as the gateway opens one: read only, as `platform_reader`, bound to
/// `tenant`.
async fn bound(app: &TestApp, tenant: &str) -> Transaction<'static, Postgres> {
    let mut tx = app.db.app.begin_with("BEGIN READ ONLY").await.unwrap();
    sqlx::query(
        "SELECT set_config('platform.tenant_id', $1, true),
                set_config('role', 'platform_reader', true)",
    )
    .bind(tenant)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

async fn head(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(&app.db.admin)
        .await
        .unwrap()
}

async fn recorded_at(app: &TestApp, position: i64) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT recorded_at FROM events WHERE global_position = $1")
        .bind(position)
        .fetch_one(&app.db.admin)
        .await
        .unwrap()
}

/// A query as `token` that waits out the per-user rate limit: these tests read many
/// positions in a row, and are not about the limit.
async fn patiently(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    for _ in 0..100 {
        let answer = app.graphql(Some(token), query, variables.clone()).await;
        if answer["errors"][0]["extensions"]["code"] != "RATE_LIMITED" {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("still rate limited after 5 seconds: {query}");
}

/// Runs a mutation as `token` and returns the position of its last event.
async fn mutate(app: &TestApp, token: &str, mutation: &str, field: &str) -> i64 {
    let response = app.graphql(Some(token), mutation, json!({})).await;
    response["data"][field]["position"]
        .as_i64()
        .unwrap_or_else(|| panic!("{mutation}: {response}"))
}

/// A tenant with some history: renamed, on another plan, a guest invited as viewer and made
/// an admin, suspended and reactivated; and a second tenant whose events interleave.
struct Story {
    app: TestApp,
    owner: crate::Owner,
    other: crate::Owner,
    guest: String,
}

async fn story() -> Story {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let other = app.owner("bob@example.org").await;
    mutate(
        &app,
        &owner.token,
        "mutation { renameTenant(name: \"Acme Two\") { position } }",
        "renameTenant",
    )
    .await;
    let invited = app
        .graphql(
            Some(&owner.token),
            "mutation { invite(email: \"guest@example.org\", roles: [\"viewer\"]) { userId position } }",
            json!({}),
        )
        .await;
    let guest = invited["data"]["invite"]["userId"]
        .as_str()
        .unwrap_or_else(|| panic!("{invited}"))
        .to_owned();
    mutate(
        &app,
        &other.token,
        "mutation { renameTenant(name: \"Other Two\") { position } }",
        "renameTenant",
    )
    .await;
    mutate(
        &app,
        &owner.token,
        "mutation { changePlan(plan: \"team\") { position } }",
        "changePlan",
    )
    .await;
    mutate(
        &app,
        &owner.token,
        &format!(
            "mutation {{ assignRole(principal: \"user:{guest}\", role: \"admin\") {{ position }} }}"
        ),
        "assignRole",
    )
    .await;
    mutate(
        &app,
        &owner.token,
        "mutation { suspendTenant(reason: \"unpaid\") { position } }",
        "suspendTenant",
    )
    .await;
    mutate(
        &app,
        &owner.token,
        "mutation { reactivateTenant { position } }",
        "reactivateTenant",
    )
    .await;
    Story {
        app,
        owner,
        other,
        guest,
    }
}

#[tokio::test]
async fn an_aggregate_as_of_every_position_equals_a_replay_of_the_log_up_to_it() {
    let Story {
        app,
        owner,
        other,
        guest,
    } = story().await;
    let head = head(&app).await;
    let log = first_events(&app.db.admin, head).await;
    assert_eq!(log.len() as i64, head);
    let mut tx = bound(&app, &owner.tenant).await;
    let mut seen_absent = false;
    let mut seen_present = false;
    for n in 0..=head + 2 {
        let prefix = &log[..usize::try_from(n.min(head)).unwrap()];
        let tenant = History::BoundTenant
            .rebuild::<Tenant>(&mut tx, &owner.tenant, n, |_, _| {})
            .await
            .unwrap();
        let expected: Tenant = replay(prefix, &owner.tenant);
        assert_eq!(tenant.state, expected, "the tenant as of {n}");
        assert_eq!(tenant.snapshot, None, "no snapshot is written for tenants");
        seen_absent |= expected.status() == TenantStatus::Absent;
        seen_present |= expected.status() != TenantStatus::Absent;
        for user in [&owner.user, &guest] {
            let rebuilt = History::BoundTenant
                .rebuild::<User>(&mut tx, user, n, |_, _| {})
                .await
                .unwrap();
            assert_eq!(
                rebuilt.state,
                replay::<User>(prefix, user),
                "{user} as of {n}"
            );
        }
        // Another tenant's aggregates have no history in this tenant's transaction.
        let hidden = History::BoundTenant
            .rebuild::<Tenant>(&mut tx, &other.tenant, n, |_, _| {})
            .await
            .unwrap();
        assert_eq!(hidden.state, Tenant::default(), "{n}");
        assert_eq!(hidden.last_position, 0);
    }
    assert!(
        seen_absent && seen_present,
        "N covers before and after creation"
    );
}

#[tokio::test]
async fn a_snapshot_at_or_below_the_position_is_used_and_gives_the_same_state() {
    let Story { app, owner, .. } = story().await;
    let head = head(&app).await;
    let log = first_events(&app.db.admin, head).await;
    // A snapshot of the tenant after its third event, as the snapshot store would write it.
    let third = log
        .iter()
        .filter(|event| event.aggregate_type == "Tenant" && event.aggregate_id == owner.tenant)
        .nth(2)
        .unwrap()
        .clone();
    let at_third: Tenant = replay(
        &log[..usize::try_from(third.global_position).unwrap()],
        &owner.tenant,
    );
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ('Tenant', $1, $2, 1, $3)",
    )
    .bind(&owner.tenant)
    .bind(third.sequence)
    .bind(serde_json::to_value(&at_third).unwrap())
    .execute(&app.db.admin)
    .await
    .unwrap();
    let mut tx = bound(&app, &owner.tenant).await;
    for n in 0..=head {
        let rebuilt = History::BoundTenant
            .rebuild::<Tenant>(&mut tx, &owner.tenant, n, |_, _| {})
            .await
            .unwrap();
        let prefix = &log[..usize::try_from(n).unwrap()];
        assert_eq!(
            rebuilt.state,
            replay::<Tenant>(prefix, &owner.tenant),
            "{n}"
        );
        let expected_snapshot = (n >= third.global_position).then_some(3);
        assert_eq!(rebuilt.snapshot, expected_snapshot, "as of {n}");
    }
    // Through GraphQL too, with the creation time the snapshot covered.
    let now = app
        .graphql(
            Some(&owner.token),
            TENANT_AT,
            json!({ "asOf": { "position": head } }),
        )
        .await;
    let current = app
        .graphql(
            Some(&owner.token),
            "{ tenant { createdAt name } }",
            json!({}),
        )
        .await;
    assert_eq!(
        now["data"]["tenant"]["createdAt"], current["data"]["tenant"]["createdAt"],
        "{now}"
    );
    assert_eq!(now["data"]["tenant"]["name"], "Acme Two");
}

/// What GraphQL should answer for the tenant after `prefix`.
fn tenant_view(prefix: &[RecordedEvent], tenant: &str) -> Option<(String, String, &'static str)> {
    let state: Tenant = replay(prefix, tenant);
    let status = match state.status() {
        TenantStatus::Absent => return None,
        TenantStatus::Active => "active",
        TenantStatus::Suspended => "suspended",
        TenantStatus::Closed => "closed",
    };
    Some((
        state.name().unwrap().as_str().to_owned(),
        state.plan().unwrap().as_str().to_owned(),
        status,
    ))
}

#[tokio::test]
async fn graphql_answers_the_replayed_state_at_every_position() {
    let Story {
        app, owner, guest, ..
    } = story().await;
    let head = head(&app).await;
    let log = first_events(&app.db.admin, head).await;
    for n in 0..=head {
        let prefix = &log[..usize::try_from(n).unwrap()];
        let answer = patiently(
            &app,
            &owner.token,
            TENANT_AT,
            json!({ "asOf": { "position": n } }),
        )
        .await;
        match tenant_view(prefix, &owner.tenant) {
            None => assert_eq!(code(&answer), "NOT_FOUND", "as of {n}: {answer}"),
            Some((name, plan, status)) => {
                let tenant = &answer["data"]["tenant"];
                assert_eq!(tenant["name"], name.as_str(), "as of {n}: {answer}");
                assert_eq!(tenant["plan"], plan.as_str(), "as of {n}");
                assert_eq!(tenant["status"], status, "as of {n}");
                assert_eq!(tenant["asOfPosition"], n);
                assert_eq!(tenant["id"], owner.tenant.as_str());
            }
        }
        let answer = patiently(
            &app,
            &owner.token,
            USER_AT,
            json!({ "id": guest, "asOf": { "position": n } }),
        )
        .await;
        let state: User = replay(prefix, &guest);
        let tenant: Tenant = replay(prefix, &owner.tenant);
        if state.status() == UserStatus::Unregistered {
            assert_eq!(code(&answer), "NOT_FOUND", "as of {n}: {answer}");
            continue;
        }
        let user = &answer["data"]["user"];
        assert_eq!(user["email"], "guest@example.org", "as of {n}: {answer}");
        assert_eq!(user["redacted"], false);
        assert_eq!(user["status"], "invited");
        assert_eq!(user["emailVerified"], state.email_verified());
        assert_eq!(user["mfaEnabled"], state.mfa_status() == MfaStatus::Enabled);
        let guest_id = UserId::from_uuid(guest.parse().unwrap());
        // Between the two aggregates' events of one command, the user exists and is not a
        // member yet: no roles.
        let mut roles: Vec<&str> = tenant
            .roles_of(&Principal::User(guest_id))
            .into_iter()
            .flatten()
            .map(|role| role.as_str())
            .collect();
        roles.sort_unstable();
        assert_eq!(user["roles"], json!(roles), "as of {n}");
        assert_eq!(user["asOfPosition"], n);
    }
    // At the head, the past is the present: the same as the read model shows.
    let past = patiently(
        &app,
        &owner.token,
        USER_AT,
        json!({ "id": guest, "asOf": { "position": head } }),
    )
    .await;
    let mut past_user = past["data"]["user"].clone();
    past_user.as_object_mut().unwrap().remove("asOfPosition");
    let current = current_user(&app, &owner.token, &guest).await;
    assert_eq!(
        past_user, current,
        "as of the head, the user is as the read model shows"
    );
}

async fn current_user(app: &TestApp, token: &str, id: &str) -> Value {
    // The many reads before may have spent the caller's rate limit: wait it out.
    let response = patiently(
        app,
        token,
        "query($id: UUID!) { user(id: $id) { id email name redacted status emailVerified mfaEnabled roles createdAt lastLoginAt } }",
        json!({ "id": id }),
    )
    .await;
    assert!(response["errors"].is_null(), "{response}");
    response["data"]["user"].clone()
}

#[tokio::test]
async fn the_owner_as_of_the_head_is_as_the_read_model_shows() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let head = head(&app).await;
    let past = app
        .graphql(
            Some(&owner.token),
            USER_AT,
            json!({ "id": owner.user, "asOf": { "position": head } }),
        )
        .await;
    let mut past_user = past["data"]["user"].clone();
    assert_eq!(past_user["asOfPosition"], head, "{past}");
    assert!(past_user["lastLoginAt"].is_string(), "{past}");
    past_user.as_object_mut().unwrap().remove("asOfPosition");
    assert_eq!(
        past_user,
        current_user(&app, &owner.token, &owner.user).await
    );
}

#[tokio::test]
async fn as_of_a_time_reads_the_longest_prefix_recorded_by_then() {
    let Story { app, owner, .. } = story().await;
    let renamed: i64 = sqlx::query_scalar(
        "SELECT global_position FROM events WHERE event_type = 'TenantRenamed' AND aggregate_id = $1",
    )
    .bind(&owner.tenant)
    .fetch_one(&app.db.admin)
    .await
    .unwrap();
    let at_rename = recorded_at(&app, renamed).await;
    let before = app
        .graphql(
            Some(&owner.token),
            TENANT_AT,
            json!({ "asOf": { "time": at_rename - Duration::microseconds(1) } }),
        )
        .await;
    assert_eq!(before["data"]["tenant"]["name"], "Acme", "{before}");
    let position = before["data"]["tenant"]["asOfPosition"].as_i64().unwrap();
    assert!(position < renamed, "{before}");
    let after = app
        .graphql(
            Some(&owner.token),
            TENANT_AT,
            json!({ "asOf": { "time": at_rename } }),
        )
        .await;
    assert_eq!(after["data"]["tenant"]["name"], "Acme Two", "{after}");
    assert!(after["data"]["tenant"]["asOfPosition"].as_i64().unwrap() >= renamed);
    let first = recorded_at(&app, 1).await;
    let too_early = app
        .graphql(
            Some(&owner.token),
            TENANT_AT,
            json!({ "asOf": { "time": first - Duration::seconds(1) } }),
        )
        .await;
    assert_eq!(code(&too_early), "NOT_FOUND", "{too_early}");
    let later = app
        .graphql(
            Some(&owner.token),
            TENANT_AT,
            json!({ "asOf": { "time": Utc::now() + Duration::hours(1) } }),
        )
        .await;
    assert_eq!(
        later["data"]["tenant"]["asOfPosition"],
        head(&app).await,
        "{later}"
    );
    assert_eq!(later["data"]["tenant"]["status"], "active");
}

#[tokio::test]
async fn as_of_takes_exactly_one_position_or_time_up_to_the_head() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let head = head(&app).await;
    for (as_of, field) in [
        (json!({}), "asOf"),
        (json!({ "position": 1, "time": Utc::now() }), "asOf"),
        (json!({ "position": -1 }), "asOf.position"),
        (json!({ "position": head + 1 }), "asOf.position"),
    ] {
        for (query, variables) in [
            (TENANT_AT, json!({ "asOf": as_of })),
            (USER_AT, json!({ "id": owner.user, "asOf": as_of })),
        ] {
            let answer = app.graphql(Some(&owner.token), query, variables).await;
            assert_eq!(code(&answer), "BAD_USER_INPUT", "{as_of}: {answer}");
            assert_eq!(
                answer["errors"][0]["extensions"]["field"], field,
                "{answer}"
            );
        }
    }
    let at_head = app
        .graphql(
            Some(&owner.token),
            TENANT_AT,
            json!({ "asOf": { "position": head } }),
        )
        .await;
    assert_eq!(at_head["data"]["tenant"]["name"], "Acme", "{at_head}");
}

#[tokio::test]
async fn another_tenants_user_is_not_found_in_the_past_either() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let other = app.owner("bob@example.org").await;
    let head = head(&app).await;
    let answer = app
        .graphql(
            Some(&owner.token),
            USER_AT,
            json!({ "id": other.user, "asOf": { "position": head } }),
        )
        .await;
    assert_eq!(code(&answer), "NOT_FOUND", "{answer}");
    let unknown = app
        .graphql(
            Some(&owner.token),
            USER_AT,
            json!({ "id": Uuid::now_v7(), "asOf": { "position": head } }),
        )
        .await;
    assert_eq!(code(&unknown), "NOT_FOUND", "{unknown}");
}

#[tokio::test]
async fn reading_the_past_needs_the_same_permission_as_the_present() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let anonymous = app
        .graphql(None, TENANT_AT, json!({ "asOf": { "position": 1 } }))
        .await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED");
    // An API key scoped to sessions may read neither the tenant nor its users, then or now.
    let key = app
        .graphql(
            Some(&owner.token),
            "mutation { createApiKey(name: \"sessions\", scopes: [\"sessions:read\"], consistency: STRONG) { key } }",
            json!({}),
        )
        .await;
    let Some(key) = key["data"]["createApiKey"]["key"].as_str() else {
        panic!("{key}");
    };
    for (query, variables) in [
        (TENANT_AT, json!({ "asOf": { "position": 1 } })),
        (
            USER_AT,
            json!({ "id": owner.user, "asOf": { "position": 1 } }),
        ),
    ] {
        let answer = app.graphql(Some(key), query, variables).await;
        assert_eq!(code(&answer), "FORBIDDEN", "{answer}");
    }
}

#[tokio::test]
async fn a_forgotten_person_stays_redacted_in_the_past() {
    let Story {
        app, owner, guest, ..
    } = story().await;
    let head = head(&app).await;
    // Crypto-shredding: the person's data key is destroyed.
    sqlx::query(
        "UPDATE subject_keys SET wrapped_key = NULL, destroyed_at = now() WHERE subject_id = $1",
    )
    .bind(guest.parse::<Uuid>().unwrap())
    .execute(&app.db.admin)
    .await
    .unwrap();
    let answer = app
        .graphql(
            Some(&owner.token),
            USER_AT,
            json!({ "id": guest, "asOf": { "position": head } }),
        )
        .await;
    let user = &answer["data"]["user"];
    assert_eq!(user["redacted"], true, "{answer}");
    assert_eq!(user["email"], Value::Null);
    assert_eq!(user["status"], "invited");
}
