//! The `--discovery` option shared by the commands that find services by name.

use std::sync::Arc;

use exemesh::mesh::discovery::{Discovery, DiscoveryError, connect};

/// Where the mesh's discovery is.
#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryArg {
    /// Discovery: HOST:PORT of an embedded registry (`exemesh up` prints it), or
    /// etcd://HOST:PORT[,HOST:PORT...][/PREFIX].
    #[arg(
        long = "discovery",
        env = "EXEMESH_DISCOVERY",
        default_value = "127.0.0.1:7700",
        value_name = "ADDR"
    )]
    pub addr: String,
}

impl DiscoveryArg {
    /// A client of that discovery (connected lazily).
    pub fn connect(&self) -> Result<Arc<dyn Discovery>, DiscoveryError> {
        connect(&self.addr)
    }
}
