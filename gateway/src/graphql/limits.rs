//! Limits on a document's shape that async-graphql does not count by itself: the number of
//! aliased fields and the number of directives in the whole document. Depth, complexity and
//! directives per field are the schema's own limits (see [`super::build`]).
//!
//! Both are counted right after parsing, before validation or any resolver runs, so a
//! document of 1,000 aliases of `login` or 10,000 directives costs one parse and nothing more.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ServerError, ServerResult, Variables};

/// Caps on aliases and directives per document.
#[derive(Debug, Clone, Copy)]
pub struct ShapeLimits {
    /// Aliased fields in the document.
    pub max_aliases: usize,
    /// Directives anywhere in the document.
    pub max_directives: usize,
}

impl ExtensionFactory for ShapeLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(*self)
    }
}

#[async_trait::async_trait]
impl Extension for ShapeLimits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let mut count = Count::default();
        for (_, operation) in document.operations.iter() {
            count.directives += operation.node.directives.len();
            for variable in &operation.node.variable_definitions {
                count.directives += variable.node.directives.len();
            }
            count.selection_set(&operation.node.selection_set.node);
        }
        for fragment in document.fragments.values() {
            count.directives += fragment.node.directives.len();
            count.selection_set(&fragment.node.selection_set.node);
        }
        if count.aliases > self.max_aliases {
            return Err(refuse(format!(
                "the document has {} aliases; at most {} are allowed",
                count.aliases, self.max_aliases
            )));
        }
        if count.directives > self.max_directives {
            return Err(refuse(format!(
                "the document has {} directives; at most {} are allowed",
                count.directives, self.max_directives
            )));
        }
        Ok(document)
    }
}

fn refuse(message: String) -> ServerError {
    let mut err = ServerError::new(message, None);
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", "BAD_USER_INPUT");
    extensions.set("reason", "query_too_large");
    err.extensions = Some(extensions);
    err
}

#[derive(Default)]
struct Count {
    aliases: usize,
    directives: usize,
}

impl Count {
    fn selection_set(&mut self, set: &SelectionSet) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    if field.node.alias.is_some() {
                        self.aliases += 1;
                    }
                    self.directives += field.node.directives.len();
                    self.selection_set(&field.node.selection_set.node);
                }
                Selection::FragmentSpread(spread) => {
                    self.directives += spread.node.directives.len();
                }
                Selection::InlineFragment(fragment) => {
                    self.directives += fragment.node.directives.len();
                    self.selection_set(&fragment.node.selection_set.node);
                }
            }
        }
    }
}
