//! The BPF object build.rs compiled from bpf/cplb.bpf.c, embedded in the
//! binary, and the names of its programs. A build without clang and
//! libbpf-dev has no object: the kernel data plane then refuses to start
//! (`preflight::Missing::Programs`), and everything else works.

/// The embedded ELF object, when this build has one.
pub(crate) fn object() -> Option<&'static [u8]> {
    #[cfg(cplb_bpf)]
    {
        Some(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/cplb.bpf.o"
        )))
    }
    #[cfg(not(cplb_bpf))]
    {
        None
    }
}

/// Whether this build carries the kernel programs.
pub fn built_with_programs() -> bool {
    object().is_some()
}

/// Which hook a program runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    SockAddr,
    SockOps,
}

/// One program: its function name in the object and its link's pin name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prog {
    pub function: &'static str,
    pub link: &'static str,
    pub hook: Hook,
}

/// Updated in this order on a restart: the state-keeping program first,
/// the rewriting ones last, so a connect the new program rewrites is
/// already followed by the new sock_ops and getpeername programs.
pub(crate) const PROGRAMS: [Prog; 5] = [
    Prog {
        function: "cplb_sockops",
        link: "sockops",
        hook: Hook::SockOps,
    },
    Prog {
        function: "cplb_getpeername4",
        link: "getpeername4",
        hook: Hook::SockAddr,
    },
    Prog {
        function: "cplb_getpeername6",
        link: "getpeername6",
        hook: Hook::SockAddr,
    },
    Prog {
        function: "cplb_connect4",
        link: "connect4",
        hook: Hook::SockAddr,
    },
    Prog {
        function: "cplb_connect6",
        link: "connect6",
        hook: Hook::SockAddr,
    },
];
