//! A bare tonic server and load generator, the scale for `bench/mesh.sh` on a given machine:
//! tonic's own `Server` and `Channel` with tonic-health, nothing else.
//!
//! ```sh
//! bare-tonic serve                     # prints "listening on ADDR"
//! bare-tonic bench ADDR IN_FLIGHT SECONDS   # prints {"ok": CALLS, "seconds": SECONDS}
//! ```
//!
//! `bench` makes `grpc.health.v1.Health/Check` calls, IN_FLIGHT at a time on one connection.

use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const USAGE: &str = "usage: bare-tonic serve | bare-tonic bench ADDR IN_FLIGHT SECONDS";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve"] => serve().await,
        ["bench", address, in_flight, seconds] => {
            bench(address, in_flight.parse()?, seconds.parse()?).await
        }
        _ => Err(USAGE.into()),
    }
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

async fn bench(
    address: &str,
    in_flight: usize,
    seconds: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let slots: Vec<_> = (0..in_flight)
        .map(|_| {
            let mut client = HealthClient::new(channel.clone());
            tokio::spawn(async move {
                let mut ok = 0u64;
                while Instant::now() < end {
                    let mut request = tonic::Request::new(HealthCheckRequest::default());
                    request.set_timeout(Duration::from_secs(5));
                    if client.check(request).await.is_ok() {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for slot in slots {
        ok += slot.await?;
    }
    println!("{{\"ok\": {ok}, \"seconds\": {seconds}}}");
    Ok(())
}
