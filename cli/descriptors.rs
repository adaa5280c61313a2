//! Where `call` and `bench` find a method's descriptor: the `.proto` files given with `--proto`, or
//! the server's reflection service.

use exemesh::mesh::dynamic_client::GrpcChannel;
use std::path::PathBuf;

use anyhow::Context as _;
use exemesh::mesh::reflection::fetch_pool;
use exemesh::services::contract::compile;
use prost_reflect::MethodDescriptor;

/// `--proto` and `--import-path`, for servers without reflection (grpcio, most servers).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProtoArgs {
    /// Use these .proto files instead of server reflection (repeatable).
    #[arg(long)]
    pub proto: Vec<PathBuf>,
    /// Import paths for --proto (repeatable; default: the current directory).
    #[arg(long = "import-path", short = 'I')]
    pub include: Vec<PathBuf>,
}

/// The descriptor of `service`/`method`, from `--proto` or else from reflection over `channel`.
pub async fn find<T>(
    channel: T,
    protos: &ProtoArgs,
    service: &str,
    method: &str,
) -> anyhow::Result<MethodDescriptor>
where
    T: GrpcChannel,
{
    let pool = if protos.proto.is_empty() {
        fetch_pool(channel, service).await?
    } else {
        let include = if protos.include.is_empty() {
            vec![PathBuf::from(".")]
        } else {
            protos.include.clone()
        };
        compile(&protos.proto, &include)?.0
    };
    let svc = pool.get_service_by_name(service).with_context(|| {
        if protos.proto.is_empty() {
            format!("the server has no service {service}")
        } else {
            format!("the --proto files define no service {service}")
        }
    })?;
    let found = svc.methods().find(|m| m.name() == method);
    found.with_context(|| {
        let names: Vec<String> = svc.methods().map(|m| m.name().to_string()).collect();
        format!(
            "{service} has no method {method} (methods: {})",
            names.join(", ")
        )
    })
}
