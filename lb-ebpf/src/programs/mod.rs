//! One file per program (attach point); each is a thin entry over the shared packet logic.

mod sk_lookup_gateway;
mod sock_lb;
mod tc_lb;
mod xdp_lb;
mod xdp_pass;
