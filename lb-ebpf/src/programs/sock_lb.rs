//! The socket LB's cgroup hooks (see `socket_lb`): one entry per attach point, attached by
//! the agent to the configured cgroup (default the v2 root).

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use lb_common::{FAMILY_V4, FAMILY_V6, sock_lb::SockEvent};

use crate::socket_lb;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    socket_lb::to_backend(&ctx, FAMILY_V4, SockEvent::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    socket_lb::to_backend(&ctx, FAMILY_V6, SockEvent::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    socket_lb::to_backend(&ctx, FAMILY_V4, SockEvent::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    socket_lb::to_backend(&ctx, FAMILY_V6, SockEvent::Sendmsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    socket_lb::to_service(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    socket_lb::to_service(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    socket_lb::to_service(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    socket_lb::to_service(&ctx, FAMILY_V6)
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    socket_lb::release(&ctx)
}

/// Mesh steering: re-keys a steered socket's original destination by its local address
/// once connect() bound it (see `socket_lb::mesh_connected`).
#[sock_ops]
pub fn sock_mesh_ops(ctx: SockOpsContext) -> u32 {
    socket_lb::mesh_connected(&ctx)
}
