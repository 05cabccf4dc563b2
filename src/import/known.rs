//! The directive names nginx knows in the contexts an nginx.conf for a
//! stream proxy uses (main, events, stream, its servers and upstreams),
//! from nginx's and NGINX Plus's module references. A name outside this
//! list is a typo (`proxy_timout`) or a third-party module's: either way
//! the import cannot know what it meant, so it is refused, with the known
//! name nearest to it suggested.

#[rustfmt::skip]
const NAMES: &[&str] = &[
    // main
    "daemon", "debug_points", "env", "error_log", "events", "google_perftools_profiles", "http",
    "include", "load_module", "lock_file", "mail", "master_process", "pcre_jit", "pid",
    "ssl_engine", "ssl_object_cache_inheritable", "stream", "thread_pool", "timer_resolution",
    "user", "worker_cpu_affinity", "worker_priority", "worker_processes", "worker_rlimit_core",
    "worker_rlimit_nofile", "worker_shutdown_timeout", "working_directory", "mgmt", "otel_exporter",
    // events
    "accept_mutex", "accept_mutex_delay", "debug_connection", "multi_accept", "use",
    "worker_aio_requests", "worker_connections",
    // stream core, access, log, map, geo, split_clients, limit_conn, realip, set, return, pass
    "listen", "server", "server_name", "server_names_hash_bucket_size",
    "server_names_hash_max_size", "preread_buffer_size", "preread_timeout",
    "proxy_protocol_timeout", "resolver", "resolver_timeout", "tcp_nodelay",
    "variables_hash_bucket_size", "variables_hash_max_size", "allow", "deny", "access_log",
    "log_format", "open_log_file_cache", "map", "map_hash_bucket_size", "map_hash_max_size", "geo",
    "geoip_country", "geoip_city", "geoip_org", "split_clients", "limit_conn",
    "limit_conn_dry_run", "limit_conn_log_level", "limit_conn_zone", "set_real_ip_from", "set",
    "return", "pass", "ssl_preread", "keyval", "keyval_zone", "zone_sync", "zone_sync_server",
    "js_access", "js_filter", "js_import", "js_include", "js_path", "js_preread", "js_set",
    "js_var", "js_shared_dict_zone", "js_fetch_timeout", "js_fetch_trusted_certificate",
    "mqtt", "mqtt_preread", "status_zone", "health_check", "health_check_timeout", "match",
    // stream proxy
    "proxy_bind", "proxy_buffer_size", "proxy_connect_timeout", "proxy_download_rate",
    "proxy_half_close", "proxy_next_upstream", "proxy_next_upstream_timeout",
    "proxy_next_upstream_tries", "proxy_pass", "proxy_protocol", "proxy_requests",
    "proxy_responses", "proxy_session_drop", "proxy_socket_keepalive", "proxy_ssl",
    "proxy_ssl_certificate", "proxy_ssl_certificate_cache", "proxy_ssl_certificate_key",
    "proxy_ssl_ciphers", "proxy_ssl_conf_command", "proxy_ssl_crl", "proxy_ssl_key_log",
    "proxy_ssl_name", "proxy_ssl_password_file", "proxy_ssl_protocols", "proxy_ssl_server_name",
    "proxy_ssl_session_reuse", "proxy_ssl_trusted_certificate", "proxy_ssl_verify",
    "proxy_ssl_verify_depth", "proxy_timeout", "proxy_upload_rate",
    // stream ssl
    "ssl_alpn", "ssl_certificate", "ssl_certificate_cache", "ssl_certificate_key", "ssl_ciphers",
    "ssl_client_certificate", "ssl_conf_command", "ssl_crl", "ssl_dhparam", "ssl_ecdh_curve",
    "ssl_handshake_timeout", "ssl_key_log", "ssl_ocsp", "ssl_ocsp_cache", "ssl_ocsp_responder",
    "ssl_password_file", "ssl_prefer_server_ciphers", "ssl_protocols", "ssl_reject_handshake",
    "ssl_session_cache", "ssl_session_ticket_key", "ssl_session_tickets", "ssl_session_timeout",
    "ssl_stapling", "ssl_stapling_file", "ssl_stapling_responder", "ssl_stapling_verify",
    "ssl_trusted_certificate", "ssl_verify_client", "ssl_verify_depth",
    // upstream
    "upstream", "hash", "least_conn", "least_time", "random", "zone", "state", "resolve",
];

pub(super) fn is_known(name: &str) -> bool {
    NAMES.contains(&name)
}

/// The known name nearest to `name`, when it is near enough to be the one
/// meant: at most two letters added, removed or changed.
pub(super) fn nearest(name: &str) -> Option<&'static str> {
    NAMES
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance; names are short, so the plain two-row table.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let change = prev[j] + usize::from(ca != *cb);
            row.push(change.min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_finds_the_directive_meant() {
        assert_eq!(nearest("proxy_timout"), Some("proxy_timeout"));
        assert_eq!(nearest("worker_proceses"), Some("worker_processes"));
        assert_eq!(nearest("completely_unrelated"), None);
        assert!(is_known("proxy_timeout") && !is_known("proxy_timout"));
    }
}
