//! Prometheus metrics for `/metrics`: HTTP, GraphQL and command counters, rate limiting, and
//! gauges for the relay, the projections and the log that their owners set.
//!
//! Built on `prometheus-client`, the official Rust client, which writes the OpenMetrics text
//! format ([`CONTENT_TYPE`]). Label values come from bounded sets: routes are route templates
//! (never raw paths), commands and projections are names from code, and outcomes and
//! operation types are enums, so a client cannot grow the number of series.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The upper bounds of the request duration histogram's buckets, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The kind of a GraphQL operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationType {
    /// A query.
    Query,
    /// A mutation.
    Mutation,
    /// A subscription.
    Subscription,
}

impl OperationType {
    /// The label value: `query`, `mutation` or `subscription`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Mutation => "mutation",
            Self::Subscription => "subscription",
        }
    }
}

/// How a GraphQL operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationOutcome {
    /// The response carried no error.
    Ok,
    /// The response carried at least one error.
    Error,
}

impl OperationOutcome {
    /// The label value: `ok` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandOutcome {
    /// The command was accepted and its events appended.
    Accepted,
    /// The domain refused the command.
    Refused,
    /// The caller lacks the permission.
    Forbidden,
    /// The input did not parse.
    BadInput,
    /// A concurrent write won; the caller may retry.
    Conflict,
    /// The infrastructure failed.
    Error,
}

impl CommandOutcome {
    /// The label value: `accepted`, `refused`, `forbidden`, `bad_input`, `conflict` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Forbidden => "forbidden",
            Self::BadInput => "bad_input",
            Self::Conflict => "conflict",
            Self::Error => "error",
        }
    }
}

macro_rules! label_value_as_str {
    ($($ty:ty),*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}

label_value_as_str!(OperationType, OperationOutcome, CommandOutcome);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GraphqlLabels {
    operation_type: OperationType,
    outcome: OperationOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CommandLabels {
    command: String,
    outcome: CommandOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProjectionLabel {
    projection: String,
}

type DurationHistograms = Family<Route, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The platform's metrics and the registry that exposes them. Cheap to clone; clones record
/// into the same metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    http_requests: Family<RouteStatus, Counter>,
    http_request_duration: DurationHistograms,
    graphql_operations: Family<GraphqlLabels, Counter>,
    graphql_remembered_answers: Counter,
    commands: Family<CommandLabels, Counter>,
    rate_limited: Family<PolicyLabel, Counter>,
    relay_acked_position: Gauge,
    relay_leader: Gauge,
    projection_position: Family<ProjectionLabel, Gauge>,
    projection_lag_events: Family<ProjectionLabel, Gauge>,
    projection_parked: Family<ProjectionLabel, Gauge>,
    log_head_position: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, at zero, registered for [`Metrics::encode`].
    pub fn new() -> Self {
        let mut registry = Registry::default();

        let http_requests = Family::<RouteStatus, Counter>::default();
        // Counters are exposed with `_total` appended to the registered name.
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status code",
            http_requests.clone(),
        );
        let http_request_duration: DurationHistograms =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from receiving an HTTP request to answering it, by route template",
            Unit::Seconds,
            http_request_duration.clone(),
        );
        let graphql_operations = Family::<GraphqlLabels, Counter>::default();
        registry.register(
            "graphql_operations",
            "GraphQL operations executed, by type and outcome",
            graphql_operations.clone(),
        );
        let graphql_remembered_answers = Counter::default();
        registry.register(
            "graphql_remembered_answers",
            "Query answers served from memory, without running the query again",
            graphql_remembered_answers.clone(),
        );
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands handled, by command and outcome",
            commands.clone(),
        );
        let rate_limited = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by policy",
            rate_limited.clone(),
        );
        let relay_acked_position = Gauge::default();
        registry.register(
            "relay_acked_position",
            "The last log position the relay published and NATS acknowledged",
            relay_acked_position.clone(),
        );
        let relay_leader = Gauge::default();
        registry.register(
            "relay_leader",
            "1 while this process is the active relay, else 0",
            relay_leader.clone(),
        );
        let projection_position = Family::<ProjectionLabel, Gauge>::default();
        registry.register(
            "projection_position",
            "The log position a projection stands at",
            projection_position.clone(),
        );
        let projection_lag_events = Family::<ProjectionLabel, Gauge>::default();
        registry.register(
            "projection_lag_events",
            "Events between the log's head and a projection's position",
            projection_lag_events.clone(),
        );
        let projection_parked = Family::<ProjectionLabel, Gauge>::default();
        registry.register(
            "projection_parked",
            "1 while a projection is parked on a failing event, else 0",
            projection_parked.clone(),
        );
        let log_head_position = Gauge::default();
        registry.register(
            "log_head_position",
            "The position of the last event appended to the log",
            log_head_position.clone(),
        );

        Self {
            inner: Arc::new(Inner {
                registry,
                http_requests,
                http_request_duration,
                graphql_operations,
                graphql_remembered_answers,
                commands,
                rate_limited,
                relay_acked_position,
                relay_leader,
                projection_position,
                projection_lag_events,
                projection_parked,
                log_head_position,
            }),
        }
    }

    /// Counts an answered HTTP request and observes how long it took. `route` is the route
    /// template (such as `/graphql`), never the raw path.
    pub fn record_http_request(&self, route: &'static str, status: u16, duration: Duration) {
        self.inner
            .http_requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
        self.inner
            .http_request_duration
            .get_or_create(&Route { route })
            .observe(duration.as_secs_f64());
    }

    /// Counts an executed GraphQL operation.
    pub fn record_graphql_operation(
        &self,
        operation_type: OperationType,
        outcome: OperationOutcome,
    ) {
        self.inner
            .graphql_operations
            .get_or_create(&GraphqlLabels {
                operation_type,
                outcome,
            })
            .inc();
    }

    /// Counts a query answered from memory.
    pub fn record_remembered_answer(&self) {
        self.inner.graphql_remembered_answers.inc();
    }

    /// Counts a handled command by its name (such as `login`).
    pub fn record_command(&self, command: &str, outcome: CommandOutcome) {
        self.inner
            .commands
            .get_or_create(&CommandLabels {
                command: command.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a request refused by the rate limit `policy` (a policy's name).
    pub fn record_rate_limited(&self, policy: &str) {
        self.inner
            .rate_limited
            .get_or_create(&PolicyLabel {
                policy: policy.to_owned(),
            })
            .inc();
    }

    /// Sets the last position the relay published and had acknowledged.
    pub fn set_relay_acked_position(&self, position: i64) {
        self.inner.relay_acked_position.set(position);
    }

    /// Sets whether this process is the active relay.
    pub fn set_relay_leader(&self, leader: bool) {
        self.inner.relay_leader.set(i64::from(leader));
    }

    /// Sets the position `projection` stands at.
    pub fn set_projection_position(&self, projection: &str, position: i64) {
        self.projection(&self.inner.projection_position, projection)
            .set(position);
    }

    /// Sets how many events `projection` is behind the log's head.
    pub fn set_projection_lag_events(&self, projection: &str, lag: i64) {
        self.projection(&self.inner.projection_lag_events, projection)
            .set(lag);
    }

    /// Sets whether `projection` is parked.
    pub fn set_projection_parked(&self, projection: &str, parked: bool) {
        self.projection(&self.inner.projection_parked, projection)
            .set(i64::from(parked));
    }

    /// Sets the position of the last event appended to the log.
    pub fn set_log_head_position(&self, position: i64) {
        self.inner.log_head_position.set(position);
    }

    fn projection(&self, family: &Family<ProjectionLabel, Gauge>, projection: &str) -> Gauge {
        // A gauge is a handle on shared state: setting the clone sets the series.
        family
            .get_or_create(&ProjectionLabel {
                projection: projection.to_owned(),
            })
            .clone()
    }

    /// Every metric in the OpenMetrics text format, ending in `# EOF`; serve it with
    /// [`CONTENT_TYPE`].
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &Metrics) -> String {
        metrics.encode().expect("metrics encode")
    }

    #[test]
    fn counts_commands_by_name_and_outcome() {
        let metrics = Metrics::new();
        metrics.record_command("login", CommandOutcome::Accepted);
        metrics.record_command("login", CommandOutcome::BadInput);
        metrics.record_command("login", CommandOutcome::BadInput);
        let text = encoded(&metrics);
        assert!(
            text.contains(r#"commands_total{command="login",outcome="accepted"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"commands_total{command="login",outcome="bad_input"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn counts_http_requests_and_observes_their_duration() {
        let metrics = Metrics::new();
        metrics.record_http_request("/graphql", 200, Duration::from_millis(3));
        metrics.record_http_request("/graphql", 200, Duration::from_millis(40));
        metrics.record_http_request("/graphql", 413, Duration::from_millis(1));
        let text = encoded(&metrics);
        assert!(
            text.contains(r#"http_requests_total{route="/graphql",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_requests_total{route="/graphql",status="413"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE http_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT http_request_duration_seconds seconds"),
            "{text}"
        );
        assert!(
            text.contains(r#"http_request_duration_seconds_count{route="/graphql"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_request_duration_seconds_bucket{le="0.005",route="/graphql"} 2"#)
                || text.contains(
                    r#"http_request_duration_seconds_bucket{route="/graphql",le="0.005"} 2"#
                ),
            "{text}"
        );
    }

    #[test]
    fn counts_graphql_operations_and_rate_limited_requests() {
        let metrics = Metrics::new();
        metrics.record_graphql_operation(OperationType::Mutation, OperationOutcome::Error);
        metrics.record_graphql_operation(OperationType::Query, OperationOutcome::Ok);
        metrics.record_rate_limited("login_ip");
        let text = encoded(&metrics);
        for line in [
            r#"graphql_operations_total{operation_type="mutation",outcome="error"} 1"#,
            r#"graphql_operations_total{operation_type="query",outcome="ok"} 1"#,
            r#"rate_limited_total{policy="login_ip"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn exposes_the_gauges_callers_set() {
        let metrics = Metrics::new();
        metrics.set_relay_acked_position(41);
        metrics.set_relay_leader(true);
        metrics.set_log_head_position(42);
        metrics.set_projection_position("identity", 40);
        metrics.set_projection_lag_events("identity", 2);
        metrics.set_projection_parked("identity", true);
        metrics.set_projection_parked("identity", false);
        let text = encoded(&metrics);
        for line in [
            "relay_acked_position 41",
            "relay_leader 1",
            "log_head_position 42",
            r#"projection_position{projection="identity"} 40"#,
            r#"projection_lag_events{projection="identity"} 2"#,
            r#"projection_parked{projection="identity"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn clones_record_into_the_same_metrics_and_the_text_ends_in_eof() {
        let metrics = Metrics::new();
        metrics.clone().record_rate_limited("api_ip");
        let text = encoded(&metrics);
        assert!(
            text.contains(r#"rate_limited_total{policy="api_ip"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
