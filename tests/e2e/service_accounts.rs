//! Machine identities through the real event store: service accounts created with their
//! membership in one write, client secrets issued, rotated, revoked and checked, accounts
//! switched off and on, and nobody handing out a credential stronger than their own.

use commands::identity::{CLIENT_SECRET_PREFIX, IdentityError};
use domain::identity::rbac::{BuiltinRole, Permission};
use tests::TestDb;

use crate::events_in_log;
use crate::identity::{
    Fixture, anonymous, as_user, count, fixture, new_tenant, register_grace, register_linus,
};

/// A registered user of `tenant` who holds only a custom role with `permissions`.
async fn member_with(f: &Fixture, tenant: &str, owner: &str, permissions: &[&str]) -> String {
    let grace = register_grace(f, tenant).await;
    f.identity
        .define_role(&as_user(&owner), tenant, "robot-keeper", permissions)
        .await
        .unwrap();
    f.identity
        .add_member(
            &as_user(&owner),
            tenant,
            &format!("user:{}", grace.user_id),
            &["robot-keeper"],
        )
        .await
        .unwrap();
    grace.user_id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_authenticates_with_its_client_secret_while_it_is_enabled() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let owner = as_user(&owner);
    let (account, position) = f
        .identity
        .create_service_account(&owner, &tenant, " billing-sync ", &["billing-admin"])
        .await
        .unwrap();
    assert!(position.is_some());
    assert_eq!(count(&db, "ServiceAccountCreated").await, 1);
    let account = account.to_string();

    let (issued, _) = f
        .identity
        .issue_client_secret(&owner, &tenant, &account)
        .await
        .unwrap();
    assert!(issued.client_secret.starts_with(CLIENT_SECRET_PREFIX));
    assert_eq!(issued.client_id.to_string(), account);
    let log: Vec<String> = sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
        .fetch_all(&db.app)
        .await
        .unwrap();
    assert!(
        !log.iter().any(|row| row.contains(&issued.client_secret)),
        "the client secret is in the log"
    );

    let client = f
        .identity
        .authenticate_client(&anonymous(), &account, &issued.client_secret)
        .await
        .unwrap();
    assert_eq!(client.tenant_id.to_string(), tenant);
    assert_eq!(client.permissions, BuiltinRole::BillingAdmin.permissions());
    let written = events_in_log(&db).await;

    let wrong = format!("{CLIENT_SECRET_PREFIX}not-the-secret");
    for (client_id, secret) in [
        (account.as_str(), wrong.as_str()),
        (
            "0190b5a0-0000-7000-8000-000000000000",
            issued.client_secret.as_str(),
        ),
        ("not-a-uuid", issued.client_secret.as_str()),
    ] {
        match f
            .identity
            .authenticate_client(&anonymous(), client_id, secret)
            .await
        {
            Err(IdentityError::Unauthenticated {
                reason: "invalid_client",
                ..
            }) => {}
            other => panic!("expected invalid_client for {client_id}, got {other:?}"),
        }
    }
    match f
        .identity
        .authenticate_client(&anonymous(), &account, "hunter2")
        .await
    {
        Err(IdentityError::BadInput {
            field: "clientSecret",
            ..
        }) => {}
        other => panic!("expected bad input, got {other:?}"),
    }
    assert_eq!(
        events_in_log(&db).await,
        written,
        "authentication wrote events"
    );

    f.identity
        .disable_service_account(&owner, &tenant, &account)
        .await
        .unwrap();
    assert!(matches!(
        f.identity
            .authenticate_client(&anonymous(), &account, &issued.client_secret)
            .await,
        Err(IdentityError::Unauthenticated {
            reason: "invalid_client",
            ..
        })
    ));
    match f
        .identity
        .issue_client_secret(&owner, &tenant, &account)
        .await
    {
        Err(IdentityError::Refused { reason, .. }) => assert_eq!(reason, "account_disabled"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    f.identity
        .enable_service_account(&owner, &tenant, &account)
        .await
        .unwrap();
    f.identity
        .authenticate_client(&anonymous(), &account, &issued.client_secret)
        .await
        .unwrap();

    // Removed from the tenant, the account holds nothing there and cannot authenticate.
    f.identity
        .remove_member(&owner, &tenant, &format!("service_account:{account}"))
        .await
        .unwrap();
    assert!(matches!(
        f.identity
            .authenticate_client(&anonymous(), &account, &issued.client_secret)
            .await,
        Err(IdentityError::Unauthenticated { .. })
    ));
    // Added back with a weaker role, it holds exactly that role's permissions.
    f.identity
        .add_member(
            &owner,
            &tenant,
            &format!("service_account:{account}"),
            &["viewer"],
        )
        .await
        .unwrap();
    let client = f
        .identity
        .authenticate_client(&anonymous(), &account, &issued.client_secret)
        .await
        .unwrap();
    assert_eq!(client.permissions, BuiltinRole::Viewer.permissions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_is_rotated_with_overlap_and_a_revoked_one_stops_working() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner) = new_tenant(&f).await;
    let owner = as_user(&owner);
    let (account, _) = f
        .identity
        .create_service_account(&owner, &tenant, "ledger", &["viewer"])
        .await
        .unwrap();
    let account = account.to_string();
    let (old, _) = f
        .identity
        .issue_client_secret(&owner, &tenant, &account)
        .await
        .unwrap();
    let (new, _) = f
        .identity
        .issue_client_secret(&owner, &tenant, &account)
        .await
        .unwrap();
    match f
        .identity
        .issue_client_secret(&owner, &tenant, &account)
        .await
    {
        Err(IdentityError::Refused { reason, .. }) => assert_eq!(reason, "too_many_secrets"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    for secret in [&old.client_secret, &new.client_secret] {
        f.identity
            .authenticate_client(&anonymous(), &account, secret)
            .await
            .unwrap();
    }
    f.identity
        .revoke_client_secret(&owner, &tenant, &account, &old.secret_id.to_string())
        .await
        .unwrap();
    assert!(
        f.identity
            .authenticate_client(&anonymous(), &account, &old.client_secret)
            .await
            .is_err()
    );
    f.identity
        .authenticate_client(&anonymous(), &account, &new.client_secret)
        .await
        .unwrap();
    match f
        .identity
        .revoke_client_secret(&owner, &tenant, &account, "yesterday's")
        .await
    {
        Err(IdentityError::BadInput {
            field: "secretId", ..
        }) => {}
        other => panic!("expected bad input, got {other:?}"),
    }
    f.identity
        .rename_service_account(&owner, &tenant, &account, "ledger-sync")
        .await
        .unwrap();
    assert_eq!(count(&db, "ServiceAccountRenamed").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_creates_or_arms_a_service_account_stronger_than_themselves() {
    let db = TestDb::new().await;
    let f = fixture(&db);
    let (tenant, owner_id) = new_tenant(&f).await;
    let owner = as_user(&owner_id);
    let (strong, _) = f
        .identity
        .create_service_account(&owner, &tenant, "deployer", &["admin"])
        .await
        .unwrap();
    let strong = strong.to_string();
    let keeper = member_with(
        &f,
        &tenant,
        &owner_id,
        &["service_accounts:manage", "tenants:read"],
    )
    .await;
    let keeper = as_user(&keeper);
    let before = events_in_log(&db).await;

    // Creating an account with a role beyond the keeper's permissions writes nothing at all:
    // neither the account nor its membership.
    match f
        .identity
        .create_service_account(&keeper, &tenant, "rogue", &["admin"])
        .await
    {
        Err(IdentityError::Refused { reason, .. }) => assert_eq!(reason, "escalation"),
        other => panic!("expected an escalation refusal, got {other:?}"),
    }
    for op in ["issue", "enable", "disable"] {
        let result = match op {
            "issue" => f
                .identity
                .issue_client_secret(&keeper, &tenant, &strong)
                .await
                .map(|_| None),
            "enable" => {
                f.identity
                    .enable_service_account(&keeper, &tenant, &strong)
                    .await
            }
            _ => {
                f.identity
                    .disable_service_account(&keeper, &tenant, &strong)
                    .await
            }
        };
        match result {
            Err(IdentityError::Refused { reason, .. }) => {
                assert_eq!(reason, "escalation", "{op}")
            }
            other => panic!("expected an escalation refusal for {op}, got {other:?}"),
        }
    }
    assert_eq!(
        events_in_log(&db).await,
        before,
        "a refused command wrote events"
    );

    // Within its own permissions the keeper can act, and renaming needs no more.
    let (weak, _) = f
        .identity
        .create_service_account(&keeper, &tenant, "reader", &["robot-keeper"])
        .await
        .unwrap();
    f.identity
        .issue_client_secret(&keeper, &tenant, &weak.to_string())
        .await
        .unwrap();
    f.identity
        .rename_service_account(&keeper, &tenant, &strong, "deployer-2")
        .await
        .unwrap();

    // A member without the permission is denied, and a bad role or tenant names the field.
    let outsider = register_linus(&f, &tenant).await;
    match f
        .identity
        .create_service_account(&as_user(&outsider.user_id), &tenant, "x", &["viewer"])
        .await
    {
        Err(IdentityError::Forbidden(permission)) => {
            assert_eq!(permission, Permission::ServiceAccountsManage)
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    for (tenant_arg, roles, field) in [
        (tenant.as_str(), &["wizard!"][..], "roles"),
        (tenant.as_str(), &[][..], "roles"),
        ("acme", &["viewer"][..], "tenantId"),
    ] {
        match f
            .identity
            .create_service_account(&owner, tenant_arg, "x", roles)
            .await
        {
            Err(IdentityError::BadInput { field: named, .. }) => assert_eq!(named, field),
            other => panic!("expected bad input naming {field}, got {other:?}"),
        }
    }
}
