//! What `cplb --check` asks of discovery before a start: that the user
//! cplb runs as can read the kubeconfig and the credentials it names, and
//! can create the state file. A static pod with the wrong uid fails here,
//! in the operator's terminal, not later in a log line.

use super::client::{self, ClientError};
use super::config::DiscoveryConfig;
use super::state::{self, StateError};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("discovery.kubeconfig")]
    Kubeconfig(#[source] ClientError),
    /// kube reads the client certificate and key only when it builds a
    /// client, so loading the kubeconfig alone does not show them unreadable.
    /// kube's errors repeat their sources: `message` is them said once
    /// (`client::describe`).
    #[error("discovery.kubeconfig: could not load the credentials {path} names: {message}")]
    Credentials {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("discovery.state_file")]
    StateFile(#[source] StateError),
}

/// Loads the kubeconfig as discovery will, with the certificate and key it
/// names, and creates and removes a file beside the state file.
pub async fn access(d: &DiscoveryConfig) -> Result<(), CheckError> {
    let base = client::load(&d.kubeconfig)
        .await
        .map_err(CheckError::Kubeconfig)?;
    // Builds a client (nothing is dialled) to read the certificate and key.
    kube::client::ClientBuilder::try_from(base).map_err(|e| CheckError::Credentials {
        path: d.kubeconfig.clone(),
        message: client::describe(&e),
    })?;
    state::check_writable(&d.state_file).map_err(CheckError::StateFile)
}
