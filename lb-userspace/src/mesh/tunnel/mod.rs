//! The node-to-node tunnel: outbound (local workload -> HTTP/2 CONNECT over mTLS to the
//! destination node's agent) and inbound (accept CONNECT, verify the peer, authorize, connect to
//! the local backend).
