//! Run by `cargo xtask test` after the whole suite (never alongside it): nothing the tests made
//! may remain on the machine.

#[test]
fn no_test_objects_remain_after_the_suite() {
    let left = windlass_tests::leaks::leftovers();
    assert!(
        left.is_empty(),
        "the test suite left these behind (a test is not cleaning up):\n  {}",
        left.join("\n  ")
    );
}
