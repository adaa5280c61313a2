//! `shop.v1.UserService`, rewritten natively in Rust against the same contract as `shop.py worker`,
//! and joining the same mesh: callers cannot tell the two apart.
//!
//! ```sh
//! shop-user-native --discovery 127.0.0.1:7700 [--listen 127.0.0.1:0]
//! ```
//!
//! What exemesh provides here, in a few calls: the h2c server with graceful drain
//! (`mesh::transport`), health and reflection (`mesh::introspection`), registration with a lease that
//! is deregistered first at shutdown (`mesh::discovery::registration`), and a balanced channel to
//! another service by name for the generated client (`mesh::channel::MeshChannel`).

use std::time::Duration;

use exemesh::mesh::channel::{CallPolicy, MeshChannel};
use exemesh::mesh::discovery::registration::Registration;
use exemesh::mesh::discovery::{Instance, connect};
use exemesh::mesh::introspection::{set_status, with_introspection};
use exemesh::mesh::router::GrpcRouter;
use exemesh::mesh::transport::{Http2Settings, serve_h2c};
use tonic::{Request, Response, Status};

/// Generated from examples/shop/proto/shop/v1/*.proto.
pub mod pb {
    tonic::include_proto!("shop.v1");
    /// The contracts' descriptors, for reflection.
    pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shop_descriptor.bin"));
}

use pb::product_service_client::ProductServiceClient;
use pb::user_service_server::{UserService, UserServiceServer};
use pb::{GetProductRequest, GetUserRequest, Tier, User};

/// The same users as shop.py.
fn users() -> Vec<User> {
    let user = |id: &str, name: &str, email: &str, tier: Tier| User {
        id: id.into(),
        name: name.into(),
        email: email.into(),
        tier: tier as i32,
    };
    vec![
        user("u1", "Ada Lovelace", "ada@example.com", Tier::Gold),
        user("u2", "Alan Turing", "alan@example.com", Tier::Standard),
        user("u3", "Grace Hopper", "grace@example.com", Tier::Gold),
        user(
            "u4",
            "Edsger Dijkstra",
            "edsger@example.com",
            Tier::Unspecified,
        ),
    ]
}

struct Users(Vec<User>);

#[tonic::async_trait]
impl UserService for Users {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let id = &request.get_ref().id;
        // The same message as shop.py, so callers see no difference.
        self.0
            .iter()
            .find(|u| &u.id == id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no user '{id}'")))
    }
}

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = flag("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    // In an mTLS mesh (`--tls-dir DIR` or EXEMESH_TLS_DIR, as `exemesh serve` takes it), serve and
    // call with that identity: callers cannot tell this server from the wrapped one.
    if let Some(dir) = flag("--tls-dir").or_else(|| std::env::var("EXEMESH_TLS_DIR").ok()) {
        exemesh::mesh::tls::install(exemesh::mesh::tls::material::IdentityDir::load(
            std::path::Path::new(&dir),
        )?)?;
    }

    let descriptors = prost::Message::decode(pb::DESCRIPTORS)?;
    let routes = GrpcRouter::new().add_service(UserServiceServer::new(Users(users())));
    let (routes, health) = with_introspection(routes, vec![descriptors])?;
    set_status(
        &health,
        "shop.v1.UserService",
        tonic_health::ServingStatus::Serving,
    )
    .await;

    let registration = match flag("--discovery") {
        Some(spec) => {
            let discovery = connect(&spec)?;
            // Calling another service by name: a generated client over a mesh channel.
            let products = MeshChannel::new(
                discovery.clone(),
                "shop.v1.ProductService",
                CallPolicy::default(),
            );
            tokio::spawn(async move {
                let mut client = ProductServiceClient::new(products);
                let mut request = Request::new(GetProductRequest { id: "p1".into() });
                request.set_timeout(Duration::from_secs(5));
                match client.get_product(request).await {
                    Ok(p) => eprintln!(
                        "shop-user-native: the catalogue answers through the mesh: p1 = {}",
                        p.get_ref().name
                    ),
                    Err(e) => eprintln!(
                        "shop-user-native: ProductService not reachable yet ({})",
                        e.message()
                    ),
                }
            });
            let instance = Instance {
                id: flag("--instance-id")
                    .unwrap_or_else(|| format!("user-native-{}", std::process::id())),
                services: vec!["shop.v1.UserService".into()],
                address: addr.to_string(),
                metadata: [("impl".to_string(), "rust".to_string())].into(),
                ..Default::default()
            };
            Some(Registration::start(
                discovery,
                instance,
                Duration::from_secs(5),
            ))
        }
        None => None,
    };
    println!("listening on {addr}");

    let shutdown = async move {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            },
            _ => std::future::pending().await,
        }
        // Deregister first, then drain.
        set_status(
            &health,
            "shop.v1.UserService",
            tonic_health::ServingStatus::NotServing,
        )
        .await;
        if let Some(registration) = registration {
            registration.stop().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    serve_h2c(
        listener,
        routes,
        Http2Settings::default(),
        exemesh::mesh::tls::installed_server_config(),
        shutdown,
        Duration::from_secs(10),
    )
    .await;
    Ok(())
}
