//! Fails when the checked-in CRD manifests under `crds/` no longer match the
//! Rust types, so a schema change cannot land without regenerated YAML.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut stale = Vec::new();
    for file in signet_policy::crd::crd_files().unwrap() {
        let path = dir.join(&file.file_name);
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == file.contents => {}
            Ok(_) => stale.push(format!("{} is out of date", path.display())),
            Err(e) => stale.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nRun `make crds` (cargo run -p signet-policy --bin crdgen -- crds) and commit the result.",
        stale.join("\n")
    );
}
