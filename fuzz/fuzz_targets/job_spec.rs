//! Any bytes as a submission and as a job spec: parsing never panics, and a
//! spec that is accepted survives its own serialization unchanged and is
//! accepted again (what the scheduler stores is what the worker reads).
#![no_main]

use contract::queue::{check_input_key, SubmitRequest};
use contract::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = serde_json::from_str::<SubmitRequest>(text) {
        if let Ok(spec) = JobSpec::from_value(request.spec) {
            for key in spec.inputs() {
                let _ = check_input_key(key);
            }
        }
    }
    if let Ok(spec) = JobSpec::from_json(text) {
        let again = JobSpec::from_json(&spec.to_json())
            .expect("a spec that was accepted is accepted after serialization");
        assert_eq!(spec, again, "serialization changed an accepted spec");
        let _ = (spec.formats(), spec.played_frames(), spec.kind());
    }
});
