//! Collected warnings, and the reason each common nginx directive has no
//! cplb counterpart.

use super::ImportError;
use super::known;
use super::parse::Directive;

#[derive(Default)]
pub(super) struct Cx {
    /// (line, message); sorted by line at the end, since the stream block is
    /// converted after the top-level directives that follow it.
    pub(super) warnings: Vec<(usize, String)>,
}

impl Cx {
    pub(super) fn ignored(&mut self, d: &Directive, reason: &str) {
        let what = if d.block.is_some() { " block" } else { "" };
        self.warn(d.line, format!("\"{}\"{what} ignored: {reason}", shown(d)));
    }

    /// A directive cplb does not convert: a warning for one nginx knows,
    /// an error for any other name, since what it meant is unknown (nginx
    /// itself refuses it: `unknown directive`).
    pub(super) fn unsupported(&mut self, d: &Directive) -> Result<(), ImportError> {
        if known::is_known(&d.name) {
            self.ignored(d, why_unsupported(&d.name));
            return Ok(());
        }
        let hint = match known::nearest(&d.name) {
            Some(k) => format!(" (did you mean \"{k}\"?)"),
            None => {
                ": not an nginx directive (a third-party module's? remove it and convert again)"
                    .into()
            }
        };
        Err(ImportError::at(
            d.line,
            format!("unknown directive \"{}\"{hint}", d.name),
        ))
    }

    /// As `unsupported`, inside `stream`, where an included file may hold
    /// the upstreams and servers themselves: converting without them
    /// would be a different proxy, so `include` there is an error.
    pub(super) fn unsupported_in_stream(&mut self, d: &Directive) -> Result<(), ImportError> {
        if d.name == "include" {
            return Err(ImportError::at(
                d.line,
                format!(
                    "\"{}\": import-nginx does not read included files, and inside stream they may hold upstreams and servers; copy their text in its place and convert again",
                    shown(d)
                ),
            ));
        }
        self.unsupported(d)
    }

    pub(super) fn warn(&mut self, line: usize, message: impl AsRef<str>) {
        self.warnings
            .push((line, format!("line {line}: {}", message.as_ref())));
    }
}

/// The directive as written, for messages: `error_log stderr notice`.
pub(super) fn shown(d: &Directive) -> String {
    std::iter::once(d.name.as_str())
        .chain(d.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why cplb has no counterpart, for the directives nginx proxies commonly set.
pub(super) fn why_unsupported(name: &str) -> &'static str {
    match name {
        "error_log" => "cplb logs to stderr; RUST_LOG sets the level",
        "access_log" | "log_format" | "open_log_file_cache" => "cplb has no access log",
        "pid" => "cplb writes no pid file",
        "worker_rlimit_nofile" => {
            "cplb does not change its open-file limit; set it in the container runtime or the systemd unit (LimitNOFILE)"
        }
        "daemon" | "master_process" => "cplb always runs in the foreground",
        "user" => "run cplb as the user you want (its image runs as nonroot)",
        "include" => "included files are not read; inline them and convert again",
        "load_module" => "cplb has no modules",
        "resolver" | "resolver_timeout" => "cplb resolves upstream names with the system resolver",
        "use" | "multi_accept" | "accept_mutex" | "accept_mutex_delay" => {
            "cplb's event loop (epoll) needs no tuning"
        }
        "proxy_protocol" => "cplb does not send the PROXY protocol header to upstreams",
        "ssl_preread" => "cplb does not read the TLS handshake; it forwards bytes untouched",
        "zone" => "cplb keeps upstream state in one process; there is no shared zone to size",
        "random" => "cplb has no random balancing; it hashes by node",
        _ => "cplb has no equivalent",
    }
}
