//! The load balancer on tc (tcx ingress): the same path as `xdp_lb`, over an skb, for
//! interfaces where XDP cannot see checksum state (veth with TX checksum offload: see
//! `skb`). Verdicts map as XDP_PASS -> TC_ACT_OK, XDP_DROP -> TC_ACT_SHOT, and a frame sent
//! on (`bpf_redirect`, the same interface included) -> TC_ACT_REDIRECT.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    macros::classifier,
    programs::TcContext,
};

use crate::{lb, skb::Skb};

#[classifier]
pub fn tc_lb(ctx: TcContext) -> i32 {
    let skb = Skb::new(&ctx);
    match lb::process(&skb) {
        xdp_action::XDP_PASS => TC_ACT_OK,
        xdp_action::XDP_TX | xdp_action::XDP_REDIRECT => TC_ACT_REDIRECT,
        _ => TC_ACT_SHOT,
    }
}
