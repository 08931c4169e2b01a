//! One test per kind of error: each asserts the line, the field path and the message.

use super::{GLOBAL, WEB, errors, one_error};

// ---- shape: syntax, unknown fields, wrong types, missing fields ----

#[test]
fn syntax_error_reports_the_parser_position() {
    // The unclosed array is noticed where the next key starts.
    let e = one_error(
        "[global]\ninterfaces = [\"eth0\"\nx = 1\n",
        3,
        "syntax",
        "expected `]`",
    );
    assert!(
        !e.message.contains('\n'),
        "one line per error: {:?}",
        e.message
    );
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let text = format!("{WEB}port = 8081\n");
    one_error(&text, 11, "syntax", "duplicate key");
}

#[test]
fn unknown_top_level_table() {
    let text = format!("{GLOBAL}[globl]\nx = 1\n");
    one_error(&text, 3, "globl", "unknown field `globl`");
}

#[test]
fn unknown_field_in_global() {
    let text = "[global]\ninterfaces = [\"eth0\"]\nxdp_mod = \"native\"\n";
    let e = one_error(text, 3, "global.xdp_mod", "unknown field `xdp_mod`");
    assert!(e.message.contains("`xdp_mode`"), "lists the known fields");
    assert_eq!(e.column, 1, "points at the key");
}

#[test]
fn unknown_field_in_rate_limit() {
    let text = format!("{GLOBAL}[global.rate_limit]\nrate = 10\nbrust = 5\n");
    one_error(&text, 5, "global.rate_limit.brust", "unknown field `brust`");
}

#[test]
fn unknown_field_in_service_rate_limit() {
    let text = format!("{WEB}[service.rate_limit]\nrate = 10\nper = \"ip\"\n");
    one_error(
        &text,
        13,
        "service[0].rate_limit.per",
        "unknown field `per`",
    );
}

#[test]
fn unknown_field_in_conntrack() {
    let text = format!("{GLOBAL}[global.conntrack]\nmax_entrys = 5000\n");
    one_error(
        &text,
        4,
        "global.conntrack.max_entrys",
        "unknown field `max_entrys`",
    );
}

#[test]
fn unknown_field_in_service() {
    let text = WEB.replace(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\nscheduler = \"rr\"\n",
    );
    one_error(
        &text,
        8,
        "service[0].scheduler",
        "unknown field `scheduler`",
    );
}

#[test]
fn unknown_field_in_backend() {
    let text = format!("{WEB}wieght = 3\n");
    one_error(
        &text,
        11,
        "service[0].backend[0].wieght",
        "unknown field `wieght`",
    );
}

#[test]
fn wrong_type_string_for_integer() {
    let text = WEB.replace("port = 80\n", "port = \"80\"\n");
    let e = one_error(
        &text,
        6,
        "service[0].port",
        "expected an integer, found a string",
    );
    assert_eq!(e.column, 8, "points at the value");
}

#[test]
fn wrong_type_string_for_array() {
    let text = "[global]\ninterfaces = \"eth0\"\n";
    one_error(
        text,
        2,
        "global.interfaces",
        "expected an array, found a string",
    );
}

#[test]
fn wrong_type_in_array_element() {
    let text = "[global]\ninterfaces = [\"eth0\", 7]\n";
    one_error(
        text,
        2,
        "global.interfaces[1]",
        "expected a string, found an integer",
    );
}

#[test]
fn wrong_type_service_as_plain_table() {
    let text = format!("{GLOBAL}[service]\nname = \"web\"\n");
    one_error(&text, 3, "service", "expected an array of tables");
}

#[test]
fn wrong_type_float_weight() {
    let text = format!("{WEB}weight = 1.5\n");
    one_error(&text, 11, "service[0].backend[0].weight", "found a float");
}

#[test]
fn missing_global() {
    one_error("", 1, "global", "missing required field `global`");
}

#[test]
fn missing_interfaces() {
    one_error(
        "[global]\nxdp_mode = \"generic\"\n",
        1,
        "global.interfaces",
        "missing required field `interfaces`",
    );
}

#[test]
fn missing_service_field_points_at_the_header() {
    let text = WEB.replace("vip = \"10.0.0.1\"\n", "");
    one_error(&text, 3, "service[0].vip", "missing required field `vip`");
}

#[test]
fn missing_backend_port() {
    let text = WEB.replace("port = 8080\n", "");
    one_error(
        &text,
        8,
        "service[0].backend[0].port",
        "missing required field `port`",
    );
}

#[test]
fn missing_rate_limit_rate() {
    let text = format!("{GLOBAL}[global.rate_limit]\nburst = 5\n");
    one_error(
        &text,
        3,
        "global.rate_limit.rate",
        "missing required field `rate`",
    );
}

// ---- values ----

#[test]
fn bad_vip_address() {
    let text = WEB.replace("10.0.0.1", "10.0.0.256");
    one_error(
        &text,
        5,
        "service[0].vip",
        "invalid IP address `10.0.0.256`",
    );
}

#[test]
fn bad_backend_address() {
    let text = WEB.replace("10.0.1.1", "10.0.1.1:8080");
    one_error(
        &text,
        9,
        "service[0].backend[0].address",
        "invalid IP address",
    );
}

#[test]
fn unspecified_vip_is_a_bad_address() {
    let text = WEB.replace("10.0.0.1", "0.0.0.0");
    one_error(&text, 5, "service[0].vip", "unspecified");
}

#[test]
fn bad_protocol() {
    let text = WEB.replace("\"tcp\"", "\"sctp\"");
    one_error(&text, 7, "service[0].protocol", "unknown protocol `sctp`");
}

#[test]
fn unsupported_mode() {
    let text = WEB.replace("port = 80\n", "port = 80\nmode = \"dsr\"\n");
    one_error(
        &text,
        7,
        "service[0].mode",
        "mode `dsr` is not supported yet (only `nat` and `http`)",
    );
}

#[test]
fn unknown_mode() {
    let text = WEB.replace("port = 80\n", "port = 80\nmode = \"tunnel\"\n");
    one_error(&text, 7, "service[0].mode", "unknown mode `tunnel`");
}

#[test]
fn bad_xdp_mode() {
    let text = format!("{GLOBAL}xdp_mode = \"offload\"\n");
    one_error(&text, 3, "global.xdp_mode", "unknown xdp_mode `offload`");
}

#[test]
fn bad_attach_point() {
    let text = format!("{GLOBAL}attach = {{ eth0 = \"bpf\" }}\n");
    one_error(&text, 3, "global.attach.eth0", "unknown attach point `bpf`");
}

#[test]
fn attach_names_an_interface_not_listed() {
    let text = format!("{GLOBAL}attach = {{ eth1 = \"tc\" }}\n");
    one_error(
        &text,
        3,
        "global.attach.eth1",
        "`eth1` is not in global.interfaces",
    );
}

#[test]
fn attach_value_not_a_string() {
    let text = format!("{GLOBAL}attach = {{ eth0 = 1 }}\n");
    one_error(&text, 3, "global.attach.eth0", "");
}

#[test]
fn service_port_zero() {
    let text = WEB.replace("port = 80\n", "port = 0\n");
    one_error(&text, 6, "service[0].port", "port must not be 0");
}

#[test]
fn backend_port_zero() {
    let text = WEB.replace("port = 8080\n", "port = 0\n");
    one_error(
        &text,
        10,
        "service[0].backend[0].port",
        "port must not be 0",
    );
}

#[test]
fn port_out_of_range() {
    let text = WEB.replace("port = 80\n", "port = 65536\n");
    one_error(&text, 6, "service[0].port", "out of range 1..=65535");
}

#[test]
fn bad_service_name() {
    let text = WEB.replace("\"web\"", "\"my web\"");
    one_error(&text, 4, "service[0].name", "invalid service name `my web`");
}

#[test]
fn duplicate_service_name() {
    let text = format!(
        "{WEB}[[service]]\nname = \"web\"\nvip = \"10.0.0.2\"\nport = 80\nprotocol = \"tcp\"\n\
         [[service.backend]]\naddress = \"10.0.1.1\"\nport = 8080\n"
    );
    one_error(
        &text,
        12,
        "service[1].name",
        "duplicate service name `web` (first defined at line 4)",
    );
}

#[test]
fn duplicate_service_vip_port_protocol() {
    let text = format!(
        "{WEB}[[service]]\nname = \"web2\"\nvip = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
         [[service.backend]]\naddress = \"10.0.1.1\"\nport = 8080\n"
    );
    let e = one_error(
        &text,
        13,
        "service[1].vip",
        "same vip, port and protocol (10.0.0.1:80/tcp)",
    );
    assert!(
        e.message.contains("service `web` at line 5"),
        "{}",
        e.message
    );
}

#[test]
fn same_vip_and_port_with_other_protocol_is_fine() {
    let text = format!(
        "{WEB}[[service]]\nname = \"dns\"\nvip = \"10.0.0.1\"\nport = 80\nprotocol = \"udp\"\n\
         [[service.backend]]\naddress = \"10.0.1.1\"\nport = 8080\n"
    );
    super::super::parse(&text, "t.toml").unwrap();
}

#[test]
fn duplicate_backend() {
    let text =
        format!("{WEB}[[service.backend]]\naddress = \"10.0.1.1\"\nport = 8080\nweight = 2\n");
    one_error(
        &text,
        12,
        "service[0].backend[1].address",
        "duplicate backend 10.0.1.1:8080 in service `web` (first at line 9)",
    );
}

#[test]
fn backend_family_differs_from_vip() {
    let text = format!("{WEB}[[service.backend]]\naddress = \"2001:db8::5\"\nport = 8080\n");
    one_error(
        &text,
        12,
        "service[0].backend[1].address",
        "backend 2001:db8::5 is IPv6 but the service VIP 10.0.0.1 is IPv4",
    );
}

#[test]
fn no_backend_with_positive_weight() {
    let text = format!(
        "{WEB}weight = 0\n[[service.backend]]\naddress = \"10.0.1.2\"\nport = 8080\nweight = 0\n"
    );
    one_error(
        &text,
        11,
        "service[0].backend[0].weight",
        "no backend with weight > 0 in service `web`",
    );
}

#[test]
fn no_backends_at_all_is_valid_registries_fill_them() {
    let text = format!(
        "{GLOBAL}[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n"
    );
    let config = super::super::parse(&text, "t.toml").expect("valid");
    assert!(config.services[0].backends.is_empty());
}

#[test]
fn weight_above_maximum() {
    let text = format!("{WEB}weight = 65536\n");
    one_error(
        &text,
        11,
        "service[0].backend[0].weight",
        "weight 65536 is above the maximum 65535",
    );
}

#[test]
fn negative_weight() {
    let text = format!("{WEB}weight = -1\n");
    one_error(
        &text,
        11,
        "service[0].backend[0].weight",
        "must not be negative",
    );
}

#[test]
fn table_size_not_prime() {
    let text = format!("{GLOBAL}maglev_table_size = 65536\n");
    one_error(
        &text,
        3,
        "global.maglev_table_size",
        "65536 is not prime (Maglev needs a prime); the next prime is 65537",
    );
}

#[test]
fn service_table_size_not_prime() {
    let text = WEB.replace("port = 80\n", "port = 80\nmaglev_table_size = 100\n");
    one_error(
        &text,
        7,
        "service[0].maglev_table_size",
        "the next prime is 101",
    );
}

#[test]
fn table_size_out_of_range() {
    let text = format!("{GLOBAL}maglev_table_size = 1000033\n");
    one_error(
        &text,
        3,
        "global.maglev_table_size",
        "out of range 3..=1000003",
    );
    let text = format!("{GLOBAL}maglev_table_size = 2\n");
    one_error(&text, 3, "global.maglev_table_size", "out of range");
}

#[test]
fn table_smaller_than_backend_count() {
    let text = format!("{WEB}[[service.backend]]\naddress = \"10.0.1.2\"\nport = 8080\n[[service.backend]]\naddress = \"10.0.1.3\"\nport = 8080\n[[service.backend]]\naddress = \"10.0.1.4\"\nport = 8080\n")
        .replace("port = 80\n", "port = 80\nmaglev_table_size = 3\n");
    one_error(
        &text,
        7,
        "service[0].maglev_table_size",
        "4 backends with weight > 0",
    );
}

#[test]
fn too_many_services() {
    let mut text = GLOBAL.to_owned();
    for i in 0..=1024u32 {
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"10.1.{}.{}\"\nport = 80\nprotocol = \"tcp\"\n\
             [[service.backend]]\naddress = \"10.2.0.1\"\nport = 80\n",
            i / 256,
            i % 256
        );
    }
    // Each service is 8 lines after the 2 of GLOBAL: service[1024] starts at line 2 + 8*1024 + 1.
    one_error(
        &text,
        2 + 8 * 1024 + 1,
        "service[1024]",
        "too many services: 1025 (at most 1024)",
    );
}

#[test]
fn too_many_backends_in_total() {
    // Two services with 32768 backends each (inline tables, to keep the text small): 65536.
    let mut text = GLOBAL.to_owned();
    for s in 0..2 {
        text += &format!(
            "[[service]]\nname = \"s{s}\"\nvip = \"10.0.0.{s}\"\nport = 80\nprotocol = \"udp\"\nmaglev_table_size = 65537\nbackend = [\n"
        );
        for b in 0..32768u32 {
            text += &format!(
                "{{ address = \"10.{}.{}.{}\", port = 80 }},\n",
                1 + b / 65536,
                (b / 256) % 256,
                b % 256
            );
        }
        text += "]\n";
    }
    // GLOBAL is 2 lines; a service is 7 header lines, 32768 backend lines and `]`.
    let first_backend_of_s1 = 2 + (7 + 32768 + 1) + 7 + 1;
    one_error(
        &text,
        first_backend_of_s1 + 32767,
        "service[1].backend[32767]",
        "too many backends: 65536 in total (at most 65535)",
    );
}

#[test]
fn snat_min_below_1024() {
    let text = format!("{GLOBAL}snat_ports = [80, 2000]\n");
    one_error(
        &text,
        3,
        "global.snat_ports",
        "minimum port 80 is below 1024",
    );
}

#[test]
fn snat_min_above_max() {
    let text = format!("{GLOBAL}snat_ports = [50000, 40000]\n");
    one_error(
        &text,
        3,
        "global.snat_ports",
        "range [50000, 40000] is empty",
    );
}

#[test]
fn snat_not_two_ports() {
    let text = format!("{GLOBAL}snat_ports = [50000]\n");
    one_error(&text, 3, "global.snat_ports", "expected two ports");
    let text = format!("{GLOBAL}snat_ports = [50000, 70000]\n");
    one_error(&text, 3, "global.snat_ports", "port 70000 is above 65535");
}

#[test]
fn empty_interfaces() {
    one_error(
        "[global]\ninterfaces = []\n",
        2,
        "global.interfaces",
        "no interface listed",
    );
}

#[test]
fn bad_interface_name() {
    let text = "[global]\ninterfaces = [\n  \"eth0\",\n  \"a-very-long-ifname\",\n]\n";
    one_error(
        text,
        4,
        "global.interfaces[1]",
        "invalid interface name `a-very-long-ifname`: longer than 15 bytes",
    );
    one_error(
        "[global]\ninterfaces = [\"eth 0\"]\n",
        2,
        "global.interfaces[0]",
        "whitespace",
    );
    one_error(
        "[global]\ninterfaces = [\"a/b\"]\n",
        2,
        "global.interfaces[0]",
        "`/`",
    );
    one_error(
        "[global]\ninterfaces = [\"\"]\n",
        2,
        "global.interfaces[0]",
        "empty",
    );
}

#[test]
fn duplicate_interface() {
    let text = "[global]\ninterfaces = [\n  \"eth0\",\n  \"eth0\",\n]\n";
    one_error(
        text,
        4,
        "global.interfaces[1]",
        "interface `eth0` is listed twice (first at line 3)",
    );
}

#[test]
fn rate_limit_burst_zero() {
    let text = format!("{GLOBAL}[global.rate_limit]\nrate = 100\nburst = 0\n");
    one_error(
        &text,
        5,
        "global.rate_limit.burst",
        "burst must be at least 1",
    );
}

#[test]
fn service_rate_limit_burst_zero() {
    let text = format!("{WEB}[service.rate_limit]\nrate = 100\nburst = 0\n");
    one_error(
        &text,
        13,
        "service[0].rate_limit.burst",
        "burst must be at least 1",
    );
}

#[test]
fn negative_rate() {
    let text = format!("{GLOBAL}rate_limit = {{ rate = -5 }}\n");
    one_error(&text, 3, "global.rate_limit.rate", "must not be negative");
}

#[test]
fn timeout_zero() {
    let text = format!("{GLOBAL}[global.conntrack]\ntcp_syn_timeout = 60\nudp_timeout = 0\n");
    one_error(
        &text,
        5,
        "global.conntrack.udp_timeout",
        "udp_timeout must be at least 1 second",
    );
}

#[test]
fn syn_reclaim_negative() {
    let text = format!("{GLOBAL}[global.conntrack]\ntcp_syn_reclaim_ms = -1\n");
    one_error(
        &text,
        4,
        "global.conntrack.tcp_syn_reclaim_ms",
        "tcp_syn_reclaim_ms -1 is out of range 0..=3600000",
    );
}

#[test]
fn syn_reclaim_reaches_the_data_plane() {
    let text = format!("{GLOBAL}[global.conntrack]\ntcp_syn_reclaim_ms = 0\n");
    let c = crate::config::parse(&text, "t.toml").expect("valid");
    assert_eq!(c.global.settings().tcp_syn_reclaim_ms, 0);
}

#[test]
fn syn_guard_rate_negative() {
    let text = format!("{GLOBAL}[global.syn_guard]\nrate = -1\n");
    one_error(
        &text,
        4,
        "global.syn_guard.rate",
        "rate -1 is out of range 0..=100000000",
    );
}

#[test]
fn syn_guard_verified_zero() {
    let text = format!("{GLOBAL}[global.syn_guard]\nrate = 100\nverified_secs = 0\n");
    one_error(
        &text,
        5,
        "global.syn_guard.verified_secs",
        "verified_secs 0 is out of range 1..=86400",
    );
}

#[test]
fn syn_guard_reaches_the_data_plane() {
    let text = format!("{GLOBAL}[global.syn_guard]\nrate = 5000\nverified_secs = 60\n");
    let c = crate::config::parse(&text, "t.toml").expect("valid");
    assert_eq!(c.global.settings().syn_guard_pps, 5000);
    assert_eq!(c.global.settings().syn_verified_secs, 60);
    let off = crate::config::parse(GLOBAL, "t.toml").expect("valid");
    assert_eq!(
        off.global.settings().syn_guard_pps,
        0,
        "the guard is off by default"
    );
}

#[test]
fn conntrack_max_entries_too_small() {
    let text = format!("{GLOBAL}[global.conntrack]\nmax_entries = 1000\n");
    one_error(
        &text,
        4,
        "global.conntrack.max_entries",
        "max_entries 1000 is out of range 1024..=",
    );
}

// ---- reporting ----

#[test]
fn every_error_is_reported_in_file_order() {
    let text = r#"[global]
interfaces = []
snat_ports = [10, 20]
[global.conntrack]
udp_timeout = 0
[[service]]
name = "web"
vip = "10.0.0.300"
port = 0
protocol = "icmp"
bogus = true
[[service.backend]]
address = "10.0.1.1"
weight = 70000
"#;
    let errs = errors(text);
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (2, "global.interfaces"),
            (3, "global.snat_ports"),
            (5, "global.conntrack.udp_timeout"),
            (8, "service[0].vip"),
            (9, "service[0].port"),
            (10, "service[0].protocol"),
            (11, "service[0].bogus"),
            (12, "service[0].backend[0].port"),
            (14, "service[0].backend[0].weight"),
        ],
        "{errs:#?}"
    );
}

#[test]
fn display_is_one_error_per_line() {
    let text = format!("{WEB}weight = 0\n");
    let e = super::super::parse(&text, "lb.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "lb.toml:11:10: service[0].backend[0].weight: no backend with weight > 0 in service `web`"
    );
    let text = "[global]\ninterfaces = []\nxdp_mode = \"x\"\n";
    let e = super::super::parse(text, "lb.toml").unwrap_err();
    assert_eq!(e.to_string().lines().count(), 2, "{e}");
}

#[test]
fn load_reports_an_unreadable_file() {
    let e = super::super::load(std::path::Path::new("/nonexistent/lb.toml")).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].file, "/nonexistent/lb.toml");
    assert_eq!(e.0[0].field, "file");
    assert!(e.0[0].message.contains("cannot read"), "{e}");
}
