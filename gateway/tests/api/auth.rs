//! Signing in, tokens, API keys, revocation, and the tricks an attacker tries with them.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::{PASSWORD, TestApp, code};

const ME: &str = "{ me { principal tenantId permissions user { id email name status } } }";

/// Polls `check` until it holds, or fails after `within`.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_new_tenant_signs_up_logs_in_and_reads_itself() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let me = app.graphql(Some(&owner.token), ME, json!({})).await;
    assert!(me["errors"].is_null(), "{me}");
    assert_eq!(me["data"]["me"]["tenantId"], owner.tenant.as_str());
    assert_eq!(
        me["data"]["me"]["principal"],
        format!("user:{}", owner.user)
    );
    assert_eq!(me["data"]["me"]["user"]["email"], "ada@example.org");
    assert_eq!(me["data"]["me"]["user"]["name"], "Ada");
    let permissions = me["data"]["me"]["permissions"].as_array().unwrap();
    assert!(permissions.contains(&json!("tenants:close")), "{me}");
}

#[tokio::test]
async fn a_wrong_password_gets_unauthenticated_without_saying_which_part_was_wrong() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let wrong = app
        .login(&owner.tenant, "ada@example.org", "not the password at all")
        .await;
    assert_eq!(code(&wrong), "UNAUTHENTICATED");
    let unknown = app
        .login(&owner.tenant, "nobody@example.org", PASSWORD)
        .await;
    assert_eq!(code(&unknown), "UNAUTHENTICATED");
    assert_eq!(
        wrong["errors"][0]["message"],
        unknown["errors"][0]["message"]
    );
}

#[tokio::test]
async fn a_refresh_token_rotates_and_its_reuse_revokes_the_session() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let refresh =
        "mutation($input: RefreshInput!) { refresh(input: $input) { accessToken refreshToken } }";
    let first = app
        .graphql(
            None,
            refresh,
            json!({ "input": { "sessionId": owner.session, "refreshToken": owner.refresh } }),
        )
        .await;
    let next = first["data"]["refresh"]["refreshToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{first}"));
    assert_ne!(next, owner.refresh);
    let new_access = first["data"]["refresh"]["accessToken"].as_str().unwrap();
    assert!(app.graphql(Some(new_access), ME, json!({})).await["errors"].is_null());

    let reused = app
        .graphql(
            None,
            refresh,
            json!({ "input": { "sessionId": owner.session, "refreshToken": owner.refresh } }),
        )
        .await;
    assert_eq!(code(&reused), "UNAUTHENTICATED");
    assert_eq!(
        reused["errors"][0]["extensions"]["reason"],
        "refresh_token_reused"
    );
    // The whole session is revoked: its access tokens stop working too.
    eventually(
        Duration::from_secs(10),
        "the session's tokens are refused",
        || async {
            let me = app.graphql(Some(new_access), ME, json!({})).await;
            me["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        },
    )
    .await;
}

#[tokio::test]
async fn a_logged_out_session_stops_working() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let out = app
        .graphql(
            Some(&owner.token),
            "mutation { logout { position } }",
            json!({}),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    eventually(
        Duration::from_secs(10),
        "the access token is refused",
        || async {
            let me = app.graphql(Some(&owner.token), ME, json!({})).await;
            me["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        },
    )
    .await;
}

fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

#[tokio::test]
async fn forged_and_mangled_tokens_are_refused_over_http() {
    use hmac::{Hmac, Mac};
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let header = header_of(&owner.token);
    let claims = claims_of(&owner.token);
    let kid = header["kid"].as_str().unwrap().to_owned();

    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();

    let mut tampered = claims.clone();
    tampered["tid"] = json!(uuid::Uuid::now_v7());
    let signature = owner.token.split('.').nth(2).unwrap().to_owned();
    let hs256 = {
        let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    };
    let cases = [
        (
            "alg none",
            forged(
                &json!({ "alg": "none", "typ": "at+jwt", "kid": kid }),
                &claims,
                b"",
            ),
        ),
        ("HS256 signed with the public key", hs256),
        (
            "unknown kid",
            forged(
                &json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": "nope" }),
                &claims,
                b"x",
            ),
        ),
        (
            "kid with a path",
            forged(
                &json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": "../../etc/passwd" }),
                &claims,
                b"x",
            ),
        ),
        (
            "kid with SQL",
            forged(
                &json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": "' OR 1=1 --" }),
                &claims,
                b"x",
            ),
        ),
        (
            "a refresh token's type",
            forged(
                &json!({ "alg": "EdDSA", "typ": "refresh+jwt", "kid": kid }),
                &claims,
                b"x",
            ),
        ),
        (
            "another tenant in the claims",
            format!(
                "{}.{}.{signature}",
                owner.token.split('.').next().unwrap(),
                URL_SAFE_NO_PAD.encode(tampered.to_string())
            ),
        ),
        (
            "expired",
            signed_at(&app, -7200, "platform-api", "platform", &owner).await,
        ),
        (
            "not valid yet",
            signed_at(&app, 3600, "platform-api", "platform", &owner).await,
        ),
        (
            "another audience",
            signed_at(&app, 0, "another-api", "platform", &owner).await,
        ),
        (
            "another issuer",
            signed_at(&app, 0, "platform-api", "someone-else", &owner).await,
        ),
        ("the refresh token itself", owner.refresh.clone()),
        ("garbage", "not-a-token".to_owned()),
    ];
    for (case, token) in cases {
        let response = app
            .http
            .post(app.url("/graphql"))
            .bearer_auth(&token)
            .json(&json!({ "query": ME }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(code(&body), "UNAUTHENTICATED", "{case}: {body}");
        assert!(body["data"].is_null(), "{case}: {body}");
    }
}

#[derive(Debug)]
struct Shifted(i64);

impl commands::identity::Clock for Shifted {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::TimeDelta::seconds(self.0)
    }
}

/// A token signed with the platform's own key, by a keyring whose clock is `shift` seconds
/// off, for `audience` and `issuer`.
async fn signed_at(
    app: &TestApp,
    shift: i64,
    audience: &str,
    issuer: &str,
    owner: &crate::Owner,
) -> String {
    use gateway::auth::jwt::{AccessGrant, TokenPolicy};
    use gateway::auth::keys::Keyring;
    let policy = TokenPolicy::new(issuer, audience).unwrap();
    let keyring = Keyring::load_with_clock(
        &app.db.app,
        &app.master,
        policy,
        std::sync::Arc::new(Shifted(shift)),
    )
    .await
    .unwrap();
    let grant = AccessGrant::user(
        owner.user.parse().unwrap(),
        owner.tenant.parse().unwrap(),
        owner.session.parse().unwrap(),
        false,
    );
    keyring.sign(&grant).unwrap().token
}

#[tokio::test]
async fn a_token_signed_right_is_accepted_which_the_refusals_above_depend_on() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let token = signed_at(&app, 0, "platform-api", "platform", &owner).await;
    let me = app.graphql(Some(&token), ME, json!({})).await;
    assert!(me["errors"].is_null(), "{me}");
}

#[tokio::test]
async fn an_api_key_works_as_bearer_and_as_x_api_key_until_it_is_revoked() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let created = app
        .graphql(
            Some(&owner.token),
            "mutation { createApiKey(name: \"ci\", scopes: [\"users:read\"], consistency: STRONG) { id key displayPrefix } }",
            json!({}),
        )
        .await;
    let key = created["data"]["createApiKey"]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let id = created["data"]["createApiKey"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let users = "{ users { edges { node { id } } } }";
    eventually(
        Duration::from_secs(10),
        "the key works as a bearer token",
        || async { app.graphql(Some(&key), users, json!({})).await["errors"].is_null() },
    )
    .await;
    let by_header: Value = app
        .http
        .post(app.url("/graphql"))
        .header("x-api-key", &key)
        .json(&json!({ "query": users }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(by_header["errors"].is_null(), "{by_header}");
    // Its use shows, a few seconds later, beside its metadata.
    eventually(
        Duration::from_secs(15),
        "the key's last use is shown",
        || async {
            let keys = app
                .graphql(
                    Some(&owner.token),
                    "{ apiKeys { edges { node { lastUsedAt } } } }",
                    json!({}),
                )
                .await;
            keys["data"]["apiKeys"]["edges"][0]["node"]["lastUsedAt"].is_string()
        },
    )
    .await;
    // The key's scopes bound it: it cannot read the tenant.
    let tenant = app
        .graphql(Some(&key), "{ tenant { name } }", json!({}))
        .await;
    assert_eq!(code(&tenant), "FORBIDDEN", "{tenant}");

    let revoked = app
        .graphql(
            Some(&owner.token),
            "mutation($id: UUID!) { revokeApiKey(id: $id) { position } }",
            json!({ "id": id }),
        )
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
    eventually(
        Duration::from_secs(10),
        "the revoked key is refused",
        || async {
            code_or_none(&app.graphql(Some(&key), users, json!({})).await)
                == Some("UNAUTHENTICATED")
        },
    )
    .await;
}

fn code_or_none(response: &Value) -> Option<&str> {
    response["errors"][0]["extensions"]["code"].as_str()
}

#[tokio::test]
async fn another_tenants_ids_are_not_found_on_every_query_and_mutation_that_takes_one() {
    let app = TestApp::spawn().await;
    let a = app.owner("ada@example.org").await;
    let b = app.owner("bob@example.org").await;
    // Tenant A owns a key, a service account with a secret, and an invited user.
    let key = app
        .graphql(
            Some(&a.token),
            "mutation { createApiKey(name: \"k\", scopes: [\"users:read\"]) { id } }",
            json!({}),
        )
        .await["data"]["createApiKey"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let account = app
        .graphql(
            Some(&a.token),
            "mutation { createServiceAccount(name: \"bot\", roles: [\"viewer\"]) { id } }",
            json!({}),
        )
        .await["data"]["createServiceAccount"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = app
        .graphql(
            Some(&a.token),
            "mutation($id: UUID!) { issueClientSecret(id: $id) { secretId } }",
            json!({ "id": account }),
        )
        .await["data"]["issueClientSecret"]["secretId"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = json!({ "id": a.user });
    let principal = json!({ "p": format!("user:{}", a.user) });
    let bot = json!({ "p": format!("service_account:{account}") });
    let cases = [
        ("query($id: UUID!) { user(id: $id) { id } }", user.clone()),
        (
            "mutation($id: UUID!) { deactivateUser(userId: $id) { position } }",
            user.clone(),
        ),
        (
            "mutation($id: UUID!) { forgetSubject(userId: $id) { position } }",
            user.clone(),
        ),
        (
            "mutation($p: String!) { assignRole(principal: $p, role: \"admin\") { position } }",
            principal.clone(),
        ),
        (
            "mutation($p: String!) { unassignRole(principal: $p, role: \"owner\") { position } }",
            principal.clone(),
        ),
        (
            "mutation($p: String!) { removeMember(principal: $p) { position } }",
            principal.clone(),
        ),
        (
            "mutation($p: String!) { addMember(principal: $p, roles: [\"viewer\"]) { position } }",
            bot.clone(),
        ),
        (
            "mutation($id: UUID!) { revokeApiKey(id: $id) { position } }",
            json!({ "id": key }),
        ),
        (
            "mutation($id: UUID!) { renameServiceAccount(id: $id, name: \"x\") { position } }",
            json!({ "id": account }),
        ),
        (
            "mutation($id: UUID!) { disableServiceAccount(id: $id) { position } }",
            json!({ "id": account }),
        ),
        (
            "mutation($id: UUID!) { enableServiceAccount(id: $id) { position } }",
            json!({ "id": account }),
        ),
        (
            "mutation($id: UUID!) { issueClientSecret(id: $id) { secretId } }",
            json!({ "id": account }),
        ),
        (
            "mutation($id: UUID!, $s: UUID!) { revokeClientSecret(id: $id, secretId: $s) { position } }",
            json!({ "id": account, "s": secret }),
        ),
    ];
    for (operation, variables) in cases {
        let answer = app.graphql(Some(&b.token), operation, variables).await;
        assert_eq!(code(&answer), "NOT_FOUND", "{operation}: {answer}");
    }
    // Nothing of A's changed: its key and account still work as they did.
    let keys = app
        .graphql(Some(&a.token), "{ apiKeys { edges { node { id revokedAt } } } serviceAccounts { edges { node { name enabled } } } }", json!({}))
        .await;
    assert_eq!(
        keys["data"]["apiKeys"]["edges"][0]["node"]["revokedAt"],
        Value::Null,
        "{keys}"
    );
    assert_eq!(
        keys["data"]["serviceAccounts"]["edges"][0]["node"]["name"], "bot",
        "{keys}"
    );
    assert_eq!(
        keys["data"]["serviceAccounts"]["edges"][0]["node"]["enabled"], true,
        "{keys}"
    );
    // B's lists hold B's rows only.
    let users = app
        .graphql(
            Some(&b.token),
            "{ users { edges { node { id } } } apiKeys { edges { node { id } } } }",
            json!({}),
        )
        .await;
    let ids: Vec<&str> = users["data"]["users"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b.user.as_str()]);
    assert_eq!(users["data"]["apiKeys"]["edges"], json!([]), "{users}");
}

#[tokio::test]
async fn a_service_account_signs_in_with_client_credentials() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let account = app
        .graphql(
            Some(&owner.token),
            "mutation { createServiceAccount(name: \"ingest\", roles: [\"viewer\"], consistency: STRONG) { id } }",
            json!({}),
        )
        .await["data"]["createServiceAccount"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let issued = app
        .graphql(
            Some(&owner.token),
            "mutation($id: UUID!) { issueClientSecret(id: $id) { clientId clientSecret } }",
            json!({ "id": account }),
        )
        .await;
    let secret = issued["data"]["issueClientSecret"]["clientSecret"]
        .as_str()
        .unwrap_or_else(|| panic!("{issued}"))
        .to_owned();
    let exchange = "mutation($input: ClientCredentialsInput!) { clientCredentials(input: $input) { accessToken expiresIn } }";
    let token = app
        .graphql(
            None,
            exchange,
            json!({ "input": { "clientId": account, "clientSecret": secret } }),
        )
        .await;
    let access = token["data"]["clientCredentials"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{token}"))
        .to_owned();
    let me = app.graphql(Some(&access), ME, json!({})).await;
    assert_eq!(
        me["data"]["me"]["principal"],
        format!("service_account:{account}"),
        "{me}"
    );
    assert_eq!(me["data"]["me"]["user"], Value::Null);
    // A viewer reads, and cannot change the tenant.
    let rename = app
        .graphql(
            Some(&access),
            "mutation { renameTenant(name: \"x\") { position } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&rename), "FORBIDDEN", "{rename}");
    let wrong = app
        .graphql(
            None,
            exchange,
            json!({ "input": { "clientId": account, "clientSecret": "pcs_wrong" } }),
        )
        .await;
    assert_eq!(code(&wrong), "UNAUTHENTICATED", "{wrong}");
}

#[tokio::test]
async fn an_internal_failure_tells_the_client_only_its_request_id() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    sqlx::query("DROP TABLE rm_identity.custom_roles CASCADE")
        .execute(&app.db.admin)
        .await
        .unwrap();
    let body = app
        .graphql(Some(&owner.token), "{ roles { name } }", json!({}))
        .await;
    assert_eq!(code(&body), "INTERNAL", "{body}");
    assert_eq!(body["errors"][0]["message"], "internal error");
    assert!(
        body["errors"][0]["extensions"]["requestId"].is_string(),
        "{body}"
    );
    let text = body.to_string();
    for leak in [
        "custom_roles",
        "relation",
        "SELECT",
        "postgres",
        "127.0.0.1",
        ".rs:",
    ] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
}

#[tokio::test]
async fn a_tenant_or_a_role_smuggled_into_an_input_is_refused() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let smuggled = app
        .graphql(
            None,
            "mutation($input: LoginInput!) { login(input: $input) { accessToken } }",
            json!({ "input": { "tenantId": owner.tenant, "email": "ada@example.org", "password": PASSWORD, "role": "owner" } }),
        )
        .await;
    assert_eq!(code(&smuggled), "BAD_USER_INPUT", "{smuggled}");
    let tenant_arg = app
        .graphql(
            Some(&owner.token),
            "mutation($t: UUID!) { renameTenant(name: \"x\", tenantId: $t) { position } }",
            json!({ "t": uuid::Uuid::now_v7() }),
        )
        .await;
    assert_eq!(code(&tenant_arg), "BAD_USER_INPUT", "{tenant_arg}");
}

#[tokio::test]
async fn login_brute_force_is_throttled() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let mut codes = Vec::new();
    for _ in 0..12 {
        let attempt = app
            .login(&owner.tenant, "ada@example.org", "wrong password, again")
            .await;
        codes.push(code(&attempt).to_owned());
    }
    assert!(codes.iter().any(|c| c == "RATE_LIMITED"), "{codes:?}");
    assert_eq!(codes[0], "UNAUTHENTICATED");
}

fn totp_code(secret: &str, step_offset: u64) -> String {
    use commands::security::totp::{TotpSecret, code_at_step, step_at};
    let secret = TotpSecret::from_base32(secret).unwrap();
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap();
    format!("{:06}", code_at_step(&secret, step_at(now) + step_offset))
}

#[tokio::test]
async fn an_mfa_login_asks_for_a_code_and_no_code_is_accepted_twice() {
    let app = TestApp::spawn().await;
    let owner = app.owner("ada@example.org").await;
    let enrollment = app
        .graphql(
            Some(&owner.token),
            "mutation { startTotpEnrollment { secret otpauthUri } }",
            json!({}),
        )
        .await;
    let secret = enrollment["data"]["startTotpEnrollment"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{enrollment}"))
        .to_owned();
    let confirmed = app
        .graphql(
            Some(&owner.token),
            "mutation($code: String!) { confirmTotp(code: $code) { recoveryCodes } }",
            json!({ "code": totp_code(&secret, 0) }),
        )
        .await;
    assert!(confirmed["errors"].is_null(), "{confirmed}");

    // The challenge step: the password alone is not enough any more.
    let first = app.login(&owner.tenant, "ada@example.org", PASSWORD).await;
    assert_eq!(code(&first), "UNAUTHENTICATED");
    assert_eq!(
        first["errors"][0]["extensions"]["reason"], "mfa_required",
        "{first}"
    );

    let with_code = "mutation($input: LoginInput!) { login(input: $input) { accessToken } }";
    let next_code = totp_code(&secret, 1);
    let input = json!({ "input": {
        "tenantId": owner.tenant, "email": "ada@example.org", "password": PASSWORD, "code": next_code
    } });
    let second = app.graphql(None, with_code, input.clone()).await;
    let token = second["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{second}"));
    let me = app.graphql(Some(token), ME, json!({})).await;
    assert!(me["errors"].is_null(), "{me}");
    let claims = claims_of(token);
    assert_eq!(claims["mfa"], true, "{claims}");

    // The same code again, replayed by someone who saw it: refused.
    let replayed = app.graphql(None, with_code, input).await;
    assert_eq!(code(&replayed), "UNAUTHENTICATED", "{replayed}");
    assert!(replayed["data"].is_null() || replayed["data"]["login"].is_null());
}
