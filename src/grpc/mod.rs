//! The gRPC layer: generated code, proto <-> domain conversion and error mapping. No business
//! logic lives here.

pub mod account;
pub mod billing;
mod convert;
pub mod integrations;

use tonic::{Request, Status};

use crate::{auth::Caller, store::StoreError, telemetry::error_chain};

/// Generated protobuf and gRPC code (in OUT_DIR) and the descriptor set for reflection.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]

    pub mod account {
        tonic::include_proto!("nexus.account.v1");
    }
    pub mod billing {
        tonic::include_proto!("nexus.billing.v1");
    }
    pub mod integrations {
        tonic::include_proto!("nexus.integrations.v1");
    }

    /// Encoded `FileDescriptorSet` of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("nexus_descriptor");
}

/// The verified caller the auth interceptor put in the request.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

/// Maps a storage failure to a status the client can act on, logging the cause chain here
/// (the client never sees internal details).
pub(crate) fn store_status(error: StoreError) -> Status {
    let unavailable = error.is_temporary();
    let chain = error_chain(&error);
    if unavailable {
        tracing::warn!(error = %chain, "database unavailable");
        Status::unavailable("database unavailable, try again later")
    } else {
        tracing::error!(error = %chain, "storage error");
        Status::internal("internal error")
    }
}
