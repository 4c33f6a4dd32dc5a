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

#[test]
fn readme_attribute_reference_matches_the_schema() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let expected = signet_policy::attributes::with_reference(&readme)
        .expect("README.md has the attribute reference markers");
    assert!(
        readme == expected,
        "the attribute reference in README.md is stale.\nRun `make crds` and commit the result."
    );
}
