//! `windlass image import` and `windlass image ls`, run as the real binary against a store in a
//! tempdir: an archive written by the harness is imported, listed and unpacked; a broken archive
//! fails with a message that says so and leaves the store as it was.

use std::path::Path;
use std::process::{Command, Output};

use windlass_tests::apiserver::windlass_bin;
use windlass_tests::oci_image::{self, Image};

fn windlass_image(args: &[&str], data_dir: &Path) -> Output {
    let mut command = Command::new(windlass_bin());
    command
        .arg("image")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0");
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn busybox_image() -> Image {
    let busybox = oci_image::require_static_busybox();
    Image::from_reference("windlass.local/images-test:v1")
        .expect("reference")
        .entries(oci_image::busybox_rootfs(&busybox, &["sh", "ls", "cat"]))
        .cmd(&["sh"])
}

fn import(data_dir: &Path, archive: &Path) -> Output {
    windlass_image(&["import", &archive.display().to_string()], data_dir)
}

fn ls(data_dir: &Path) -> String {
    let out = windlass_image(&["ls"], data_dir);
    assert!(
        out.status.success(),
        "windlass image ls failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn an_imported_archive_is_listed_and_unpacked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let archive = dir.path().join("busybox.tar");
    let written = busybox_image()
        .write_archive(&archive)
        .expect("write archive");

    for attempt in ["first", "second"] {
        let out = import(&data_dir, &archive);
        assert!(
            out.status.success(),
            "{attempt} import failed: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("windlass.local/images-test:v1"),
            "{}",
            text(&out.stdout)
        );
    }

    let listing = ls(&data_dir);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "one header and one image: {listing}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["IMAGE", "ID", "SIZE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "windlass.local/images-test:v1");
    assert!(
        written.config_digest[7..].starts_with(row[1]),
        "ID column {} is a prefix of the config digest {}",
        row[1],
        written.config_digest
    );

    let layer = data_dir
        .join("images/layers")
        .join(&written.layer_digest[7..]);
    let busybox = layer.join("bin/busybox");
    assert!(busybox.is_file(), "{} is unpacked", busybox.display());
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh")).expect("bin/sh"),
        Path::new("busybox")
    );
}

#[test]
fn a_broken_archive_fails_clearly_and_the_store_stays_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let archive = dir.path().join("busybox.tar");
    busybox_image()
        .write_archive(&archive)
        .expect("write archive");
    let bytes = std::fs::read(&archive).expect("read archive");

    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write truncated");
    let not_tar = dir.path().join("not-a.tar");
    std::fs::write(&not_tar, "this is not a tar file\n".repeat(100)).expect("write junk");

    for (bad, expected) in [(&truncated, "truncated"), (&not_tar, "as a tar")] {
        let out = import(&data_dir, bad);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "importing {} succeeded",
            bad.display()
        );
        assert!(
            stderr.contains(&bad.display().to_string()) && stderr.contains(expected),
            "the error names the archive and says it is {expected}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Nothing was recorded, and nothing is left half-done.
    assert_eq!(ls(&data_dir).lines().count(), 1, "only the header");
    let tmp = data_dir.join("images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).expect("read tmp").count(),
        0,
        "{} is empty",
        tmp.display()
    );

    // The store still imports a good archive.
    let out = import(&data_dir, &archive);
    assert!(out.status.success(), "import failed: {}", text(&out.stderr));
    assert!(ls(&data_dir).contains("windlass.local/images-test:v1"));
}
