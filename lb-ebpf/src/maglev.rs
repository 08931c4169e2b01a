//! Backend selection for a new flow: the service's Maglev table (built by the agent, swapped
//! whole), indexed by the flow hash.

use lb_common::{
    BackendValue, FlowKey, Reason, SVC_FLAG_SRC_HASH, ServiceValue,
    hash::{MAGLEV_SEED, flow_hash, source_hash},
};

use crate::maps::{BACKENDS, MAGLEV};

/// The backend a new flow of `svc` with key `key` goes to: its id and record.
#[inline(always)]
pub fn pick(svc: &ServiceValue, key: &FlowKey) -> Result<(u32, &'static BackendValue), Reason> {
    if svc.maglev_size == 0 {
        return Err(Reason::NoBackend);
    }
    // Client-IP affinity: every flow of a source lands on one slot.
    let hash = if svc.flags & SVC_FLAG_SRC_HASH != 0 {
        source_hash(key, MAGLEV_SEED)
    } else {
        flow_hash(key, MAGLEV_SEED)
    };
    at_slot(svc, hash % svc.maglev_size, key.family)
}

/// The backend in slot `slot` of `svc`'s table (`slot < svc.maglev_size`), if it is of
/// `family`. Also the socket LB's pick, whose slot comes from the socket instead of a flow.
#[inline(always)]
pub fn at_slot(
    svc: &ServiceValue,
    slot: u32,
    family: u8,
) -> Result<(u32, &'static BackendValue), Reason> {
    let backend_id = *MAGLEV.get_value(svc.id, &slot).ok_or(Reason::NoBackend)?;
    if backend_id == 0 {
        return Err(Reason::NoBackend);
    }
    let backend = BACKENDS.get(backend_id).ok_or(Reason::NoBackend)?;
    if backend.family != family {
        return Err(Reason::FamilyMismatch);
    }
    Ok((backend_id, backend))
}
