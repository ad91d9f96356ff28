//! Counts every executed operation by its type (query, mutation, subscription) and outcome.
//! The type is known once the document is parsed and the operation chosen; the outcome
//! once it has run. Errors of subscriptions, which reach the client over the WebSocket
//! rather than through the HTTP handler, get their request id and a code here.

use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextSubscribe,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType as Kind};
use async_graphql::{Response, ServerResult, Variables};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{RequestContext, Services};
use crate::metrics::{OperationOutcome, OperationType};

/// The extension's factory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Telemetry;

impl ExtensionFactory for Telemetry {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PerRequest::default())
    }
}

/// The state of one request.
#[derive(Debug, Default)]
struct PerRequest {
    kind: Mutex<Option<OperationType>>,
}

#[async_trait::async_trait]
impl Extension for PerRequest {
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let request_id = ctx
            .data_opt::<Arc<RequestContext>>()
            .map(|context| context.request_id);
        next.run(ctx, stream)
            .map(move |mut response| {
                if let Some(request_id) = request_id {
                    crate::http::annotate(&mut response, request_id);
                }
                response
            })
            .boxed()
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        // A document with one operation has one type; with several, the executed one is
        // chosen by name later, and the first one's type is a good enough label.
        if let Some((_, operation)) = document.operations.iter().next() {
            let kind = match operation.node.ty {
                Kind::Query => OperationType::Query,
                Kind::Mutation => OperationType::Mutation,
                Kind::Subscription => OperationType::Subscription,
            };
            *self.kind.lock().unwrap_or_else(PoisonError::into_inner) = Some(kind);
        }
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let response = next.run(ctx, operation_name).await;
        let kind = *self.kind.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(kind), Some(services)) = (kind, ctx.data_opt::<Arc<Services>>()) {
            let outcome = if response.errors.is_empty() {
                OperationOutcome::Ok
            } else {
                OperationOutcome::Error
            };
            services.metrics.record_graphql_operation(kind, outcome);
        }
        response
    }
}
