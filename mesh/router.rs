//! Routes a gRPC call to its service by the first segment of its path (`/pkg.Service/Method`).
//!
//! Every exemesh server (`serve`, the registry, `up`'s trace view) answers on one port for a few
//! services: its own, health, reflection. A gRPC path names its service before the method, so one
//! comparison per service finds the route. tonic's `Routes` (axum's router underneath) matched a
//! pattern with a captured parameter and boxed each request's and reply's body once more, on every
//! call: about 4k instructions of a health check's 53k in `exemesh serve` (callgrind).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::util::{BoxCloneSyncService, Oneshot, ServiceExt as _};
use tower::{Layer, Service};

/// A service the router can hold: it takes and gives tonic bodies and answers every failure with a
/// gRPC status (tonic's generated servers do).
pub type Route = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Services by name, and what answers the paths none of them owns.
#[derive(Clone, Default)]
pub struct GrpcRouter {
    /// `(/pkg.Service/, service)`: the path prefix each service owns.
    services: Arc<Vec<(Box<str>, Route)>>,
    /// Calls of no listed service; `UNIMPLEMENTED` without one.
    fallback: Option<Route>,
}

impl std::fmt::Debug for GrpcRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.services.iter().map(|(p, _)| &**p).collect();
        f.debug_struct("GrpcRouter")
            .field("services", &names)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl GrpcRouter {
    /// A router with no service: every call is `UNIMPLEMENTED`.
    pub fn new() -> GrpcRouter {
        GrpcRouter::default()
    }

    /// Routes the calls of `service` (by its [`NamedService::NAME`]) to it. A service added again
    /// replaces the earlier one.
    pub fn add_service<S>(self, service: S) -> GrpcRouter
    where
        S: NamedService
            + Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let prefix: Box<str> = format!("/{}/", S::NAME).into();
        let mut services: Vec<(Box<str>, Route)> = self
            .services
            .iter()
            .filter(|(p, _)| *p != prefix)
            .cloned()
            .collect();
        services.push((prefix, BoxCloneSyncService::new(service)));
        GrpcRouter {
            services: Arc::new(services),
            fallback: self.fallback,
        }
    }

    /// Routes the calls of every service not added to `service` (a server whose services are known
    /// only at run time, say).
    pub fn fallback<S>(self, service: S) -> GrpcRouter
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        GrpcRouter {
            fallback: Some(BoxCloneSyncService::new(service)),
            ..self
        }
    }

    /// Puts `layer` in front of every route: the result is a router whose every call goes through
    /// the layer first, then to the route it would have taken.
    pub fn layer<L>(self, layer: L) -> GrpcRouter
    where
        L: Layer<GrpcRouter>,
        L::Service: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        GrpcRouter::new().fallback(layer.layer(self))
    }

    /// The service that owns `path`, if any.
    fn route(&self, path: &str) -> Option<&Route> {
        self.services
            .iter()
            .find(|(prefix, _)| path.starts_with(&**prefix))
            .map(|(_, route)| route)
            .or(self.fallback.as_ref())
    }
}

impl Service<Request<Body>> for GrpcRouter {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        Oneshot<Route, Request<Body>>,
        std::future::Ready<Result<Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call readies its own route (a clone of it), as tonic's router does.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.route(request.uri().path()) {
            Some(route) => futures_util::future::Either::Left(route.clone().oneshot(request)),
            None => {
                let service = request
                    .uri()
                    .path()
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or_default();
                let status = tonic::Status::unimplemented(format!("unknown service {service}"));
                futures_util::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service named `NAME` that answers every call with its name in a header.
    #[derive(Clone)]
    struct Named<const N: usize>;

    const NAMES: [&str; 3] = ["a.v1.Alpha", "a.v1.AlphaBeta", "fallback"];

    impl<const N: usize> NamedService for Named<N> {
        const NAME: &'static str = NAMES[N];
    }

    impl<const N: usize> Service<Request<Body>> for Named<N> {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<Body>) -> Self::Future {
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("x-served-by", http::HeaderValue::from_static(NAMES[N]));
            std::future::ready(Ok(response))
        }
    }

    async fn served_by(router: &GrpcRouter, path: &str) -> String {
        let request = Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("a request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        match response.headers().get("x-served-by") {
            Some(name) => name.to_str().unwrap_or("?").to_string(),
            None => format!(
                "status {}",
                response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
            ),
        }
    }

    #[tokio::test]
    async fn calls_go_to_the_service_their_path_names_and_others_to_the_fallback() {
        let router = GrpcRouter::new()
            .add_service(Named::<0>)
            .add_service(Named::<1>);
        // A whole segment must match: `a.v1.Alpha` does not own `a.v1.AlphaBeta`'s calls.
        assert_eq!(served_by(&router, "/a.v1.Alpha/Get").await, "a.v1.Alpha");
        assert_eq!(
            served_by(&router, "/a.v1.AlphaBeta/Get").await,
            "a.v1.AlphaBeta"
        );
        // Unknown services are UNIMPLEMENTED (12) without a fallback...
        assert_eq!(served_by(&router, "/b.v1.Other/Get").await, "status 12");
        assert_eq!(served_by(&router, "/a.v1.Alph/Get").await, "status 12");
        // ...and the fallback's with one; the named services keep their calls.
        let router = router.fallback(Named::<2>);
        assert_eq!(served_by(&router, "/b.v1.Other/Get").await, "fallback");
        assert_eq!(served_by(&router, "/a.v1.Alpha/Get").await, "a.v1.Alpha");
    }

    #[tokio::test]
    async fn a_layer_sees_every_call_before_its_route() {
        /// Marks every reply as its own.
        #[derive(Clone)]
        struct Stamp;
        impl<S> Layer<S> for Stamp {
            type Service = tower::util::MapResponse<S, fn(Response<Body>) -> Response<Body>>;
            fn layer(&self, inner: S) -> Self::Service {
                tower::util::MapResponse::new(inner, |mut response: Response<Body>| {
                    response
                        .headers_mut()
                        .insert("x-served-by", http::HeaderValue::from_static("layer"));
                    response
                })
            }
        }
        let router = GrpcRouter::new()
            .add_service(Named::<0>)
            .fallback(Named::<2>)
            .layer(Stamp);
        assert_eq!(served_by(&router, "/a.v1.Alpha/Get").await, "layer");
        assert_eq!(served_by(&router, "/b.v1.Other/Get").await, "layer");
    }
}
