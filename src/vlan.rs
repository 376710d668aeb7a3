//! placeholder, owned by the vlan work
