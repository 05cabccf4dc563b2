//! The kernel data plane's errors: each names the program, map, pin or
//! cgroup concerned; the cause is the source, never repeated in the
//! message.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::destroy::DestroyError;
use super::preflight::PreflightError;
use super::tables::TablesError;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("could not load cplb's BPF object")]
    Object(#[source] aya::EbpfError),
    #[error("cplb's BPF object has no program {0}")]
    NoProgram(&'static str),
    #[error("cplb's BPF object has no map {0}")]
    NoMap(&'static str),
    #[error("the kernel refused program {program}")]
    Load {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("could not attach program {program} to cgroup {cgroup}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the link of program {program} is not a BPF link")]
    Link {
        program: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("could not replace the program of the pinned link {path}")]
    Update {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not detach the pinned link {path}")]
    Detach {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("could not {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: could not {op}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the tables to publish are invalid")]
    Tables(#[from] TablesError),
    #[error("{addr} is not a master of the tables last published")]
    UnknownBackend { addr: SocketAddr },
    #[error("could not close the rewritten connections to {addr}")]
    Destroy {
        addr: SocketAddr,
        #[source]
        source: DestroyError,
    },
}

impl KernelError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KernelError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn map(
        map: &'static str,
        op: &'static str,
    ) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| KernelError::Map { map, op, source }
    }
}
