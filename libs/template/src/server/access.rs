//! Layer 3 (gRPC): who may call what. The caller's identity token ([`crate::identity`]) is
//! checked, then the service's rules: each method names the callers allowed to call it.
//! No token, or one this bank did not sign or that has expired: `unauthenticated`
//! (`unauthorized.service_identity`). A caller the method does not name, or a method with no
//! rule: `forbidden.caller`. Health and reflection are open to anyone, so probes and tools
//! such as grpc-health-probe and grpcurl work without a credential.
//!
//! The authenticated [`Caller`] is put in the request's extensions for the handler.
//!
//! A service of the public API (HTTP) is called by the gateway alone: any other caller is
//! refused, and the customer the gateway names in [`CUSTOMER_HEADER`] is put in the request's
//! extensions as [`Customer`]. `/healthz` stays open.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use metrics::Counter;
use tower::{Layer, Service};

use super::Wire;
use crate::error::Error;
use crate::identity::{CUSTOMER_HEADER, Caller, Customer, GATEWAY, Identity};

/// Any authenticated caller (a rule for test fixtures and public reads between services).
pub const ANY_CALLER: &str = "*";

/// Paths open to anyone: health and reflection.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// Who may call one method: `Rule { method: "PlaceHold", callers: &["card-processing"] }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The gRPC method name, as in the contract (`Transfer`).
    pub method: &'static str,
    /// The services (or [`crate::identity::OPERATOR`], or [`ANY_CALLER`]) allowed.
    pub callers: &'static [&'static str],
}

impl Rule {
    /// `callers` may call `method`.
    pub const fn new(method: &'static str, callers: &'static [&'static str]) -> Rule {
        Rule { method, callers }
    }

    /// Whether `caller` may call this rule's method.
    pub fn allows(&self, caller: &str) -> bool {
        self.callers
            .iter()
            .any(|c| *c == caller || *c == ANY_CALLER)
    }
}

/// Who may call.
enum Policy {
    /// gRPC: each method's rule.
    Methods(HashMap<&'static str, Rule>),
    /// A public API service: the gateway, on behalf of a customer.
    GatewayOnly,
}

/// See the module documentation. `None` rules: every request passes (HTTP APIs authenticate
/// their own callers).
#[derive(Clone)]
pub struct AccessLayer {
    checks: Option<Arc<Checks>>,
}

struct Checks {
    service: &'static str,
    identity: Identity,
    policy: Policy,
    unauthenticated: Counter,
    forbidden: Counter,
}

impl AccessLayer {
    /// Checks every call against `rules`, callers against `identity`.
    pub fn new(service: &'static str, identity: Identity, rules: &'static [Rule]) -> Self {
        // The template's own methods (dead letters) come with their rules.
        let template = crate::platform::dead_letters::RULES;
        let rules = template
            .iter()
            .chain(rules)
            .map(|r| (r.method, *r))
            .collect();
        Self::with_policy(service, identity, Policy::Methods(rules))
    }

    /// Lets the gateway alone call, on behalf of the customer it names.
    pub fn gateway_only(service: &'static str, identity: Identity) -> Self {
        Self::with_policy(service, identity, Policy::GatewayOnly)
    }

    fn with_policy(service: &'static str, identity: Identity, policy: Policy) -> Self {
        let refused = |reason: &'static str| {
            let labels = [("service", service), ("reason", reason)];
            metrics::counter!("sterling_server_refused_total", &labels)
        };
        AccessLayer {
            checks: Some(Arc::new(Checks {
                service,
                identity,
                policy,
                unauthenticated: refused("unauthenticated"),
                forbidden: refused("forbidden"),
            })),
        }
    }

    /// Lets every request through.
    pub fn open() -> Self {
        AccessLayer { checks: None }
    }
}

impl Checks {
    fn check<B>(&self, request: &http::Request<B>) -> Result<Option<Caller>, Error> {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) || path == "/healthz" {
            return Ok(None);
        }
        let caller = self
            .identity
            .verify_headers(request.headers())
            .inspect_err(|_| self.unauthenticated.increment(1))?;
        let allowed = match &self.policy {
            Policy::Methods(rules) => {
                let method = path.rsplit('/').next().unwrap_or_default();
                rules.get(method).is_some_and(|r| r.allows(caller.name()))
            }
            Policy::GatewayOnly => caller.name() == GATEWAY,
        };
        match allowed {
            true => Ok(Some(caller)),
            false => {
                self.forbidden.increment(1);
                tracing::warn!(
                    service = self.service,
                    caller = caller.name(),
                    path,
                    "caller not allowed"
                );
                Err(Error::forbidden(
                    "caller",
                    format!("{} may not call {path}", caller.name()),
                ))
            }
        }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;
    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            checks: self.checks.clone(),
        }
    }
}

/// See [`AccessLayer`].
#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    checks: Option<Arc<Checks>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Access<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Wire,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if let Some(checks) = &self.checks {
            match checks.check(&request) {
                Ok(Some(caller)) => {
                    if let Policy::GatewayOnly = checks.policy
                        && let Some(customer) = request
                            .headers()
                            .get(CUSTOMER_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .filter(|c| !c.is_empty())
                    {
                        let customer = Customer(Arc::from(customer));
                        request.extensions_mut().insert(customer);
                    }
                    request.extensions_mut().insert(caller);
                }
                Ok(None) => {}
                Err(error) => return Either::Left(ready(Ok(ResBody::refuse(error)))),
            }
        }
        Either::Right(self.inner.call(request))
    }
}
