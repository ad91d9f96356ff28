// Starts GraphiQL on the gateway's page (gateway/src/graphiql.rs). It is a file of its own,
// not an inline script, so that the page's Content-Security-Policy can forbid inline scripts.
//
// Queries and mutations go to POST /graphql on this origin; subscriptions go to the same path
// over graphql-transport-ws (ws: or wss:, after the page's own scheme), with the headers of
// the Headers tab as the connection_init payload.
//
// The Headers tab starts with the hint {"Authorization": "Bearer <token>"}; while it still
// says "<token>" it is not sent, so that anonymous operations keep working until a real
// token is pasted in. A link may preset the editors: ?query=...&variables=...&headers=...
'use strict';

(() => {
  const PLACEHOLDER = 'Bearer <token>';
  const HINT_HEADERS = `{\n  "Authorization": "${PLACEHOLDER}"\n}`;
  const DEFAULT_QUERY = `# Platform GraphQL.
#
# To act as a user, put your access token in the Headers tab below:
#   {"Authorization": "Bearer <token>"}
# (or an API key: {"x-api-key": "<key>"}). Run with Ctrl-Enter.

{
  me {
    principal
    tenantId
  }
}
`;

  // GraphiQL's dialogs add <style> elements (react-remove-scroll), with webpack's nonce
  // global if it is set; the page's CSP allows inline styles with its nonce only.
  const styleNonce = document.currentScript?.dataset.styleNonce;
  if (styleNonce) {
    window.__webpack_nonce__ = styleNonce;
  }

  // GraphiQL's introspection query nests ofType nine deep: depth 15, past the gateway's depth
  // limit (12). Six levels describe every type up to [[T!]!]! and stay within the limit.
  // TypeRef is the query's last fragment (graphql-js's getIntrospectionQuery).
  const SHALLOW_TYPE_REF = `fragment TypeRef on __Type {
  kind name ofType { kind name ofType { kind name ofType {
    kind name ofType { kind name ofType { kind name ofType { kind name } } } } } }
}`;
  const TYPE_REF = /fragment TypeRef on __Type\b[\s\S]*$/;
  const withShallowTypeRef = (request) =>
    request?.operationName === 'IntrospectionQuery' && typeof request.query === 'string'
      ? { ...request, query: request.query.replace(TYPE_REF, SHALLOW_TYPE_REF) }
      : request;

  const endpoint = new URL('/graphql', window.location.href);
  const subscriptions = new URL(endpoint.href);
  subscriptions.protocol = endpoint.protocol === 'https:' ? 'wss:' : 'ws:';

  // The headers without an Authorization that is still the hint.
  const withoutPlaceholder = (headers) => {
    if (!headers || typeof headers !== 'object') {
      return headers;
    }
    const kept = {};
    for (const [name, value] of Object.entries(headers)) {
      const hint =
        name.toLowerCase() === 'authorization' && String(value).trim() === PLACEHOLDER;
      if (!hint) {
        kept[name] = value;
      }
    }
    return kept;
  };

  const fetchOnThisOrigin = (url, options = {}) =>
    window.fetch(url, { ...options, credentials: 'same-origin' });

  const fetcher = GraphiQL.createFetcher({
    url: endpoint.href,
    subscriptionUrl: subscriptions.href,
    fetch: fetchOnThisOrigin,
  });

  const params = new URLSearchParams(window.location.search);
  const preset = (name) => params.get(name) ?? undefined;

  const root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: (request, options) =>
        fetcher(withShallowTypeRef(request), {
          ...options,
          headers: withoutPlaceholder(options?.headers),
        }),
      defaultQuery: DEFAULT_QUERY,
      defaultHeaders: HINT_HEADERS,
      query: preset('query'),
      variables: preset('variables'),
      headers: preset('headers'),
      defaultEditorToolsVisibility: 'headers',
      shouldPersistHeaders: false,
    }),
  );
})();
