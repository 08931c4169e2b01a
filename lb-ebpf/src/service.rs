//! Service lookup: the direct-mapped `SERVICE_SLOTS` first (an inlined array lookup), the
//! `SERVICES` hash map only for a slot several services share or one being rewritten. See
//! `lb_common::service_slot`.

use core::ptr::read_volatile;

use lb_common::{
    FlowKey, ServiceKey, ServiceSlot, ServiceValue,
    service_slot::{SLOT_EMPTY, SLOT_ONE, slot_of},
};

use crate::maps::{SERVICE_SLOTS, SERVICES};

/// The record of the service a packet of flow `k` is addressed to, if there is one.
#[inline(always)]
pub fn lookup(k: &FlowKey) -> Option<ServiceValue> {
    let key = ServiceKey::new(k.dst, k.dst_port, k.proto, k.family);
    if let Some(slot) = SERVICE_SLOTS.get_ptr(slot_of(&key))
        && let Some(found) = read_slot(slot, &key)
    {
        return found;
    }
    // Built again here: the one above stays in registers on the fast path, this one is
    // written to the stack only when the helper needs it.
    let key = ServiceKey::new(k.dst, k.dst_port, k.proto, k.family);
    // SAFETY: copied out at once.
    unsafe { SERVICES.get(&key) }.copied()
}

/// What a stable slot says about `key` (`Some(None)`: no such service), or `None` if the
/// slot is shared or was being rewritten. Every read is volatile so none moves past the
/// second read of `seq`.
#[inline(always)]
fn read_slot(s: *const ServiceSlot, key: &ServiceKey) -> Option<Option<ServiceValue>> {
    // SAFETY: `s` points at a map value, valid for this program run.
    unsafe {
        let seq = read_volatile(&raw const (*s).seq);
        if seq & 1 != 0 {
            return None;
        }
        let found = match read_volatile(&raw const (*s).kind) {
            SLOT_EMPTY => None,
            SLOT_ONE => {
                let k = &raw const (*s).key;
                let v = &raw const (*s).value;
                let same = read_volatile(&raw const (*k).vip.words[0]) == key.vip.words[0]
                    && read_volatile(&raw const (*k).vip.words[1]) == key.vip.words[1]
                    && read_volatile(&raw const (*k).vip.words[2]) == key.vip.words[2]
                    && read_volatile(&raw const (*k).vip.words[3]) == key.vip.words[3]
                    && read_volatile(&raw const (*k).port) == key.port
                    && read_volatile(&raw const (*k).proto) == key.proto
                    && read_volatile(&raw const (*k).family) == key.family;
                if same {
                    Some(ServiceValue {
                        id: read_volatile(&raw const (*v).id),
                        flags: read_volatile(&raw const (*v).flags),
                        maglev_size: read_volatile(&raw const (*v).maglev_size),
                        _pad0: 0,
                        rate_pps: read_volatile(&raw const (*v).rate_pps),
                        burst: read_volatile(&raw const (*v).burst),
                    })
                } else {
                    None
                }
            }
            _ => return None,
        };
        (read_volatile(&raw const (*s).seq) == seq).then_some(found)
    }
}
