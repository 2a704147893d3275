#![no_main]
//! Fuzz target: see `veil_testkit::fuzz::coordinator_message`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_testkit::fuzz::coordinator_message(data);
});
