//! WorkloadIdentity and Role resources, attributes, rules, templates and the compiled PolicySnapshot. No I/O.
