//! GraphiQL in a real browser, with no outside network: the `platform` binary serves on a
//! database of its own, Debian's headless Chromium opens `GET /graphql`, and GraphiQL loads
//! the schema, runs an anonymous query (its Headers tab's token hint is not sent), a query
//! with the owner's access token, and a subscription over graphql-transport-ws. Every request
//! the page makes must go to the gateway, and the page's Content-Security-Policy must refuse
//! nothing that GraphiQL does, a settings dialog's inline style included.
//!
//! Chromium is driven over the DevTools protocol (CDP) as plain JSON on a WebSocket: launched
//! with `--remote-debugging-port=0`, its `DevTools listening on ws://...` line gives the
//! browser's socket, a page target is created and attached (flattened sessions), and the
//! page is read and clicked with `Runtime.evaluate`. Waits poll until a deadline, only to
//! fail instead of hanging.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tests::{DeleteKeysOnDrop, DeleteStreamOnDrop, NamedDatabase};
use tokio_tungstenite::tungstenite::Message;

/// The browser: Debian's `chromium` package. `CHROMIUM` names another binary.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long any one step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// A password good enough for the identity rules.
const PASSWORD: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread")]
async fn graphiql_runs_queries_and_a_subscription_in_headless_chromium_with_no_outside_network() {
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    assert!(
        chromium.is_file(),
        "{} is missing: this test needs Debian's chromium package; run scripts/services.sh \
         (it installs it), or set CHROMIUM to a Chromium binary",
        chromium.display()
    );
    let platform = Platform::serve();
    let (token, principal) = platform.owner("owner@example.org").await;

    let browser = Browser::launch(&chromium);
    let mut cdp = Cdp::connect(&browser.devtools).await;
    let page = cdp.open_page().await;
    let origin = format!("http://{}", platform.address);

    // Anonymous: the Headers tab holds the token hint, which is not sent (the gateway would
    // refuse `Bearer <token>` with 401).
    cdp.open_graphiql(&page, &origin, "{ __typename }", None)
        .await;
    cdp.wait_for(&page, &editor_with(PLACEHOLDER), "no header hint")
        .await;
    cdp.click(&page, ".graphiql-execute-button").await;
    let result = cdp.response(&page, "__typename").await;
    assert_eq!(result, json!({ "data": { "__typename": "Query" } }));

    // GraphiQL read the schema: its documentation lists the root types.
    cdp.click(&page, "[aria-label='Show Documentation Explorer']")
        .await;
    cdp.wait_for(
        &page,
        "(document.querySelector('.graphiql-doc-explorer')?.innerText ?? '')
            .includes('subscription: Subscription')",
        "the documentation shows no schema",
    )
    .await;
    // A dialog adds a <style> with the page's nonce; the CSP must let it in.
    cdp.click(&page, "[aria-label='Open settings dialog']")
        .await;
    cdp.wait_for(
        &page,
        "!!document.querySelector('.graphiql-dialog')",
        "no settings dialog",
    )
    .await;

    // A query, with the token set through the Headers tab (preset by the URL).
    let headers = json!({ "Authorization": format!("Bearer {token}") }).to_string();
    cdp.open_graphiql(&page, &origin, "{ me { principal } }", Some(&headers))
        .await;
    cdp.click(&page, ".graphiql-execute-button").await;
    let result = cdp.response(&page, "\"me\"").await;
    assert_eq!(result["data"]["me"]["principal"], principal, "{result}");

    // A subscription: GraphiQL opens ws://<gateway>/graphql itself, with the same headers in
    // its connection_init, and shows the owner's tenant's events from the beginning.
    let subscription = "subscription { events(fromPosition: 0) { position eventType } }";
    cdp.open_graphiql(&page, &origin, subscription, Some(&headers))
        .await;
    cdp.click(&page, ".graphiql-execute-button").await;
    let event = cdp.response(&page, "\"eventType\"").await;
    assert!(
        event["data"]["events"]["position"].as_i64() > Some(0),
        "{event}"
    );
    assert!(event["data"]["events"]["eventType"].is_string(), "{event}");

    // Nothing came from elsewhere, and the policy refused nothing.
    assert!(
        cdp.refused.is_empty(),
        "the page refused: {:?}",
        cdp.refused
    );
    let ws_origin = format!("ws://{}", platform.address);
    let elsewhere: Vec<&String> = cdp
        .requested
        .iter()
        .filter(|url| {
            !(url.starts_with(&format!("{origin}/"))
                || url.starts_with(&format!("{ws_origin}/"))
                || url.starts_with("data:")
                || url.as_str() == "about:blank")
        })
        .collect();
    assert!(elsewhere.is_empty(), "requests to elsewhere: {elsewhere:?}");
    for asset in [
        "/graphiql/react.production.min.js",
        "/graphiql/react-dom.production.min.js",
        "/graphiql/graphiql.min.js",
        "/graphiql/graphiql.min.css",
        "/graphiql/init.js",
    ] {
        let url = format!("{origin}{asset}");
        assert!(cdp.requested.contains(&url), "{url} was not loaded");
    }
    assert!(
        cdp.requested.contains(&format!("{ws_origin}/graphql")),
        "no WebSocket to /graphql: {:?}",
        cdp.requested
    );
}

/// The hint GraphiQL's Headers tab starts with.
const PLACEHOLDER: &str = "Bearer <token>";

/// Whether GraphiQL has mounted, with its query editor holding `query`.
fn editor_holds(query: &str) -> String {
    format!(
        "(() => {{
  const editor = document.querySelector('.graphiql-query-editor .CodeMirror');
  const button = document.querySelector('.graphiql-execute-button');
  return !!(editor && editor.CodeMirror && button && editor.CodeMirror.getValue() === {query});
}})()",
        query = Value::from(query)
    )
}

/// Whether one of GraphiQL's editors contains `text`.
fn editor_with(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('.CodeMirror')]
  .some((e) => e.CodeMirror && e.CodeMirror.getValue().includes({text}))",
        text = Value::from(text)
    )
}

/// The text of GraphiQL's response pane.
const RESPONSE: &str = "(() => {
  const pane = document.querySelector('.result-window .CodeMirror');
  return pane && pane.CodeMirror ? pane.CodeMirror.getValue() : '';
})()";

/// A DevTools protocol connection to the browser, with the URLs its pages requested.
struct Cdp {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Every URL requested by a page, WebSockets included, in order.
    requested: Vec<String>,
    /// Uncaught exceptions in a page, for failure messages.
    exceptions: Vec<String>,
    /// What a page's Content-Security-Policy (or another security check) refused.
    refused: Vec<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Self {
        let (socket, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("DevTools answers")
            .expect("DevTools accepts the connection");
        Self {
            socket,
            next_id: 0,
            requested: Vec::new(),
            exceptions: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Sends a command (to a page's session, if given) and waits for its result, noting the
    /// events that arrive meanwhile.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .await
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// [`Cdp::call`], with the protocol's error (such as a page context that a navigation
    /// destroyed) returned rather than failing the test.
    async fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::Text(command.to_string().into()))
            .await
            .expect("DevTools takes the command");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {DEADLINE:?}"))
                .expect("the DevTools socket is open")
                .expect("DevTools sends a message");
            let Message::Text(text) = message else {
                continue;
            };
            let mut message: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
            if message["id"] == id {
                return match message.get_mut("error") {
                    Some(error) => Err(error.take()),
                    None => Ok(message["result"].take()),
                };
            }
            self.note(&message);
        }
    }

    fn note(&mut self, event: &Value) {
        let params = &event["params"];
        let url = match event["method"].as_str() {
            Some("Network.requestWillBeSent") => &params["request"]["url"],
            Some("Network.webSocketCreated") => &params["url"],
            Some("Runtime.exceptionThrown") => {
                self.exceptions.push(params["exceptionDetails"].to_string());
                return;
            }
            Some("Log.entryAdded") if params["entry"]["source"] == "security" => {
                self.refused.push(params["entry"]["text"].to_string());
                return;
            }
            _ => return,
        };
        if let Some(url) = url.as_str() {
            // A data: URL (a font) is kept short, for readable failure messages.
            let short = if url.starts_with("data:") {
                url.chars().take(40).collect()
            } else {
                url.to_owned()
            };
            self.requested.push(short);
        }
    }

    /// Opens a blank page and attaches to it; returns its session id.
    async fn open_page(&mut self) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Network.enable",
            "Log.enable",
        ] {
            self.call(Some(&session), domain, json!({})).await;
        }
        session
    }

    /// Evaluates `expression` in the page; returns its value.
    async fn evaluate(&mut self, page: &str, expression: &str) -> Value {
        self.try_evaluate(page, expression)
            .await
            .unwrap_or_else(|error| panic!("{expression} failed: {error}"))
    }

    /// [`Cdp::evaluate`], with a failure (an exception, or a context gone with a
    /// navigation) returned.
    async fn try_evaluate(&mut self, page: &str, expression: &str) -> Result<Value, Value> {
        let mut result = self
            .try_call(
                Some(page),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await?;
        match result.get_mut("exceptionDetails") {
            Some(exception) => Err(exception.take()),
            None => Ok(result["result"]["value"].take()),
        }
    }

    /// Evaluates `expression` until it is `true` (errors while a page loads count as not
    /// yet), or fails after the deadline saying `what`.
    async fn wait_for(&mut self, page: &str, expression: &str, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last = self.try_evaluate(page, expression).await;
            if last == Ok(json!(true)) {
                return;
            }
            if Instant::now() > deadline {
                let body = self
                    .try_evaluate(page, "document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "{what} within {DEADLINE:?}: last {last:?}; the page says {body:?}; \
                     exceptions: {:?}; requests: {:?}",
                    self.exceptions, self.requested
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens GraphiQL with `query` (and `headers`, if given) in its editors.
    async fn open_graphiql(
        &mut self,
        page: &str,
        origin: &str,
        query: &str,
        headers: Option<&str>,
    ) {
        let mut params = vec![("query", query)];
        params.extend(headers.map(|headers| ("headers", headers)));
        let url =
            reqwest::Url::parse_with_params(&format!("{origin}/graphql"), params).expect("a URL");
        self.call(Some(page), "Page.navigate", json!({ "url": url.as_str() }))
            .await;
        self.wait_for(page, &editor_holds(query), "GraphiQL did not load")
            .await;
    }

    /// Clicks the element `selector` finds, once there is one.
    async fn click(&mut self, page: &str, selector: &str) {
        let selector = Value::from(selector);
        self.wait_for(
            page,
            &format!("!!document.querySelector({selector})"),
            &format!("no {selector}"),
        )
        .await;
        self.evaluate(page, &format!("document.querySelector({selector}).click()"))
            .await;
    }

    /// Waits until the response pane shows JSON containing `needle`; returns that JSON.
    async fn response(&mut self, page: &str, needle: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = self.try_evaluate(page, RESPONSE).await.unwrap_or_default();
            let text = text.as_str().unwrap_or_default();
            if text.contains(needle)
                && let Ok(value) = serde_json::from_str::<Value>(text)
            {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "GraphiQL showed no response with {needle} within {DEADLINE:?}: {text:?}; \
                 exceptions: {:?}",
                self.exceptions
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Headless Chromium on a profile of its own, in a process group of its own that is killed
/// when this is dropped.
struct Browser {
    child: Child,
    profile: PathBuf,
    /// The browser's DevTools WebSocket URL.
    devtools: String,
}

impl Browser {
    fn launch(chromium: &PathBuf) -> Self {
        let profile =
            std::env::temp_dir().join(format!("platform-graphiql-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("{} does not start: {err}", chromium.display()));
        let lines = lines(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        let devtools = loop {
            match lines.recv_timeout(DEADLINE) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        break url.trim().to_owned();
                    }
                    seen.push(line);
                }
                Err(_) => {
                    kill_group(&mut child);
                    panic!("Chromium gave no DevTools URL: {seen:?}");
                }
            }
        };
        Self {
            child,
            profile,
            devtools,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Ends a child started in a process group of its own, and every process it started there.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-TERM", "--", &group])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

/// Reads a child's output lines on a thread, so that the test can wait with a deadline.
fn lines(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            // The receiver may be gone; the output is still read to the end, so that the
            // child never blocks on a full pipe.
            let _ = sender.send(line);
        }
    });
    receiver
}

/// `platform serve` on a database, NATS stream and Redis prefix of its own, stopped (and
/// they removed) when this is dropped.
struct Platform {
    child: Child,
    address: String,
    http: reqwest::Client,
    // Dropped after the child is stopped, in this order.
    _database: NamedDatabase,
    _stream: DeleteStreamOnDrop,
    _keys: DeleteKeysOnDrop,
    key_dir: PathBuf,
}

impl Platform {
    fn serve() -> Self {
        let database = NamedDatabase::new("platform_graphiql");
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let stream = DeleteStreamOnDrop(gateway::serve::stream_name(&prefix));
        let keys = DeleteKeysOnDrop(prefix.clone());
        let key_dir = std::env::temp_dir().join(format!("platform-{prefix}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_platform"))
            .env("PLATFORM_LOG", "warn")
            .args([
                "serve",
                "--admin-database-url",
                &database.admin_url,
                "--database-url",
                &database.app_url,
                "--nats-url",
                &tests::nats_url(),
                "--nats-prefix",
                &prefix,
                "--redis-url",
                &tests::redis_url(),
                "--redis-prefix",
                &prefix,
                "--http-addr",
                "127.0.0.1:0",
                "--graphiql",
                "true",
                "--master-key-file",
            ])
            .arg(key_dir.join("master.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let output = lines(child.stdout.take().unwrap());
        let mut seen = Vec::new();
        let mut address = None;
        loop {
            match output.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.starts_with("platform: ready") => break,
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("gateway: GraphQL at http://") {
                        address = rest.split('/').next().map(str::to_owned);
                    }
                    seen.push(line);
                }
                Err(_) => {
                    kill_group(&mut child);
                    panic!("platform serve did not get ready: {seen:?}");
                }
            }
        }
        let Some(address) = address else {
            kill_group(&mut child);
            panic!("no gateway line: {seen:?}");
        };
        Self {
            child,
            address,
            http: reqwest::Client::new(),
            _database: database,
            _stream: stream,
            _keys: keys,
            key_dir,
        }
    }

    async fn graphql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = self
            .http
            .post(format!("http://{}/graphql", self.address))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Signs up a tenant and logs its owner in; returns the access token and the owner's
    /// principal as `me` states it.
    async fn owner(&self, email: &str) -> (String, String) {
        let signed_up = self
            .graphql(
                None,
                "mutation($input: SignUpInput!) { signUp(input: $input, consistency: STRONG) { tenantId } }",
                json!({ "input": { "tenantName": "Acme", "email": email, "name": "Ada", "password": PASSWORD } }),
            )
            .await;
        let tenant = signed_up["data"]["signUp"]["tenantId"]
            .as_str()
            .unwrap_or_else(|| panic!("sign-up failed: {signed_up}"));
        let login = self
            .graphql(
                None,
                "mutation($input: LoginInput!) { login(input: $input) { accessToken } }",
                json!({ "input": { "tenantId": tenant, "email": email, "password": PASSWORD } }),
            )
            .await;
        let token = login["data"]["login"]["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("login failed: {login}"))
            .to_owned();
        let me = self
            .graphql(Some(&token), "{ me { principal } }", json!({}))
            .await;
        let principal = me["data"]["me"]["principal"]
            .as_str()
            .unwrap_or_else(|| panic!("me failed: {me}"))
            .to_owned();
        (token, principal)
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.key_dir);
    }
}
