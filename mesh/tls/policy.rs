//! Who may call which method: allow lists per method, a default, a deny list, and an audit mode, as
//! one tower layer in front of a server's routes. The caller is the identity proven by its client
//! certificate ([`PeerIdentity`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::identity::{PeerIdentity, SpiffeId};
use crate::mesh::telemetry::metrics::{AuthzLabels, metrics};

/// What happens to a call outside the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Refused with `PERMISSION_DENIED`.
    #[default]
    Enforce,
    /// Logged and counted, then allowed (to try a policy on live traffic first).
    Audit,
}

/// One entry of an allow or deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Any identity of the mesh (`"*"`, the default: `mesh-authenticated`).
    AnyMember,
    /// A service of the server's own trust domain (`"shop.v1.OrderService"`).
    Service(String),
    /// A full SPIFFE ID (`"spiffe://other.domain/svc/x"`).
    Id(SpiffeId),
}

impl Principal {
    /// Parses `*`, a service name or a `spiffe://` ID.
    pub fn parse(text: &str) -> Result<Principal, String> {
        let text = text.trim();
        if text == "*" || text == "mesh-authenticated" {
            return Ok(Principal::AnyMember);
        }
        if text.starts_with("spiffe://") {
            return SpiffeId::parse(text).map(Principal::Id).ok_or_else(|| {
                format!("{text:?} is not a spiffe://<trust-domain>/svc/<service> ID")
            });
        }
        SpiffeId::validate_part("service", text)?;
        Ok(Principal::Service(text.to_string()))
    }

    fn matches(&self, id: &SpiffeId, trust_domain: &str) -> bool {
        match self {
            Principal::AnyMember => id.trust_domain == trust_domain,
            Principal::Service(service) => {
                id.trust_domain == trust_domain && id.service == *service
            }
            Principal::Id(expected) => id == expected,
        }
    }
}

/// An authorization policy for one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Enforce or audit.
    pub mode: Mode,
    /// Who may call methods without their own entry.
    pub default: Vec<Principal>,
    /// Per method (simple name `ReserveStock`, or `pkg.Service/Method`): who may call it.
    pub methods: BTreeMap<String, Vec<Principal>>,
    /// Never allowed, whatever the lists say.
    pub deny: Vec<Principal>,
    /// The server's trust domain, for bare service names.
    pub trust_domain: String,
}

impl Policy {
    /// Decides a call of `path` (`/pkg.Service/Method`) by `caller`; the error explains the refusal.
    pub fn check(&self, path: &str, caller: &PeerIdentity) -> Result<(), String> {
        let method = path.trim_start_matches('/');
        // Health checks and reflection are open to every mesh member.
        let infrastructure =
            method.starts_with("grpc.health.v1.") || method.starts_with("grpc.reflection.");
        let td = &self.trust_domain;
        let who = if caller.ids.is_empty() {
            "an unauthenticated caller".to_string()
        } else {
            format!("caller {}", caller.primary())
        };
        if let Some(id) = caller
            .ids
            .iter()
            .find(|id| self.deny.iter().any(|p| p.matches(id, td)))
        {
            return Err(format!("{id} is denied by this server's policy"));
        }
        let simple = method.rsplit('/').next().unwrap_or(method);
        let allowed = if infrastructure {
            &[Principal::AnyMember][..]
        } else {
            self.methods
                .get(method)
                .or_else(|| self.methods.get(simple))
                .unwrap_or(&self.default)
        };
        if caller
            .ids
            .iter()
            .any(|id| allowed.iter().any(|p| p.matches(id, td)))
        {
            return Ok(());
        }
        let list: Vec<String> = allowed
            .iter()
            .map(|p| match p {
                Principal::AnyMember => format!("any member of {td}"),
                Principal::Service(s) => s.clone(),
                Principal::Id(id) => id.to_string(),
            })
            .collect();
        Err(format!(
            "{who} may not call {method} (allowed: {})",
            if list.is_empty() {
                "nobody".to_string()
            } else {
                list.join(", ")
            }
        ))
    }
}

/// Applies a [`Policy`] to every call.
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
}

impl AuthzLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: Policy) -> AuthzLayer {
        AuthzLayer {
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service made by [`AuthzLayer`].
#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B, RB> tower::Service<Request<B>> for Authz<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let unauthenticated = PeerIdentity::default();
        let caller = request
            .extensions()
            .get::<PeerIdentity>()
            .unwrap_or(&unauthenticated);
        if let Err(reason) = self.policy.check(request.uri().path(), caller) {
            let method = request.uri().path().trim_start_matches('/').to_string();
            let audit = self.policy.mode == Mode::Audit;
            metrics()
                .authz_denied
                .get_or_create(&AuthzLabels {
                    method,
                    caller: caller.primary(),
                    decision: if audit { "audit" } else { "denied" }.to_string(),
                })
                .inc();
            if !audit {
                tracing::warn!("permission denied: {reason}");
                let response = tonic::Status::permission_denied(reason).into_http::<RB>();
                return Box::pin(async move { Ok(response) });
            }
            tracing::warn!("audit: would deny: {reason}");
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(service: &str) -> PeerIdentity {
        PeerIdentity {
            ids: vec![SpiffeId::new("mesh.test", service)],
        }
    }

    fn policy() -> Policy {
        Policy {
            mode: Mode::Enforce,
            default: vec![Principal::AnyMember],
            methods: BTreeMap::from([(
                "ReserveStock".to_string(),
                vec![Principal::Service("shop.v1.OrderService".into())],
            )]),
            deny: vec![Principal::Service("intruder".into())],
            trust_domain: "mesh.test".into(),
        }
    }

    #[test]
    fn allow_lists_defaults_and_deny_lists_decide() {
        let p = policy();
        let reserve = "/shop.v1.ProductService/ReserveStock";
        assert_eq!(p.check(reserve, &caller("shop.v1.OrderService")), Ok(()));
        let error = p
            .check(reserve, &caller("shop.v1.UserService"))
            .expect_err("not on the list");
        assert!(
            error.contains("spiffe://mesh.test/svc/shop.v1.UserService may not call shop.v1.ProductService/ReserveStock (allowed: shop.v1.OrderService)"),
            "{error}"
        );
        assert_eq!(
            p.check("/shop.v1.ProductService/GetProduct", &caller("x")),
            Ok(())
        );
        assert!(
            p.check("/shop.v1.ProductService/GetProduct", &caller("intruder"))
                .is_err()
        );
        let other_domain = PeerIdentity {
            ids: vec![SpiffeId::new("elsewhere", "shop.v1.OrderService")],
        };
        assert!(p.check(reserve, &other_domain).is_err());
        assert!(
            p.check("/grpc.health.v1.Health/Check", &caller("x"))
                .is_ok()
        );
        assert!(
            p.check("/grpc.health.v1.Health/Check", &PeerIdentity::default())
                .is_err()
        );
    }

    async fn call_as(mode: Mode, caller: PeerIdentity) -> http::Response<String> {
        use tower::{Layer as _, ServiceExt as _};
        let inner = tower::service_fn(|_request: Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new("served".to_string()))
        });
        let service = AuthzLayer::new(Policy { mode, ..policy() }).layer(inner);
        let mut request = Request::builder()
            .uri("/shop.v1.ProductService/ReserveStock")
            .body(())
            .expect("request");
        request.extensions_mut().insert(caller);
        service.oneshot(request).await.expect("infallible")
    }

    #[tokio::test]
    async fn enforce_refuses_and_audit_lets_through() {
        let refused = call_as(Mode::Enforce, caller("shop.v1.UserService")).await;
        assert_eq!(
            refused
                .headers()
                .get("grpc-status")
                .map(|v| v.as_bytes().to_vec()),
            Some(b"7".to_vec()),
            "PERMISSION_DENIED"
        );
        assert_eq!(refused.body(), "");
        let audited = call_as(Mode::Audit, caller("shop.v1.UserService")).await;
        assert_eq!(audited.body(), "served");
        let allowed = call_as(Mode::Enforce, caller("shop.v1.OrderService")).await;
        assert_eq!(allowed.body(), "served");
    }

    #[test]
    fn principals_parse() {
        assert_eq!(Principal::parse("*"), Ok(Principal::AnyMember));
        assert_eq!(
            Principal::parse("spiffe://a/svc/b"),
            Ok(Principal::Id(SpiffeId::new("a", "b")))
        );
        assert!(Principal::parse("spiffe://a/b").is_err());
        assert!(Principal::parse("has space").is_err());
    }
}
