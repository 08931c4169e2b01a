//! The write-order rule, against a recording fake of the maps: backends, then the table, then
//! the service record on add and change; the service record, then the table, then the VIP on
//! removal. A packet can then never find a service whose table or backends are missing.

use lb_common::{BackendValue, ServiceKey, ServiceValue, VipAddrKey};

use super::{DesiredState, MapWriter, Reconciler};
use crate::{config, dataplane::DataplaneError};

/// One write, with what identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    /// Backend id and port.
    Backend(u32, u16),
    /// Service id and table length.
    Table(u32),
    /// Service port (host order) and id.
    Service(u16, u32),
    Vip,
    RemoveService(u16),
    RemoveTable(u32),
    RemoveVip,
}

#[derive(Default)]
struct Recorder(Vec<Op>);

impl MapWriter for Recorder {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), DataplaneError> {
        self.0.push(Op::Backend(id, u16::from_be(value.port)));
        Ok(())
    }
    fn install_table(&mut self, id: u32, _table: &[u32]) -> Result<(), DataplaneError> {
        self.0.push(Op::Table(id));
        Ok(())
    }
    fn put_service(
        &mut self,
        key: &ServiceKey,
        value: &ServiceValue,
    ) -> Result<(), DataplaneError> {
        self.0.push(Op::Service(u16::from_be(key.port), value.id));
        Ok(())
    }
    fn put_vip_addr(&mut self, _key: &VipAddrKey) -> Result<(), DataplaneError> {
        self.0.push(Op::Vip);
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        self.0.push(Op::RemoveService(u16::from_be(key.port)));
        Ok(())
    }
    fn remove_table(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.0.push(Op::RemoveTable(id));
        Ok(())
    }
    fn remove_vip_addr(&mut self, _key: &VipAddrKey) -> Result<(), DataplaneError> {
        self.0.push(Op::RemoveVip);
        Ok(())
    }
}

/// A config with service `web` (port 80) and, if `api`, service `api` (port 81) on the same
/// VIP; `web_backends` are (last octet, weight) of 10.0.0.x:8080.
fn desired(web_backends: &[(u8, u32)], api: bool) -> DesiredState {
    let backends: Vec<String> = web_backends
        .iter()
        .map(|(octet, w)| format!("{{ address = \"10.0.0.{octet}\", port = 8080, weight = {w} }}"))
        .collect();
    let mut text = format!(
        "[global]\ninterfaces = [\"eth0\"]\nmaglev_table_size = 251\n\n\
         [[service]]\nname = \"web\"\nvip = \"192.0.2.1\"\nport = 80\nprotocol = \"tcp\"\n\
         backend = [{}]\n",
        backends.join(", ")
    );
    if api {
        text.push_str(
            "\n[[service]]\nname = \"api\"\nvip = \"192.0.2.1\"\nport = 81\nprotocol = \"tcp\"\n\
             backend = [{ address = \"10.0.0.9\", port = 9090 }]\n",
        );
    }
    DesiredState::from_config(&config::parse(&text, "test.toml").expect("valid config"))
}

fn apply(rec: &mut Reconciler, d: &DesiredState) -> Vec<Op> {
    let mut maps = Recorder::default();
    rec.apply(&mut maps, d).expect("apply");
    maps.0
}

#[test]
fn add_writes_backends_then_table_then_service() {
    let mut rec = Reconciler::new();
    let ops = apply(&mut rec, &desired(&[(1, 1), (2, 1)], false));
    assert_eq!(
        ops,
        vec![
            Op::Backend(1, 8080),
            Op::Backend(2, 8080),
            Op::Table(0),
            Op::Service(80, 0),
            Op::Vip,
        ]
    );
    // The same state again writes no backend, table or service record.
    let again = apply(&mut rec, &desired(&[(1, 1), (2, 1)], false));
    assert_eq!(again, vec![Op::Vip]);
}

#[test]
fn change_writes_a_new_backend_before_the_table_that_uses_it() {
    let mut rec = Reconciler::new();
    apply(&mut rec, &desired(&[(1, 1)], false));
    // A backend added: its record, then the new table; the service record is unchanged.
    let added = apply(&mut rec, &desired(&[(1, 1), (3, 1)], false));
    assert_eq!(added, vec![Op::Backend(2, 8080), Op::Table(0), Op::Vip]);
    // A weight change: only the table.
    let reweighted = apply(&mut rec, &desired(&[(1, 1), (3, 5)], false));
    assert_eq!(reweighted, vec![Op::Table(0), Op::Vip]);
    // A second service: the backends it needs, its table, then its record.
    let second = apply(&mut rec, &desired(&[(1, 1), (3, 5)], true));
    let at = |op: &Op| second.iter().position(|o| o == op).unwrap();
    assert!(at(&Op::Backend(3, 9090)) < at(&Op::Table(1)), "{second:?}");
    assert!(at(&Op::Table(1)) < at(&Op::Service(81, 1)), "{second:?}");
}

#[test]
fn removal_drops_the_service_record_then_its_table_then_the_vip() {
    let mut rec = Reconciler::new();
    apply(&mut rec, &desired(&[(1, 1)], true));
    // `api` goes; the VIP stays, `web` still uses it.
    let one_gone = apply(&mut rec, &desired(&[(1, 1)], false));
    assert_eq!(
        one_gone,
        vec![Op::Vip, Op::RemoveService(81), Op::RemoveTable(1)]
    );
    // Every service gone: record, table, then the VIP.
    let mut maps = Recorder::default();
    rec.apply(&mut maps, &DesiredState::default()).unwrap();
    assert_eq!(
        maps.0,
        vec![Op::RemoveService(80), Op::RemoveTable(0), Op::RemoveVip]
    );
    assert_eq!(rec.applied().count(), 0);
}
