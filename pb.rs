//! Generated code for the toolkit's own contracts (`proto/exemesh/v1`).

/// `exemesh.v1`: the worker protocol frames and the discovery registry.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("exemesh.v1");
}

/// `etcdserverpb`: the subset of etcd's v3 API used by the etcd discovery backend.
#[allow(missing_docs, clippy::all)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// The encoded `FileDescriptorSet` of every contract in `proto/`, imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/exemesh_descriptor.bin"));
