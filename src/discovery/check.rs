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
    #[error("discovery.state_file")]
    StateFile(#[source] StateError),
}

/// Loads the kubeconfig as discovery will (files it names included) and
/// creates and removes a file beside the state file.
pub async fn access(d: &DiscoveryConfig) -> Result<(), CheckError> {
    client::load(&d.kubeconfig)
        .await
        .map_err(CheckError::Kubeconfig)?;
    state::check_writable(&d.state_file).map_err(CheckError::StateFile)
}
