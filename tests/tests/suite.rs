//! The cross-adapter suite: every scenario of
//! [`storm_tests::suite::scenarios`] on every adapter, and every pair
//! scenario on every (server, client) pair of adapters, mixed pairs
//! included. Test names say the pair:
//! `server_tokio::client_std::ws_echo_text_and_binary`,
//! `server_std::raw_client::server_heartbeat_timeout`,
//! `raw_server::client_tokio::client_heartbeat_timeout`.
//!
//! To add an adapter: implement [`storm_tests::suite::Adapter`] (for a
//! storm-async runtime, an `Executor` impl in `on_async.rs`) and add one
//! line to `adapters` below.

/// Expands the scenario lists over the adapter list (every server with
/// every client).
macro_rules! suite {
    (
        adapters: $adapters:tt,
        pairs: $pairs:tt,
        server_only: $server_only:tt,
        client_only: $client_only:tt $(,)?
    ) => {
        suite!(@servers $adapters $adapters $pairs $server_only);
        suite!(@raw_server $adapters $client_only);
    };
    (@servers [$($server:ident $_client:ident: $s:ty),* $(,)?] $adapters:tt $pairs:tt $server_only:tt) => {
        $(
            suite!(@server $server $s $adapters $pairs $server_only);
        )*
    };
    (@server $server:ident $s:ty [$($_server:ident $client:ident: $c:ty),* $(,)?] $pairs:tt $server_only:tt) => {
        mod $server {
            $(
                mod $client {
                    suite!(@pair $s, $c, $pairs);
                }
            )*
            mod raw_client {
                suite!(@client $s $server_only);
            }
        }
    };
    (@raw_server [$($_server:ident $client:ident: $c:ty),* $(,)?] $client_only:tt) => {
        mod raw_server {
            $(
                mod $client {
                    suite!(@client $c $client_only);
                }
            )*
        }
    };
    (@pair $s:ty, $c:ty, [$($scenario:ident),* $(,)?]) => {
        $(
            #[test]
            fn $scenario() {
                ::storm_tests::suite::scenarios::$scenario::<$s, $c>();
            }
        )*
    };
    (@client $a:ty [$($scenario:ident),* $(,)?]) => {
        $(
            #[test]
            fn $scenario() {
                ::storm_tests::suite::scenarios::$scenario::<$a>();
            }
        )*
    };
}

suite! {
    adapters: [
        server_tokio client_tokio: ::storm_tests::suite::on_async::Tokio,
        server_smol client_smol: ::storm_tests::suite::on_async::Smol,
        server_std client_std: ::storm_tests::suite::on_std::Std,
    ],
    pairs: [
        echo_raw,
        echo_length_prefix,
        echo_large_and_small_pipelined,
        echo_delimiter,
        ws_echo_text_and_binary,
        ws_echo_deflate,
        fragmentation,
        ping_pong,
        close_vs_abort,
        groups_broadcast_with_exclude,
        max_connections,
        slow_consumer_drop,
        slow_consumer_disconnect,
        reconnect_after_server_restart,
        tls,
        plain_meets_tls,
        tls_certificate_refused,
        tls_own_client_config_custom_verifier,
        tls_own_configs_mutual,
        middleware_order,
        graceful_shutdown,
        oversize,
        upgrade_hook_routes_by_path,
        upgrade_hook_sees_tls_sni,
    ],
    server_only: [
        server_heartbeat_timeout,
        server_idle_timeout_after_traffic,
        server_answers_ping,
        server_ping_flood,
        server_malformed_frames,
        server_bad_handshakes,
        server_shutdown_aborts_a_silent_peer,
        server_shutdown_cuts_a_stalled_handshake_short,
        server_shutdown_closes_connections_mid_handshake,
        server_tls_own_config_alpn,
        upgrade_hook_rejects_with_status_and_body,
        upgrade_hook_accepts_with_subprotocol_header_and_state,
        allowed_origins_refuse_a_foreign_page,
        slow_upgrade_hook_is_cut_off_by_the_handshake_timeout,
    ],
    client_only: [
        client_heartbeat_timeout,
        client_rejects_masked_server_frames,
        client_connect_refused,
        client_close_ends_a_reconnect_delay,
        client_close_cuts_a_reconnect_handshake_short,
    ],
}
